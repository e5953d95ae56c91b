package dev.terrace.spark;

import org.apache.spark.ShuffleDependency;
import org.apache.spark.shuffle.BaseShuffleHandle;

/**
 * A shuffle on Terrace: Spark's dependency plus the Terrace job that holds it and the job's token,
 * which executors present to place, write and read its partitions (never the cluster secret).
 */
public final class TerraceShuffleHandle<K, V, C> extends BaseShuffleHandle<K, V, C> {
    private static final long serialVersionUID = 1L;

    final String jobHex;
    final String token;

    TerraceShuffleHandle(int shuffleId, ShuffleDependency<K, V, C> dependency, String jobHex, String token) {
        super(shuffleId, dependency);
        this.jobHex = jobHex;
        this.token = token;
    }
}

package dev.terrace.spark;

import org.apache.spark.SparkConf;
import org.apache.spark.shuffle.api.ShuffleDataIO;
import org.apache.spark.shuffle.api.ShuffleDriverComponents;
import org.apache.spark.shuffle.api.ShuffleExecutorComponents;
import org.apache.spark.shuffle.sort.io.LocalDiskShuffleDataIO;
import org.apache.spark.shuffle.sort.io.LocalDiskShuffleDriverComponents;

/**
 * Spark's shuffle DataIO plug-in for Terrace ({@code spark.shuffle.sort.io.plugin.class}; the
 * driver's {@link TerraceShuffleManager} sets it when unset). Its one job is to tell Spark that
 * shuffle data is stored reliably off the executors, so that dynamic allocation can remove
 * executors without an external shuffle service and without tracking shuffles, and so that an
 * executor lost does not count its map outputs as lost. Terrace's shuffle manager writes and reads
 * through its own paths; the executor components are Spark's, for any other caller.
 */
public final class TerraceShuffleDataIO implements ShuffleDataIO {
    private final LocalDiskShuffleDataIO local;

    public TerraceShuffleDataIO(SparkConf conf) {
        this.local = new LocalDiskShuffleDataIO(conf);
    }

    @Override
    public ShuffleExecutorComponents executor() {
        return local.executor();
    }

    @Override
    public ShuffleDriverComponents driver() {
        return new LocalDiskShuffleDriverComponents() {
            @Override
            public boolean supportsReliableStorage() {
                return true;
            }
        };
    }
}

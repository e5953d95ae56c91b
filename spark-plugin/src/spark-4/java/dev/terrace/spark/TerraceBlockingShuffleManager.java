package dev.terrace.spark;

import org.apache.spark.SparkConf;
import org.apache.spark.shuffle.BlockingShuffleManager;

/**
 * {@link TerraceShuffleManager} for Spark 4.3 and later, which take only a {@code
 * BlockingShuffleManager} as {@code spark.shuffle.manager} (an interface older Sparks lack, so this
 * class loads on 4.3+ only).
 */
public final class TerraceBlockingShuffleManager extends TerraceShuffleManager
        implements BlockingShuffleManager {
    public TerraceBlockingShuffleManager(SparkConf conf, boolean isDriver) {
        super(conf, isDriver);
    }
}

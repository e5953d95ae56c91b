package dev.terrace.spark;

import dev.terrace.bridge.NativeLibrary;

import org.apache.spark.SparkConf;

import scala.Tuple2;

import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.TreeMap;

/**
 * The {@code spark.terrace.*} keys of the Spark configuration. Each is the Flink adapter's {@code
 * terrace.*} key with {@code spark.} in front, parsed and checked by the native library (unknown
 * keys are an error), plus the Spark-only keys below, which the native parser knows too.
 *
 * <p>The driver's configuration reaches every executor, so both sides read the same keys; only
 * the driver's agents are given {@code spark.terrace.secret-file}.
 */
final class SparkTerraceConfig {
    static final String SPARK_PREFIX = "spark.";
    static final String PREFIX = "spark.terrace.";

    /** Spark-only: bytes of serialized records per reduce partition before they are pushed. */
    static final String CHUNK_SIZE = "terrace.spark.chunk-size";
    /** Spark-only: serialized bytes one map task buffers across its reduce partitions, at most. */
    static final String WRITER_BUFFER = "terrace.spark.writer-buffer-size";
    /** Spark-only: map outputs one reduce task reads at once. */
    static final String READER_STREAMS = "terrace.spark.reader-streams";

    static final String NATIVE_LIBRARY = "terrace.native.library";
    static final String SECRET_FILE = "terrace.secret-file";
    static final String COMPRESSION = "terrace.compression";

    /** The {@code terrace.*} keys (the {@code spark.} prefix taken off). */
    final Map<String, String> terraceKeys;

    final int chunkSize;
    final long writerBufferSize;
    final int readerStreams;
    /**
     * Largest Terrace buffer a chunk is cut into: 1 MiB, or {@code terrace.max-buffer-size} when
     * that is smaller.
     */
    final int pieceSize;

    /**
     * @param isDriver whether this is the driver: only the driver's agents get {@code
     *     spark.terrace.secret-file}; executors place, write and read with the job's token alone
     */
    SparkTerraceConfig(SparkConf conf, boolean isDriver) {
        Map<String, String> keys = new TreeMap<>();
        for (Tuple2<String, String> kv : conf.getAllWithPrefix(PREFIX)) {
            keys.put("terrace." + kv._1(), kv._2());
        }
        if (!isDriver) {
            keys.remove(SECRET_FILE);
        }
        // Spark compresses shuffle blocks with its own codec (spark.shuffle.compress): the agents'
        // lz4 would compress them again, so it is off unless asked for.
        keys.putIfAbsent(COMPRESSION, "false");
        this.terraceKeys = keys;
        this.chunkSize = (int) Math.min(bytes(keys, CHUNK_SIZE, "1MiB"), 64L << 20);
        this.writerBufferSize = bytes(keys, WRITER_BUFFER, "64MiB");
        this.readerStreams = (int) Math.min(longValue(keys, READER_STREAMS, "16"), 4096);
        this.pieceSize = (int) Math.min(1 << 20, bytes(keys, "terrace.max-buffer-size", "4MiB"));
        if (pieceSize < 1024) {
            throw new IllegalArgumentException(
                    SPARK_PREFIX + "terrace.max-buffer-size must be at least 1KiB for Spark");
        }
        if (chunkSize < 1024) {
            throw new IllegalArgumentException(
                    SPARK_PREFIX + CHUNK_SIZE + " must be at least 1KiB, got " + keys.get(CHUNK_SIZE));
        }
        if (writerBufferSize < chunkSize) {
            throw new IllegalArgumentException(
                    SPARK_PREFIX + WRITER_BUFFER + " must be at least " + SPARK_PREFIX + CHUNK_SIZE);
        }
        if (readerStreams < 1) {
            throw new IllegalArgumentException(SPARK_PREFIX + READER_STREAMS + " must be positive");
        }
    }

    /** key, value, key, value, ... for the native side. */
    String[] flat() {
        List<String> kv = new ArrayList<>(terraceKeys.size() * 2);
        for (Map.Entry<String, String> e : terraceKeys.entrySet()) {
            kv.add(e.getKey());
            kv.add(e.getValue());
        }
        return kv.toArray(new String[0]);
    }

    /** Loads the native library once per class loader and checks its ABI version. */
    void ensureNativeLoaded() {
        NativeLibrary.ensureLoaded(terraceKeys.get(NATIVE_LIBRARY), SPARK_PREFIX + NATIVE_LIBRARY);
    }

    private static long longValue(Map<String, String> keys, String key, String dflt) {
        String v = keys.getOrDefault(key, dflt).trim();
        try {
            return Long.parseLong(v);
        } catch (NumberFormatException e) {
            throw new IllegalArgumentException(
                    SPARK_PREFIX + key + " must be a whole number, got " + v);
        }
    }

    /** A size as the Rust configs write it: a number with an optional B, KiB, MiB or GiB. */
    static long bytes(Map<String, String> keys, String key, String dflt) {
        String v = keys.getOrDefault(key, dflt).trim();
        String[][] units = {{"GiB", "30"}, {"MiB", "20"}, {"KiB", "10"}, {"B", "0"}};
        int shift = 0;
        String number = v;
        for (String[] u : units) {
            if (v.endsWith(u[0])) {
                shift = Integer.parseInt(u[1]);
                number = v.substring(0, v.length() - u[0].length()).trim();
                break;
            }
        }
        try {
            long n = Long.parseLong(number);
            if (n < 0 || n > (Long.MAX_VALUE >> shift)) {
                throw new NumberFormatException();
            }
            return n << shift;
        } catch (NumberFormatException e) {
            throw new IllegalArgumentException(
                    SPARK_PREFIX + key + " must be a size such as 512KiB or 4MiB, got " + v);
        }
    }
}

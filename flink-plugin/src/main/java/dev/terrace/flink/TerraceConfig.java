package dev.terrace.flink;

import org.apache.flink.configuration.Configuration;
import org.apache.flink.configuration.TaskManagerOptions;

import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.TreeMap;

/**
 * The {@code terrace.*} part of the Flink configuration, plus loading of the native library.
 *
 * <p>Keys read on the Java side (everything else under {@code terrace.} is passed to Rust as is):
 *
 * <ul>
 *   <li>{@code terrace.native.library}: absolute path of libterrace_flink.so; if absent, {@code
 *       System.loadLibrary("terrace_flink")} (java.library.path).
 *   <li>{@code terrace.event-poll-interval-ms} (default 200): how long a Java event thread blocks in
 *       one native wait before checking whether it should stop.
 * </ul>
 */
final class TerraceConfig {
    static final String PREFIX = "terrace.";
    static final String NATIVE_LIBRARY = "terrace.native.library";
    static final String EVENT_POLL_INTERVAL_MS = "terrace.event-poll-interval-ms";

    private static volatile boolean loaded;

    final Map<String, String> terraceKeys;
    final int bufferSizeBytes;
    final long eventPollIntervalMillis;

    TerraceConfig(Configuration conf) {
        Map<String, String> keys = new TreeMap<>();
        for (Map.Entry<String, String> e : conf.toMap().entrySet()) {
            if (e.getKey().startsWith(PREFIX)) {
                keys.put(e.getKey(), e.getValue());
            }
        }
        this.terraceKeys = keys;
        this.bufferSizeBytes = (int) conf.get(TaskManagerOptions.MEMORY_SEGMENT_SIZE).getBytes();
        this.eventPollIntervalMillis =
                Long.parseLong(keys.getOrDefault(EVENT_POLL_INTERVAL_MS, "200"));
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
        if (loaded) {
            return;
        }
        synchronized (TerraceConfig.class) {
            if (loaded) {
                return;
            }
            String path = terraceKeys.get(NATIVE_LIBRARY);
            if (path != null && !path.isEmpty()) {
                System.load(path);
            } else {
                System.loadLibrary("terrace_flink");
            }
            int abi = NativeBridge.abiVersion();
            if (abi != NativeBridge.ABI_VERSION) {
                throw new IllegalStateException(
                        "terrace_flink native library ABI "
                                + abi
                                + " does not match the Java adapter's "
                                + NativeBridge.ABI_VERSION);
            }
            loaded = true;
        }
    }
}

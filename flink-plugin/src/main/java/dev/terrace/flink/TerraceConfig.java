package dev.terrace.flink;

import dev.terrace.bridge.NativeLibrary;

import org.apache.flink.configuration.Configuration;

import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.TreeMap;

/**
 * The {@code terrace.*} part of the Flink configuration, plus loading of the native library.
 *
 * <p>Every key has a default; the Rust side parses and validates all of them (unknown {@code
 * terrace.*} keys are an error, so typos do not fall back to defaults silently):
 *
 * <table>
 *   <tr><th>key</th><th>default</th><th>meaning</th></tr>
 *   <tr><td>terrace.master.address</td><td>127.0.0.1:9870</td><td>Terrace masters, host:port,
 *       comma-separated; any of them can answer</td></tr>
 *   <tr><td>terrace.segment-size</td><td>8MiB</td><td>bytes per segment of a subpartition before
 *       the producer closes it with END_OF_SEGMENT</td></tr>
 *   <tr><td>terrace.push-size</td><td>512KiB</td><td>a producer pushes once this many bytes are
 *       batched</td></tr>
 *   <tr><td>terrace.max-bytes-in-flight</td><td>8MiB</td><td>unacknowledged pushed bytes per
 *       producer; writes wait beyond it</td></tr>
 *   <tr><td>terrace.max-buffer-size</td><td>4MiB</td><td>largest single Flink buffer</td></tr>
 *   <tr><td>terrace.compression</td><td>true</td><td>lz4 per data buffer, producer to consumer</td></tr>
 *   <tr><td>terrace.read-credits</td><td>8</td><td>read batches a worker may send ahead per
 *       consumer stream</td></tr>
 *   <tr><td>terrace.max-frame-size</td><td>16MiB</td><td>largest wire frame</td></tr>
 *   <tr><td>terrace.connect-timeout</td><td>5s</td><td>connecting to a master or worker</td></tr>
 *   <tr><td>terrace.request-timeout</td><td>120s</td><td>one request, including a push waiting
 *       for worker memory</td></tr>
 *   <tr><td>terrace.liveness-timeout</td><td>10s</td><td>a worker or master that neither sends
 *       what is awaited nor answers a new connection's handshake for this long is taken for
 *       hung</td></tr>
 *   <tr><td>terrace.master.poll-interval</td><td>1s</td><td>how often the JobManager checks for
 *       lost workers</td></tr>
 *   <tr><td>terrace.job-renew-interval</td><td>10s</td><td>how often the JobManager renews its
 *       jobs' leases on every master</td></tr>
 *   <tr><td>terrace.secret-file</td><td>(none)</td><td>JobManager: file holding the cluster
 *       secret (else TERRACE_SECRET_FILE); job tokens reach the TaskManagers in the shuffle
 *       descriptors</td></tr>
 *   <tr><td>terrace.tls.ca-file</td><td>(none)</td><td>PEM CA certificates: connect over TLS
 *       and trust the servers these sign</td></tr>
 *   <tr><td>terrace.event-poll-interval-ms</td><td>200</td><td>how long a Java event thread
 *       blocks in one native wait before checking whether it should stop</td></tr>
 *   <tr><td>terrace.native.library</td><td>(bundled)</td><td>path of a libterrace_jni.so to
 *       load instead of the copy bundled in the jar</td></tr>
 *   <tr><td>terrace.log</td><td>warn</td><td>filter for the native library's log lines on
 *       stderr</td></tr>
 * </table>
 */
final class TerraceConfig {
    static final String PREFIX = "terrace.";
    static final String NATIVE_LIBRARY = "terrace.native.library";
    static final String EVENT_POLL_INTERVAL_MS = "terrace.event-poll-interval-ms";
    static final String COMPRESSION = "terrace.compression";

    final Map<String, String> terraceKeys;
    final long eventPollIntervalMillis;

    TerraceConfig(Configuration conf) {
        Map<String, String> keys = new TreeMap<>();
        for (Map.Entry<String, String> e : conf.toMap().entrySet()) {
            if (e.getKey().startsWith(PREFIX)) {
                keys.put(e.getKey(), e.getValue());
            }
        }
        this.terraceKeys = keys;
        String poll = keys.getOrDefault(EVENT_POLL_INTERVAL_MS, "200").trim();
        try {
            this.eventPollIntervalMillis = Long.parseLong(poll);
        } catch (NumberFormatException e) {
            throw new IllegalArgumentException(
                    EVENT_POLL_INTERVAL_MS + " must be a whole number of milliseconds, got " + poll);
        }
        if (eventPollIntervalMillis <= 0) {
            throw new IllegalArgumentException(EVENT_POLL_INTERVAL_MS + " must be positive");
        }
    }

    /** key, value, key, value, ... for the native side. */
    String[] flat() {
        return flat(terraceKeys);
    }

    /** {@link #flat()} with {@code key} set to {@code value}. */
    String[] flatWith(String key, String value) {
        Map<String, String> keys = new TreeMap<>(terraceKeys);
        keys.put(key, value);
        return flat(keys);
    }

    private static String[] flat(Map<String, String> keys) {
        List<String> kv = new ArrayList<>(keys.size() * 2);
        for (Map.Entry<String, String> e : keys.entrySet()) {
            kv.add(e.getKey());
            kv.add(e.getValue());
        }
        return kv.toArray(new String[0]);
    }

    /** Loads the native library once per class loader and checks its ABI version. */
    void ensureNativeLoaded() {
        NativeLibrary.ensureLoaded(terraceKeys.get(NATIVE_LIBRARY), NATIVE_LIBRARY);
    }
}

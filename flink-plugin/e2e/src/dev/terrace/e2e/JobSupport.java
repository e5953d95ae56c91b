package dev.terrace.e2e;

import org.apache.flink.api.common.RuntimeExecutionMode;
import org.apache.flink.api.common.io.OutputFormat;
import org.apache.flink.configuration.Configuration;
import org.apache.flink.streaming.api.environment.StreamExecutionEnvironment;

import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.Paths;
import java.util.LinkedHashMap;
import java.util.Map;

/** What the e2e jobs share: their extra {@code key=value} arguments and scratch cleanup. */
final class JobSupport {

    /** {@code args[from..]} as {@code key=value} pairs, in order. */
    static Map<String, String> keyValues(String[] args, int from) {
        Map<String, String> extra = new LinkedHashMap<>();
        for (int i = from; i < args.length; i++) {
            int eq = args[i].indexOf('=');
            if (eq <= 0) {
                throw new IllegalArgumentException("expected key=value, got: " + args[i]);
            }
            extra.put(args[i].substring(0, eq).trim(), args[i].substring(eq + 1).trim());
        }
        return extra;
    }

    /**
     * A local batch environment of {@code parallelism} whose configuration holds the {@code
     * key=value} pairs of {@code args[from..]} (printed), in batch runtime mode.
     */
    static StreamExecutionEnvironment batchEnvironment(String[] args, int from, int parallelism) {
        Map<String, String> extra = keyValues(args, from);
        Configuration conf = new Configuration();
        conf.setString("execution.runtime-mode", "BATCH");
        for (Map.Entry<String, String> e : extra.entrySet()) {
            conf.setString(e.getKey(), e.getValue());
        }
        System.out.println("flink config overrides: " + extra);
        StreamExecutionEnvironment env =
                StreamExecutionEnvironment.createLocalEnvironment(parallelism, conf);
        env.setRuntimeMode(RuntimeExecutionMode.BATCH);
        return env;
    }

    /** {@code <output>.parts}, emptied and created: where a job's subtasks write their parts. */
    static Path freshParts(Path output) throws IOException {
        Path parts = Paths.get(output.toString() + ".parts");
        deleteRecursively(parts);
        Files.createDirectories(parts);
        return parts;
    }

    /** The little-endian long at {@code b[at..at + 8]}. */
    static long readLong(byte[] b, int at) {
        long v = 0;
        for (int i = 7; i >= 0; i--) {
            v = (v << 8) | (b[at + i] & 0xFF);
        }
        return v;
    }

    /** Writes {@code v} little-endian at {@code b[at..at + 8]}. */
    static void writeLong(byte[] b, int at, long v) {
        for (int i = 0; i < 8; i++) {
            b[at + i] = (byte) (v >>> (8 * i));
        }
    }

    static void deleteRecursively(Path p) throws IOException {
        if (!Files.exists(p)) {
            return;
        }
        try (java.util.stream.Stream<Path> s = Files.walk(p)) {
            for (Path x : (Iterable<Path>) s.sorted(java.util.Comparator.reverseOrder())::iterator) {
                Files.delete(x);
            }
        }
    }

    /**
     * A sink that knows its subtask. An {@link OutputFormat} with {@code
     * open(InitializationContext)}, the one sink interface Flink 1.20 and 2.x share unchanged.
     */
    abstract static class SubtaskSink<T> implements OutputFormat<T> {
        private static final long serialVersionUID = 1L;

        /** This subtask's index, set when it opens. */
        protected int subtask;

        @Override
        public void configure(Configuration parameters) {}

        @Override
        public void open(InitializationContext context) throws IOException {
            subtask = context.getTaskNumber();
        }
    }

    private JobSupport() {}
}

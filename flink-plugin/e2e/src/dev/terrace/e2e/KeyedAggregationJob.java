package dev.terrace.e2e;

import org.apache.flink.api.common.RuntimeExecutionMode;
import org.apache.flink.api.common.functions.MapFunction;
import org.apache.flink.api.common.functions.ReduceFunction;
import org.apache.flink.api.common.functions.RichMapFunction;
import org.apache.flink.api.common.typeinfo.Types;
import org.apache.flink.api.java.tuple.Tuple3;
import org.apache.flink.api.java.tuple.Tuple4;
import org.apache.flink.api.common.functions.OpenContext;
import org.apache.flink.configuration.Configuration;
import org.apache.flink.streaming.api.datastream.DataStream;
import org.apache.flink.streaming.api.datastream.KeyedStream;
import org.apache.flink.streaming.api.environment.StreamExecutionEnvironment;

import java.io.IOException;
import java.io.PrintWriter;
import java.nio.charset.StandardCharsets;
import java.nio.file.DirectoryStream;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.Paths;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;

/**
 * A Flink batch job with two keyed shuffles, used to exercise a hybrid-shuffle tier end to end.
 *
 * <p>Records {@code i in [0, N)} are generated deterministically: key = mix(i) % K, value =
 * mix(i ^ C) % 1_000_000, and a payload of S bytes derived from i. Shuffle 1 is keyBy(key) with a
 * reduce that verifies every payload it receives against its seed (so corrupted or misrouted
 * buffers fail the job) and sums (value, count) per key. Shuffle 2 is keyBy(key % B) and sums the
 * per-key results into B buckets. Both results are collected, sorted and written to the output
 * file, so runs with different shuffle implementations can be compared with {@code cmp}.
 *
 * <p>Usage: {@code KeyedAggregationJob <parallelism> <numRecords> <payloadBytes> <outputFile>
 * [key=value ...]}. Extra key=value pairs go into the Flink configuration of the local
 * MiniCluster (and the job). Special keys: {@code job.keys} (K, default 1000), {@code
 * job.buckets} (B, default 16).
 */
public final class KeyedAggregationJob {

    /** key, value, seq, payload (payload emptied once verified). */
    public static final class Rec {
        public long key;
        public long value;
        public long count;
        public long seq;
        public byte[] payload;

        public Rec() {}

        Rec(long key, long value, long count, long seq, byte[] payload) {
            this.key = key;
            this.value = value;
            this.count = count;
            this.seq = seq;
            this.payload = payload;
        }
    }

    static long mix(long z) {
        // splitmix64 finalizer
        z += 0x9E3779B97F4A7C15L;
        z = (z ^ (z >>> 30)) * 0xBF58476D1CE4E5B9L;
        z = (z ^ (z >>> 27)) * 0x94D049BB133111EBL;
        return z ^ (z >>> 31);
    }

    static byte[] payloadFor(long seq, int size) {
        byte[] p = new byte[size];
        long s = mix(seq ^ 0x5DEECE66DL);
        int i = 0;
        for (; i + 8 <= size; i += 8) {
            s ^= s << 13;
            s ^= s >>> 7;
            s ^= s << 17;
            for (int b = 0; b < 8; b++) {
                p[i + b] = (byte) (s >>> (8 * b));
            }
        }
        for (; i < size; i++) {
            p[i] = (byte) (seq + i);
        }
        return p;
    }

    static void verify(Rec r) {
        if (r.payload == null || r.payload.length == 0) {
            return;
        }
        byte[] expected = payloadFor(r.seq, r.payload.length);
        if (!java.util.Arrays.equals(expected, r.payload)) {
            throw new IllegalStateException("payload mismatch for record seq=" + r.seq);
        }
    }

    /** Runs a job defined on an environment (a test may run it its own way). */
    interface Runner {
        void run(StreamExecutionEnvironment env, Configuration conf, String gate)
                throws Exception;
    }

    public static void main(String[] args) throws Exception {
        run(args, (env, conf, gate) -> env.execute("terrace-e2e-keyed-aggregation"));
    }

    static void run(String[] args, Runner runner) throws Exception {
        if (args.length < 4) {
            System.err.println(
                    "usage: KeyedAggregationJob <parallelism> <numRecords> <payloadBytes> <outputFile> [key=value ...]");
            System.exit(2);
        }
        final int parallelism = Integer.parseInt(args[0]);
        final long numRecords = Long.parseLong(args[1]);
        final int payloadBytes = Integer.parseInt(args[2]);
        final Path output = Paths.get(args[3]);

        Map<String, String> extra = JobSupport.keyValues(args, 4);
        final long numKeys = Long.parseLong(extra.getOrDefault("job.keys", "1000"));
        final long numBuckets = Long.parseLong(extra.getOrDefault("job.buckets", "16"));
        // job.gate=FILE: shuffle 1's consumers first pass records through a map whose open()
        // waits for FILE, so a test can act on shuffle 1's stored data before any of it is read
        // (this adds a shuffle; the results are the same).
        final String gate = extra.get("job.gate");

        Configuration conf = new Configuration();
        conf.setString("execution.runtime-mode", "BATCH");
        for (Map.Entry<String, String> e : extra.entrySet()) {
            if (!e.getKey().startsWith("job.")) {
                conf.setString(e.getKey(), e.getValue());
            }
        }
        System.out.println("flink config overrides: " + extra);

        StreamExecutionEnvironment env =
                StreamExecutionEnvironment.createLocalEnvironment(parallelism, conf);
        env.setRuntimeMode(RuntimeExecutionMode.BATCH);

        DataStream<Rec> records =
                env.fromSequence(0, numRecords - 1)
                        .name("generate")
                        .map(
                                (MapFunction<Long, Rec>)
                                        i ->
                                                new Rec(
                                                        Math.floorMod(mix(i), numKeys),
                                                        Math.floorMod(
                                                                mix(i ^ 0xC0FFEEL), 1_000_000L),
                                                        1L,
                                                        i,
                                                        payloadFor(i, payloadBytes)))
                        .returns(Rec.class)
                        .name("make-records");

        // Shuffle 1: by key. Verify payloads on the consumer side, sum per key.
        KeyedStream<Rec, Long> byKey = records.keyBy(r -> r.key, Types.LONG);
        if (gate != null) {
            byKey =
                    byKey.map(new Gate(gate))
                            .returns(Rec.class)
                            .name("gate")
                            .keyBy(r -> r.key, Types.LONG);
        }
        DataStream<Tuple3<Long, Long, Long>> perKey =
                byKey
                        .reduce(
                                (ReduceFunction<Rec>)
                                        (a, b) -> {
                                            verify(a);
                                            verify(b);
                                            return new Rec(
                                                    a.key,
                                                    a.value + b.value,
                                                    a.count + b.count,
                                                    -1L,
                                                    new byte[0]);
                                        })
                        .name("sum-per-key")
                        .map(
                                (MapFunction<Rec, Tuple3<Long, Long, Long>>)
                                        r -> {
                                            verify(r); // keys seen only once
                                            return Tuple3.of(r.key, r.value, r.count);
                                        })
                        .returns(Types.TUPLE(Types.LONG, Types.LONG, Types.LONG))
                        .name("verify-and-shrink");

        // Shuffle 2: by bucket = key % B.
        DataStream<Tuple4<Long, Long, Long, Long>> perBucket =
                perKey.map(
                                (MapFunction<Tuple3<Long, Long, Long>, Tuple4<Long, Long, Long, Long>>)
                                        t ->
                                                Tuple4.of(
                                                        Math.floorMod(t.f0, numBuckets),
                                                        t.f1,
                                                        t.f2,
                                                        mix(t.f0 * 31 + t.f1)))
                        .returns(Types.TUPLE(Types.LONG, Types.LONG, Types.LONG, Types.LONG))
                        .keyBy(t -> t.f0, Types.LONG)
                        .reduce(
                                (ReduceFunction<Tuple4<Long, Long, Long, Long>>)
                                        (a, b) ->
                                                Tuple4.of(
                                                        a.f0, a.f1 + b.f1, a.f2 + b.f2, a.f3 + b.f3))
                        .name("sum-per-bucket");

        // Each sink subtask writes its rows to <output>.parts/<name>-<subtask>; the client merges
        // and sorts them after the job (no collect sink: its client polls a MiniCluster that
        // the local environment stops as soon as the job ends).
        Path parts = Paths.get(output.toString() + ".parts");
        JobSupport.deleteRecursively(parts);
        Files.createDirectories(parts);
        perKey.map(t -> "key," + t.f0 + "," + t.f1 + "," + t.f2)
                .returns(Types.STRING)
                .writeUsingOutputFormat(new PartFileSink(parts.toString(), "key"))
                .name("write-per-key");
        perBucket
                .map(t -> "bucket," + t.f0 + "," + t.f1 + "," + t.f2 + "," + Long.toHexString(t.f3))
                .returns(Types.STRING)
                .writeUsingOutputFormat(new PartFileSink(parts.toString(), "bucket"))
                .name("write-per-bucket");

        long start = System.nanoTime();
        runner.run(env, conf, gate);
        double seconds = (System.nanoTime() - start) / 1e9;

        List<Tuple3<Long, Long, Long>> keyRows = new ArrayList<>();
        List<Tuple4<Long, Long, Long, Long>> bucketRows = new ArrayList<>();
        try (DirectoryStream<Path> ds = Files.newDirectoryStream(parts)) {
            for (Path f : ds) {
                for (String l : Files.readAllLines(f, StandardCharsets.UTF_8)) {
                    String[] c = l.split(",");
                    if (c[0].equals("key")) {
                        keyRows.add(
                                Tuple3.of(
                                        Long.parseLong(c[1]),
                                        Long.parseLong(c[2]),
                                        Long.parseLong(c[3])));
                    } else {
                        bucketRows.add(
                                Tuple4.of(
                                        Long.parseLong(c[1]),
                                        Long.parseLong(c[2]),
                                        Long.parseLong(c[3]),
                                        Long.parseUnsignedLong(c[4], 16)));
                    }
                }
            }
        }
        JobSupport.deleteRecursively(parts);
        List<String> keyLines = new ArrayList<>();
        keyRows.sort((x, y) -> Long.compare(x.f0, y.f0));
        bucketRows.sort((x, y) -> Long.compare(x.f0, y.f0));
        long totalCount = 0;
        for (Tuple3<Long, Long, Long> t : keyRows) {
            keyLines.add("key," + t.f0 + "," + t.f1 + "," + t.f2);
            totalCount += t.f2;
        }
        List<String> lines = new ArrayList<>(keyLines);
        for (Tuple4<Long, Long, Long, Long> t : bucketRows) {
            lines.add("bucket," + t.f0 + "," + t.f1 + "," + t.f2 + "," + Long.toHexString(t.f3));
        }
        writeLines(output, lines);

        double shuffledGiB = (double) numRecords * (payloadBytes + 40) / (1L << 30);
        System.out.printf(
                "result: %d keys, %d buckets, %d records counted (expected %d) -> %s%n",
                keyRows.size(), bucketRows.size(), totalCount, numRecords, output);
        System.out.printf(
                "wall time: %.2f s (job execution), ~%.2f GiB through shuffle 1, parallelism %d%n",
                seconds, shuffledGiB, parallelism);
        if (totalCount != numRecords) {
            System.err.println("ERROR: record count mismatch");
            System.exit(1);
        }
    }

    /** Identity map whose open() waits (up to 5 minutes) until a file exists. */
    static final class Gate extends RichMapFunction<Rec, Rec> {
        private static final long serialVersionUID = 1L;
        private final String file;

        Gate(String file) {
            this.file = file;
        }

        @Override
        public void open(OpenContext openContext) throws Exception {
            long deadline = System.nanoTime() + 300_000_000_000L;
            while (!Files.exists(Paths.get(file)) && System.nanoTime() < deadline) {
                Thread.sleep(100);
            }
        }

        @Override
        public Rec map(Rec r) {
            return r;
        }
    }

    /** Writes the rows it receives to {@code <dir>/<name>-<subtask>.txt} when it closes. */
    static final class PartFileSink extends JobSupport.SubtaskSink<String> {
        private static final long serialVersionUID = 1L;
        private final String dir;
        private final String name;
        private transient List<String> rows;

        PartFileSink(String dir, String name) {
            this.dir = dir;
            this.name = name;
        }

        @Override
        public void writeRecord(String value) {
            if (rows == null) {
                rows = new ArrayList<>();
            }
            rows.add(value);
        }

        @Override
        public void close() throws IOException {
            Path f = Paths.get(dir, name + "-" + subtask + ".txt");
            Files.write(f, rows == null ? new ArrayList<String>() : rows, StandardCharsets.UTF_8);
        }
    }

    private static void writeLines(Path output, List<String> lines) throws IOException {
        if (output.getParent() != null) {
            Files.createDirectories(output.getParent());
        }
        try (PrintWriter w =
                new PrintWriter(Files.newBufferedWriter(output, StandardCharsets.UTF_8))) {
            for (String l : lines) {
                w.println(l);
            }
        }
    }

    private KeyedAggregationJob() {}
}

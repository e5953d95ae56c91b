package dev.terrace.e2e;

import org.apache.flink.api.common.functions.MapFunction;
import org.apache.flink.api.common.functions.Partitioner;
import org.apache.flink.api.java.functions.KeySelector;
import org.apache.flink.streaming.api.environment.StreamExecutionEnvironment;

import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.DirectoryStream;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.Paths;
import java.util.ArrayList;
import java.util.Collections;
import java.util.List;

/**
 * A shuffle-heavy Flink batch job with little CPU per record, for measuring what a shuffle
 * costs: records are byte[] of a fixed size, about half incompressible (copied from a random
 * pool) and half zeros, moved through one all-to-all shuffle (a custom partitioner, so no sort and
 * no keyed state) and only summed on the other side.
 *
 * <p>Record {@code i}: bytes 0..8 hold {@code i}; the first half after them is a slice of a 1 MiB
 * random pool at an offset derived from {@code i}; the rest is zeros. Consumer subtask {@code c}
 * gets the records with {@code i % parallelism == c} and sums (count, i, one long of the random
 * half); each writes one line, and the sorted lines are the result, so runs with different shuffle
 * implementations can be compared with {@code cmp}.
 *
 * <p>Usage: {@code ShuffleHeavyJob <parallelism> <numRecords> <recordBytes> <outputFile> [key=value
 * ...]}; extra key=value pairs go into the Flink configuration, as for {@link
 * KeyedAggregationJob}.
 */
public final class ShuffleHeavyJob {

    private static final int POOL = 1 << 20;

    /** The same pool in every JVM: xorshift from a fixed seed. */
    static byte[] pool() {
        byte[] p = new byte[POOL + 8];
        long s = 0x9E3779B97F4A7C15L;
        for (int i = 0; i < p.length; i++) {
            s ^= s << 13;
            s ^= s >>> 7;
            s ^= s << 17;
            p[i] = (byte) s;
        }
        return p;
    }

    /** Record {@code i} of {@code size} bytes. */
    static final class MakeRecord implements MapFunction<Long, byte[]> {
        private static final long serialVersionUID = 1L;
        private final int size;
        private transient byte[] pool;

        MakeRecord(int size) {
            this.size = size;
        }

        @Override
        public byte[] map(Long i) {
            if (pool == null) {
                pool = pool();
            }
            byte[] r = new byte[size];
            JobSupport.writeLong(r, 0, i);
            int random = Math.max(0, (size - 8) / 2);
            int offset = (int) Math.floorMod(i * 7919L, (long) (POOL - random));
            System.arraycopy(pool, offset, r, 8, random);
            return r;
        }
    }

    /** Sums what its subtask receives and writes one line at close. */
    static final class SumSink extends JobSupport.SubtaskSink<byte[]> {
        private static final long serialVersionUID = 1L;
        private final String dir;
        private long count;
        private long sumOfIds;
        private long sumOfRandom;

        SumSink(String dir) {
            this.dir = dir;
        }

        @Override
        public void writeRecord(byte[] r) {
            count++;
            sumOfIds += JobSupport.readLong(r, 0);
            if (r.length >= 16) {
                sumOfRandom += JobSupport.readLong(r, 8);
            }
        }

        @Override
        public void close() throws IOException {
            String line = subtask + "," + count + "," + sumOfIds + "," + sumOfRandom;
            Files.write(
                    Paths.get(dir, "part-" + subtask + ".txt"),
                    Collections.singletonList(line),
                    StandardCharsets.UTF_8);
        }
    }

    public static void main(String[] args) throws Exception {
        if (args.length < 4) {
            System.err.println(
                    "usage: ShuffleHeavyJob <parallelism> <numRecords> <recordBytes> <outputFile> [key=value ...]");
            System.exit(2);
        }
        final int parallelism = Integer.parseInt(args[0]);
        final long numRecords = Long.parseLong(args[1]);
        final int recordBytes = Integer.parseInt(args[2]);
        final Path output = Paths.get(args[3]);
        if (recordBytes < 8) {
            throw new IllegalArgumentException("records hold at least their 8-byte id");
        }
        StreamExecutionEnvironment env = JobSupport.batchEnvironment(args, 4, parallelism);
        Path parts = JobSupport.freshParts(output);
        env.fromSequence(0, numRecords - 1)
                .name("generate")
                .map(new MakeRecord(recordBytes))
                .name("make-records")
                .partitionCustom(
                        (Partitioner<Long>) (id, n) -> (int) Math.floorMod(id, (long) n),
                        (KeySelector<byte[], Long>) r -> JobSupport.readLong(r, 0))
                .writeUsingOutputFormat(new SumSink(parts.toString()))
                .name("sum");

        long start = System.nanoTime();
        env.execute("terrace-shuffle-heavy");
        double seconds = (System.nanoTime() - start) / 1e9;

        List<String> lines = new ArrayList<>();
        long total = 0;
        try (DirectoryStream<Path> ds = Files.newDirectoryStream(parts)) {
            for (Path f : ds) {
                for (String l : Files.readAllLines(f, StandardCharsets.UTF_8)) {
                    lines.add(l);
                    total += Long.parseLong(l.split(",")[1]);
                }
            }
        }
        JobSupport.deleteRecursively(parts);
        Collections.sort(lines);
        Files.write(output, lines, StandardCharsets.UTF_8);
        double shuffledGiB = (double) numRecords * recordBytes / (1L << 30);
        System.out.printf(
                "result: %d records counted (expected %d) -> %s%n", total, numRecords, output);
        System.out.printf(
                "wall time: %.2f s (job execution), ~%.2f GiB through the shuffle, parallelism %d%n",
                seconds, shuffledGiB, parallelism);
        if (total != numRecords) {
            System.err.println("ERROR: record count mismatch");
            System.exit(1);
        }
    }

    private ShuffleHeavyJob() {}
}

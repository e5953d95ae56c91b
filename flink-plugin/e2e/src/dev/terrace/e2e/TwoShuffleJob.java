package dev.terrace.e2e;

import org.apache.flink.api.common.functions.MapFunction;
import org.apache.flink.api.common.functions.Partitioner;
import org.apache.flink.api.java.functions.KeySelector;
import org.apache.flink.streaming.api.environment.StreamExecutionEnvironment;

import java.nio.file.Path;
import java.nio.file.Paths;

/**
 * Small records through two full shuffles: every record crosses both, unlike {@link
 * KeyedAggregationJob}, whose second shuffle only carries per-key sums.
 *
 * <p>Records are compressible byte[] of log lines ({@link CompressibleRecords}; LZ4 compresses
 * them about 3.2 times at 250 bytes). Shuffle 1 partitions by {@code key1 = mix(id) % 1009}; its
 * consumers check each record against the pool and replace its tag with one derived from the id.
 * Shuffle 2 partitions by {@code key2 = mix(id ^ C) % 4099}, a key independent of the first, so it
 * is all-to-all again; its consumers check each record and its new tag, and sum (count, ids,
 * tags). Both shuffles use a custom partitioner (hash on the key, no sort, no keyed state) and run
 * {@code parallelism -> parallelism}. The sorted per-subtask lines are the result, so runs with
 * different shuffle implementations can be compared with {@code cmp}.
 *
 * <p>Usage: {@code TwoShuffleJob <parallelism> <numRecords> <recordBytes> <outputFile> [key=value
 * ...]}; extra key=value pairs go into the Flink configuration, as for {@link
 * KeyedAggregationJob}.
 */
public final class TwoShuffleJob {

    private static final long TAG_SALT_1 = 0x5A17L;
    private static final long TAG_SALT_2 = 0x2B0B5L;

    static long key1(long id) {
        return Math.floorMod(CompressibleRecords.mix(id), 1009L);
    }

    static long key2(long id) {
        return Math.floorMod(CompressibleRecords.mix(id ^ 0xC0FFEEL), 4099L);
    }

    /**
     * Shuffle 1's consumer: checks a record and gives it its stage-2 tag, in place (each record is
     * a fresh array off the network; object reuse is off).
     */
    static final class Retag implements MapFunction<byte[], byte[]> {
        private static final long serialVersionUID = 1L;
        private final int size;
        private transient byte[] pool;

        Retag(int size) {
            this.size = size;
        }

        @Override
        public byte[] map(byte[] r) {
            if (pool == null) {
                pool = CompressibleRecords.pool();
            }
            CompressibleRecords.verify(r, size, pool);
            long id = CompressibleRecords.id(r);
            if (CompressibleRecords.tag(r) != CompressibleRecords.mix(id ^ TAG_SALT_1)) {
                throw new IllegalStateException("record " + id + ": wrong stage-1 tag");
            }
            JobSupport.writeLong(r, 8, CompressibleRecords.mix(id ^ TAG_SALT_2));
            return r;
        }
    }

    public static void main(String[] args) throws Exception {
        if (args.length < 4) {
            System.err.println(
                    "usage: TwoShuffleJob <parallelism> <numRecords> <recordBytes> <outputFile> [key=value ...]");
            System.exit(2);
        }
        final int parallelism = Integer.parseInt(args[0]);
        final long numRecords = Long.parseLong(args[1]);
        final int recordBytes = Integer.parseInt(args[2]);
        final Path output = Paths.get(args[3]);
        CompressibleRecords.checkSize(recordBytes);
        StreamExecutionEnvironment env = JobSupport.batchEnvironment(args, 4, parallelism);
        Path parts = JobSupport.freshParts(output);
        Partitioner<Long> byKey = (key, n) -> (int) Math.floorMod(key, (long) n);
        env.fromSequence(0, numRecords - 1)
                .setParallelism(parallelism)
                .name("generate")
                .map(new CompressibleRecords.Make(recordBytes, TAG_SALT_1))
                .setParallelism(parallelism)
                .name("make-records")
                .partitionCustom(byKey, (KeySelector<byte[], Long>) r -> key1(CompressibleRecords.id(r)))
                .map(new Retag(recordBytes))
                .setParallelism(parallelism)
                .name("verify-and-retag")
                .partitionCustom(byKey, (KeySelector<byte[], Long>) r -> key2(CompressibleRecords.id(r)))
                .writeUsingOutputFormat(
                        new CompressibleRecords.SumSink(parts.toString(), recordBytes, TAG_SALT_2))
                .setParallelism(parallelism)
                .name("verify-and-sum");

        long start = System.nanoTime();
        env.execute("terrace-two-shuffle");
        double seconds = (System.nanoTime() - start) / 1e9;

        CompressibleRecords.mergeSums(parts, output, numRecords);
        System.out.printf(
                "wall time: %.2f s (job execution), ~%.2f GB through each of 2 shuffles, parallelism %d%n",
                seconds, (double) numRecords * recordBytes / 1e9, parallelism);
    }

    private TwoShuffleJob() {}
}

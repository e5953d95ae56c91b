package dev.terrace.e2e;

import org.apache.flink.api.common.functions.Partitioner;
import org.apache.flink.api.java.functions.KeySelector;
import org.apache.flink.streaming.api.environment.StreamExecutionEnvironment;

import java.nio.file.Path;
import java.nio.file.Paths;

/**
 * A shuffle-heavy Flink batch job over compressible records: byte[] records of log lines (see
 * {@link CompressibleRecords}; LZ4 compresses them about 3.7 times at 1,000 bytes) moved through
 * one all-to-all shuffle, {@code parallelism} producers to {@code parallelism} consumers (a
 * custom partitioner on the record id, so no sort and no keyed state). Each consumer checks every
 * record against the pool and sums (count, ids, tags); the sorted per-subtask lines are the result,
 * so runs with different shuffle implementations can be compared with {@code cmp}.
 *
 * <p>Usage: {@code CompressibleBytesJob <parallelism> <numRecords> <recordBytes> <outputFile>
 * [key=value ...]}; extra key=value pairs go into the Flink configuration, as for {@link
 * KeyedAggregationJob}.
 */
public final class CompressibleBytesJob {

    private static final long TAG_SALT = 0xB17E5L;

    public static void main(String[] args) throws Exception {
        if (args.length < 4) {
            System.err.println(
                    "usage: CompressibleBytesJob <parallelism> <numRecords> <recordBytes> <outputFile> [key=value ...]");
            System.exit(2);
        }
        final int parallelism = Integer.parseInt(args[0]);
        final long numRecords = Long.parseLong(args[1]);
        final int recordBytes = Integer.parseInt(args[2]);
        final Path output = Paths.get(args[3]);
        CompressibleRecords.checkSize(recordBytes);
        StreamExecutionEnvironment env = JobSupport.batchEnvironment(args, 4, parallelism);
        Path parts = JobSupport.freshParts(output);
        // Parallelism set on each side so that the shuffle is parallelism -> parallelism whatever
        // the scheduler would derive, and the result has one line per consumer subtask.
        env.fromSequence(0, numRecords - 1)
                .setParallelism(parallelism)
                .name("generate")
                .map(new CompressibleRecords.Make(recordBytes, TAG_SALT))
                .setParallelism(parallelism)
                .name("make-records")
                .partitionCustom(
                        (Partitioner<Long>) (id, n) -> (int) Math.floorMod(id, (long) n),
                        (KeySelector<byte[], Long>) CompressibleRecords::id)
                .writeUsingOutputFormat(
                        new CompressibleRecords.SumSink(parts.toString(), recordBytes, TAG_SALT))
                .setParallelism(parallelism)
                .name("verify-and-sum");

        long start = System.nanoTime();
        env.execute("terrace-compressible-bytes");
        double seconds = (System.nanoTime() - start) / 1e9;

        CompressibleRecords.mergeSums(parts, output, numRecords);
        System.out.printf(
                "wall time: %.2f s (job execution), ~%.2f GB through the shuffle, parallelism %d -> %d%n",
                seconds, (double) numRecords * recordBytes / 1e9, parallelism, parallelism);
    }

    private CompressibleBytesJob() {}
}

package dev.terrace.e2e;

import org.apache.flink.api.common.functions.MapFunction;

import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.DirectoryStream;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.Paths;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.Collections;
import java.util.List;

/**
 * Compressible byte[] records for the shuffle benchmarks ({@link CompressibleBytesJob}, {@link
 * TwoShuffleJob}): what a job that shuffles log lines moves, which LZ4 (Flink's shuffle codec)
 * compresses about 3.7 times at 1,000 bytes a record and 3.2 times at 250, measured on 32 KiB
 * buffers of consecutive records (Flink hands a remote tier ~3.6 and ~3.1 times fewer bytes).
 *
 * <p>Record {@code i} of {@code size} bytes: bytes 0..8 hold {@code i} (little-endian), bytes
 * 8..16 a tag the job chooses, and the rest a slice of a 1 MiB pool of log lines at an offset
 * derived from {@code i}. The pool is the same in every JVM, so a consumer checks each record it
 * receives against the pool (one range compare) and a corrupted or misrouted buffer fails the job.
 */
final class CompressibleRecords {

    static final int HEADER = 16;
    private static final int POOL = 1 << 20;

    private static final String[] LEVELS = {"INFO ", "INFO ", "INFO ", "DEBUG", "WARN "};
    private static final String[] THREADS = {"worker", "netty-io", "flusher", "uploader", "compactor"};
    private static final String[] CLASSES = {
        "worker.store.SegmentStore",
        "worker.push.PushHandler",
        "master.registry.Registry",
        "rpc.server.Connection",
        "worker.fetch.FetchHandler"
    };
    private static final String[] MESSAGES = {
        "pushed segment",
        "sealed subpartition",
        "read extent",
        "released partition",
        "compacted object",
        "acknowledged credit"
    };

    static long mix(long z) {
        return KeyedAggregationJob.mix(z);
    }

    /** The pool: log lines from a fixed seed, at least {@code POOL} bytes of ASCII. */
    static byte[] pool() {
        StringBuilder sb = new StringBuilder(POOL + 4096);
        long s = 42;
        for (int n = 0; sb.length() < POOL; n++) {
            s = mix(s);
            long r = s;
            sb.append(
                    String.format(
                            "2025-03-14T09:%02d:%02d.%03dZ %s [%s-%d] dev.terrace.%s - %s"
                                    + " job=%08x partition=%d subpartition=%d segment=%d bytes=%d\n",
                            (n / 3600) % 60,
                            (n / 60) % 60,
                            (int) (r & 1023) % 1000,
                            LEVELS[(int) ((r >>> 10) % LEVELS.length)],
                            THREADS[(int) ((r >>> 13) % THREADS.length)],
                            (int) ((r >>> 16) % 8),
                            CLASSES[(int) ((r >>> 19) % CLASSES.length)],
                            MESSAGES[(int) ((r >>> 22) % MESSAGES.length)],
                            0xC0FFEE00L + (r >>> 25) % 4,
                            (r >>> 28) % 64,
                            (r >>> 34) % 16,
                            (r >>> 38) % 100000,
                            32768 - (r >>> 50) % 4096));
        }
        return sb.toString().getBytes(StandardCharsets.US_ASCII);
    }

    static void checkSize(int size) {
        if (size < HEADER || size - HEADER > POOL) {
            throw new IllegalArgumentException(
                    "record size must be in [" + HEADER + ", " + (POOL + HEADER) + "], not " + size);
        }
    }

    /** Where record {@code id}'s body starts in the pool. */
    static int offset(long id, int size) {
        return (int) Math.floorMod(mix(id ^ 0x10C5L), (long) (POOL - (size - HEADER) + 1));
    }

    static long id(byte[] r) {
        return JobSupport.readLong(r, 0);
    }

    static long tag(byte[] r) {
        return JobSupport.readLong(r, 8);
    }

    /** Makes record {@code i}, tagged {@code mix(i ^ tagSalt)}. */
    static final class Make implements MapFunction<Long, byte[]> {
        private static final long serialVersionUID = 1L;
        private final int size;
        private final long tagSalt;
        private transient byte[] pool;

        Make(int size, long tagSalt) {
            checkSize(size);
            this.size = size;
            this.tagSalt = tagSalt;
        }

        @Override
        public byte[] map(Long i) {
            if (pool == null) {
                pool = pool();
            }
            byte[] r = new byte[size];
            JobSupport.writeLong(r, 0, i);
            JobSupport.writeLong(r, 8, mix(i ^ tagSalt));
            System.arraycopy(pool, offset(i, size), r, HEADER, size - HEADER);
            return r;
        }
    }

    /** Throws unless {@code r} is a record of {@code size} bytes whose body matches the pool. */
    static void verify(byte[] r, int size, byte[] pool) {
        if (r.length != size) {
            throw new IllegalStateException(
                    "record of " + r.length + " bytes, expected " + size);
        }
        long id = id(r);
        int at = offset(id, size);
        if (!Arrays.equals(r, HEADER, size, pool, at, at + size - HEADER)) {
            throw new IllegalStateException("record " + id + ": body differs from the pool");
        }
    }

    /**
     * Verifies and sums what its subtask receives (count, ids, tags, each tag checked against
     * {@code mix(id ^ tagSalt)}) and writes one line {@code subtask,count,sumOfIds,sumOfTags} at
     * close.
     */
    static final class SumSink extends JobSupport.SubtaskSink<byte[]> {
        private static final long serialVersionUID = 1L;
        private final String dir;
        private final int size;
        private final long tagSalt;
        private transient byte[] pool;
        private long count;
        private long sumOfIds;
        private long sumOfTags;

        SumSink(String dir, int size, long tagSalt) {
            this.dir = dir;
            this.size = size;
            this.tagSalt = tagSalt;
        }

        @Override
        public void writeRecord(byte[] r) {
            if (pool == null) {
                pool = pool();
            }
            verify(r, size, pool);
            long id = id(r);
            if (tag(r) != mix(id ^ tagSalt)) {
                throw new IllegalStateException("record " + id + ": wrong tag");
            }
            count++;
            sumOfIds += id;
            sumOfTags += tag(r);
        }

        @Override
        public void close() throws IOException {
            String line = subtask + "," + count + "," + sumOfIds + "," + sumOfTags;
            Files.write(
                    Paths.get(dir, "part-" + subtask + ".txt"),
                    Collections.singletonList(line),
                    StandardCharsets.UTF_8);
        }
    }

    /**
     * Merges the {@link SumSink} lines in {@code parts} into {@code output} (sorted), removes
     * {@code parts}, and fails unless they count {@code numRecords} records with ids summing to
     * {@code 0 + 1 + ... + (numRecords - 1)}.
     */
    static void mergeSums(Path parts, Path output, long numRecords) throws IOException {
        List<String> lines = new ArrayList<>();
        long count = 0;
        long sumOfIds = 0;
        try (DirectoryStream<Path> ds = Files.newDirectoryStream(parts)) {
            for (Path f : ds) {
                for (String l : Files.readAllLines(f, StandardCharsets.UTF_8)) {
                    String[] c = l.split(",");
                    lines.add(l);
                    count += Long.parseLong(c[1]);
                    sumOfIds += Long.parseLong(c[2]);
                }
            }
        }
        JobSupport.deleteRecursively(parts);
        Collections.sort(lines);
        Files.write(output, lines, StandardCharsets.UTF_8);
        long expectedIds = numRecords % 2 == 0
                ? (numRecords / 2) * (numRecords - 1)
                : numRecords * ((numRecords - 1) / 2);
        System.out.printf(
                "result: %d records counted (expected %d), ids sum %d (expected %d) -> %s%n",
                count, numRecords, sumOfIds, expectedIds, output);
        if (count != numRecords || sumOfIds != expectedIds) {
            System.err.println("ERROR: record count or id sum mismatch");
            System.exit(1);
        }
    }

    private CompressibleRecords() {}
}

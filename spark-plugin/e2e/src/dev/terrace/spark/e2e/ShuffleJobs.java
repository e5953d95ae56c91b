package dev.terrace.spark.e2e;

import org.apache.spark.SparkConf;
import org.apache.spark.TaskContext;
import org.apache.spark.api.java.JavaPairRDD;
import org.apache.spark.api.java.JavaRDD;
import org.apache.spark.api.java.JavaSparkContext;
import org.apache.spark.sql.Dataset;
import org.apache.spark.sql.Row;
import org.apache.spark.sql.SparkSession;
import org.apache.spark.util.TaskCompletionListener;

import scala.Tuple2;

import java.io.IOException;
import java.io.PrintWriter;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.Paths;
import java.security.MessageDigest;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.Iterator;
import java.util.List;
import java.util.Random;

/**
 * The Spark jobs of Terrace's end-to-end tests. Each writes a deterministic text result (sorted
 * lines, or digests of them) to {@code args[1]}, so the same job on Spark's own sort shuffle and
 * on Terrace can be compared byte for byte.
 *
 * <pre>
 *   ShuffleJobs rdd OUT            reduceByKey, groupByKey, join, sortByKey, repartition(200+),
 *                                  skewed keys, empty partitions, records over 1 MiB
 *   ShuffleJobs sql OUT            DataFrame aggregation and a skewed join, adaptive execution on;
 *                                  the final plans are written to OUT.plan
 *   ShuffleJobs rdd-sql OUT        both, in one application
 *   ShuffleJobs sql-big OUT MIB    a SQL window over about MIB MiB of rows (1 KiB of hex each, which
 *                                  Spark's lz4 cannot shrink), all shuffled, then aggregated
 *   ShuffleJobs big OUT MIB        about MIB MiB shuffled through one groupBy
 *   ShuffleJobs heavy OUT MIB      about MIB MiB of 1000-byte records (half random, half zeros) through
 *                                  one partitionBy, little CPU per record (the benchmark's job)
 *   ShuffleJobs failed-attempt OUT reduceByKey whose map task 0 fails its first attempt after the
 *                                  attempt wrote its whole output (Spark runs it again)
 *   ShuffleJobs reduce-gate OUT GATE  a reduceByKey whose reduce tasks wait for file GATE before
 *                                  they read (the test acts once the map stage is done)
 *   ShuffleJobs speculation OUT GATE  a partitionBy whose map task 0 stalls in its first attempt
 *                                  half-way through its output until it is killed (run with
 *                                  speculation on, a copy on another host wins); its reduce tasks
 *                                  wait for file GATE before they read
 *   ShuffleJobs two-jobs OUT GATE  a reduceByKey counted by one job; then, once file GATE exists,
 *                                  collected by a second job that reuses the map outputs (the test
 *                                  removes executors in between)
 * </pre>
 */
public final class ShuffleJobs {
    private ShuffleJobs() {}

    public static void main(String[] args) throws Exception {
        String job = args[0];
        Path out = Paths.get(args[1]);
        SparkConf conf = new SparkConf().setAppName("terrace-e2e-" + job);
        SparkSession spark = SparkSession.builder().config(conf).getOrCreate();
        JavaSparkContext sc = JavaSparkContext.fromSparkContext(spark.sparkContext());
        List<String> lines = new ArrayList<>();
        long start = System.nanoTime();
        switch (job) {
            case "rdd":
                rdd(sc, lines);
                break;
            case "sql":
                sql(spark, lines, Paths.get(args[1] + ".plan"));
                break;
            case "rdd-sql":
                rdd(sc, lines);
                sql(spark, lines, Paths.get(args[1] + ".plan"));
                break;
            case "sql-big":
                sqlBig(spark, lines, Integer.parseInt(args[2]));
                break;
            case "big":
                big(sc, lines, Integer.parseInt(args[2]));
                break;
            case "heavy":
                heavy(sc, lines, Integer.parseInt(args[2]));
                break;
            case "failed-attempt":
                failedAttempt(sc, lines);
                break;
            case "reduce-gate":
                reduceGate(sc, lines, Paths.get(args[2]));
                break;
            case "speculation":
                speculation(sc, lines, Paths.get(args[2]));
                break;
            case "two-jobs":
                twoJobs(sc, lines, Paths.get(args[2]));
                break;
            default:
                throw new IllegalArgumentException("unknown job " + job);
        }
        try (PrintWriter w = new PrintWriter(Files.newBufferedWriter(out, StandardCharsets.UTF_8))) {
            for (String line : lines) {
                w.println(line);
            }
        }
        System.out.println(
                "TERRACE-E2E " + job + " done in " + (System.nanoTime() - start) / 1_000_000 + " ms");
        spark.stop();
    }

    private static String digest(List<String> sorted) throws Exception {
        MessageDigest md = MessageDigest.getInstance("SHA-256");
        for (String s : sorted) {
            md.update(s.getBytes(StandardCharsets.UTF_8));
            md.update((byte) '\n');
        }
        StringBuilder sb = new StringBuilder();
        for (byte b : md.digest()) {
            sb.append(String.format("%02x", b));
        }
        return sorted.size() + " " + sb;
    }

    private static List<String> sortedStrings(JavaRDD<String> rdd) {
        List<String> all = new ArrayList<>(rdd.collect());
        all.sort(null);
        return all;
    }

    static void rdd(JavaSparkContext sc, List<String> lines) throws Exception {
        // Skewed keys: key 0 takes half the records.
        JavaPairRDD<Integer, Long> pairs =
                sc.parallelize(range(0, 200_000), 8)
                        .mapToPair(i -> new Tuple2<>(i % 2 == 0 ? 0 : i % 5003, (long) i));
        lines.add("reduceByKey " + digest(sortedStrings(
                pairs.reduceByKey(Long::sum, 13).map(t -> t._1() + "=" + t._2()))));
        lines.add("groupByKey " + digest(sortedStrings(
                pairs.groupByKey(7).map(t -> {
                    long sum = 0;
                    int n = 0;
                    for (long v : t._2()) {
                        sum += v;
                        n++;
                    }
                    return t._1() + ":" + n + ":" + sum;
                }))));
        JavaPairRDD<Integer, String> names =
                sc.parallelize(range(0, 6000), 5).mapToPair(i -> new Tuple2<>(i, "n" + i));
        lines.add("join " + digest(sortedStrings(
                pairs.filter(t -> t._1() < 3000).join(names, 11).map(t -> t._1() + "," + t._2()._1() + "," + t._2()._2()))));
        // sortByKey: the order itself is the result (keys are distinct: 1,000,003 is prime).
        List<String> sorted = pairs.mapToPair(t -> new Tuple2<>(t._2() * 7919 % 1_000_003, t._1()))
                .sortByKey(true, 9)
                .map(t -> t._1() + "/" + t._2())
                .collect();
        lines.add("sortByKey " + digest(sorted));
        // 250 reduce partitions, most of them empty: only 40 distinct keys.
        lines.add("repartition " + digest(sortedStrings(
                sc.parallelize(range(0, 50_000), 6)
                        .mapToPair(i -> new Tuple2<>(i % 40, 1L))
                        .partitionBy(new org.apache.spark.HashPartitioner(250))
                        .mapPartitionsWithIndex((idx, it) -> {
                            long n = 0;
                            while (it.hasNext()) {
                                it.next();
                                n++;
                            }
                            return Arrays.asList(idx + "#" + n).iterator();
                        }, true))));
        lines.add("repartition-rdd " + digest(sortedStrings(
                sc.parallelize(range(0, 30_000), 3).repartition(217).map(i -> "r" + i))));
        // Records over 1 MiB: 12 values of 1.5 MiB each, through a groupByKey.
        lines.add("large " + digest(sortedStrings(
                sc.parallelize(range(0, 12), 4)
                        .mapToPair(i -> new Tuple2<>(i % 3, bigValue(i)))
                        .groupByKey(3)
                        .map(t -> {
                            long sum = 0;
                            int n = 0;
                            for (byte[] v : t._2()) {
                                sum += checksum(v);
                                n++;
                            }
                            return t._1() + ":" + n + ":" + sum;
                        }))));
        // A shuffle whose map side writes nothing at all.
        lines.add("empty " + sc.parallelize(range(0, 100), 4)
                .filter(i -> i < 0)
                .mapToPair(i -> new Tuple2<>(i, i))
                .reduceByKey(Integer::sum, 5)
                .count());
    }

    static byte[] bigValue(int i) {
        byte[] v = new byte[(3 << 20) / 2];
        new Random(i).nextBytes(v);
        return v;
    }

    static long checksum(byte[] v) {
        long h = 1125899906842597L;
        for (byte b : v) {
            h = 31 * h + b;
        }
        return h;
    }

    static List<Integer> range(int from, int to) {
        List<Integer> r = new ArrayList<>(to - from);
        for (int i = from; i < to; i++) {
            r.add(i);
        }
        return r;
    }

    static void sql(SparkSession spark, List<String> lines, Path planFile) throws Exception {
        spark.conf().set("spark.sql.adaptive.enabled", "true");
        spark.conf().set("spark.sql.adaptive.coalescePartitions.enabled", "true");
        spark.conf().set("spark.sql.adaptive.skewJoin.enabled", "true");
        spark.conf().set("spark.sql.adaptive.skewJoin.skewedPartitionThresholdInBytes", "256KB");
        spark.conf().set("spark.sql.adaptive.skewJoin.skewedPartitionFactor", "2");
        spark.conf().set("spark.sql.adaptive.advisoryPartitionSizeInBytes", "64KB");
        spark.conf().set("spark.sql.autoBroadcastJoinThreshold", "-1");
        spark.conf().set("spark.sql.shuffle.partitions", "40");
        Dataset<Row> facts = spark.range(0, 400_000).selectExpr(
                "id", "CASE WHEN id % 3 = 0 THEN 7 ELSE id % 997 END AS k", "id * 3 AS v",
                "concat('payload-', id) AS p");
        Dataset<Row> dims = spark.range(0, 997).selectExpr("id AS k", "concat('dim-', id) AS name");
        Dataset<Row> agg = facts.groupBy("k").agg(
                org.apache.spark.sql.functions.count("*").as("n"),
                org.apache.spark.sql.functions.sum("v").as("s"));
        List<String> aggRows = new ArrayList<>();
        for (Row r : agg.collectAsList()) {
            aggRows.add(r.getLong(0) + "," + r.getLong(1) + "," + r.getLong(2));
        }
        aggRows.sort(null);
        lines.add("agg " + digest(aggRows));
        Dataset<Row> joined = facts.join(dims, "k").groupBy("name").agg(
                org.apache.spark.sql.functions.count("*").as("n"),
                org.apache.spark.sql.functions.max("p").as("m"));
        List<String> joinRows = new ArrayList<>();
        for (Row r : joined.collectAsList()) {
            joinRows.add(r.getString(0) + "," + r.getLong(1) + "," + r.getString(2));
        }
        joinRows.sort(null);
        lines.add("join " + digest(joinRows));
        String plans =
                "== agg\n" + agg.queryExecution().executedPlan().toString()
                        + "\n== join\n" + joined.queryExecution().executedPlan().toString();
        Files.write(planFile, plans.getBytes(StandardCharsets.UTF_8));
    }

    static void sqlBig(SparkSession spark, List<String> lines, int mib) throws Exception {
        spark.conf().set("spark.sql.adaptive.enabled", "true");
        spark.conf().set("spark.sql.shuffle.partitions", "16");
        long rows = (long) mib * (1 << 20) / 1040;
        StringBuilder payload = new StringBuilder("concat(");
        for (int i = 0; i < 8; i++) {
            payload.append(i == 0 ? "" : ", ").append("sha2(cast(id * 8 + ").append(i).append(" AS string), 512)");
        }
        payload.append(") AS p");
        // A window ranks each key's rows by payload: every row, payload included, crosses the
        // shuffle (no partial aggregation can shrink it).
        Dataset<Row> ranked = spark.range(0, rows, 1, 8)
                .selectExpr("id % 100003 AS k", payload.toString())
                .selectExpr("k", "p", "row_number() OVER (PARTITION BY k ORDER BY p) AS rn");
        Dataset<Row> groups = ranked
                .selectExpr("k % 1000 AS g", "(xxhash64(p) % 1000000) * rn AS h")
                .groupBy("g")
                .agg(org.apache.spark.sql.functions.count("*").as("n"),
                        org.apache.spark.sql.functions.sum("h").as("s"));
        List<String> out = new ArrayList<>();
        for (Row r : groups.collectAsList()) {
            out.add(r.getLong(0) + "," + r.getLong(1) + "," + r.getLong(2));
        }
        out.sort(null);
        lines.add("sql-big rows " + rows + " " + digest(out));
    }

    static void big(JavaSparkContext sc, List<String> lines, int mib) throws Exception {
        int maps = 8;
        long perMap = (long) mib * (1 << 20) / maps / 1000;
        JavaPairRDD<Integer, byte[]> data = sc.parallelize(range(0, maps), maps).flatMapToPair(m -> {
            Random r = new Random(m);
            List<Tuple2<Integer, byte[]>> out = new ArrayList<>();
            Iterator<Tuple2<Integer, byte[]>> it = new Iterator<Tuple2<Integer, byte[]>>() {
                long i = 0;

                @Override
                public boolean hasNext() {
                    return i < perMap;
                }

                @Override
                public Tuple2<Integer, byte[]> next() {
                    byte[] v = new byte[1000];
                    r.nextBytes(v);
                    i++;
                    return new Tuple2<>(r.nextInt(100_000), v);
                }
            };
            return it;
        });
        lines.add("big " + digest(sortedStrings(
                data.mapValues(ShuffleJobs::checksum)
                        .reduceByKey(Long::sum, 16)
                        .mapPartitions(it -> {
                            long n = 0;
                            long sum = 0;
                            while (it.hasNext()) {
                                Tuple2<Integer, Long> t = it.next();
                                n++;
                                sum += t._2() ^ t._1();
                            }
                            return Arrays.asList(n + ":" + sum).iterator();
                        }))));
        lines.add("big-raw " + data.partitionBy(new org.apache.spark.HashPartitioner(16))
                .map(t -> checksum(t._2()) ^ t._1())
                .reduce(Long::sum));
    }

    static void heavy(JavaSparkContext sc, List<String> lines, int mib) {
        int maps = 8;
        long perMap = (long) mib * (1 << 20) / maps / 1000;
        JavaPairRDD<Integer, byte[]> data = sc.parallelize(range(0, maps), maps).flatMapToPair(m -> {
            return new Iterator<Tuple2<Integer, byte[]>>() {
                long i = 0;
                long x = 0x9E3779B97F4A7C15L * (m + 1);

                @Override
                public boolean hasNext() {
                    return i < perMap;
                }

                @Override
                public Tuple2<Integer, byte[]> next() {
                    byte[] v = new byte[1000];
                    for (int j = 0; j < 500; j += 8) {
                        x ^= x << 13;
                        x ^= x >>> 7;
                        x ^= x << 17;
                        for (int b = 0; b < 8 && j + b < 500; b++) {
                            v[j + b] = (byte) (x >>> (8 * b));
                        }
                    }
                    i++;
                    return new Tuple2<>((int) (x & 0x7FFFFFFF), v);
                }
            };
        });
        List<Long> perPartition = data.partitionBy(new org.apache.spark.HashPartitioner(8))
                .mapPartitions(it -> {
                    long n = 0;
                    long sum = 0;
                    while (it.hasNext()) {
                        Tuple2<Integer, byte[]> t = it.next();
                        n++;
                        sum += t._1() + t._2()[0] + t._2()[499];
                    }
                    return Arrays.asList(n, sum).iterator();
                })
                .collect();
        lines.add("heavy " + perPartition);
    }

    static void failedAttempt(JavaSparkContext sc, List<String> lines) throws Exception {
        lines.add("failed-attempt " + digest(sortedStrings(
                sc.parallelize(range(0, 40_000), 6)
                        .mapPartitionsWithIndex((idx, it) -> {
                            TaskContext task = TaskContext.get();
                            if (idx == 0 && task.attemptNumber() == 0) {
                                // Fails the attempt once its output is written and sealed.
                                task.addTaskCompletionListener(new TaskCompletionListener() {
                                    @Override
                                    public void onTaskCompletion(TaskContext context) {
                                        throw new IllegalStateException(
                                                "TERRACE-E2E attempt 0 of map 0 fails after writing its output");
                                    }
                                });
                            }
                            return it;
                        }, true)
                        .mapToPair(i -> new Tuple2<>(i % 777, (long) i))
                        .reduceByKey(Long::sum, 9)
                        .map(t -> t._1() + "=" + t._2()))));
    }

    static JavaPairRDD<Integer, Long> sixMapsEightReducers(JavaSparkContext sc) {
        return sc.parallelize(range(0, 300_000), 6)
                .mapToPair(i -> new Tuple2<>(i % 1013, (long) i))
                .reduceByKey(Long::sum, 8);
    }

    static void twoJobs(JavaSparkContext sc, List<String> lines, Path gate) throws Exception {
        JavaPairRDD<Integer, Long> reduced = sixMapsEightReducers(sc);
        lines.add("count " + reduced.count());
        System.out.println("TERRACE-E2E first job done");
        while (!Files.exists(gate)) {
            Thread.sleep(100);
        }
        lines.add("two-jobs " + digest(sortedStrings(reduced.map(t -> t._1() + "=" + t._2()))));
    }

    static void reduceGate(JavaSparkContext sc, List<String> lines, Path gate) throws Exception {
        JavaPairRDD<Integer, Long> shuffled = sc.parallelize(range(0, 300_000), 6)
                .mapToPair(i -> new Tuple2<>(i % 1013, (long) i))
                .partitionBy(new org.apache.spark.HashPartitioner(8));
        lines.add("reduce-gate " + sumsAfterGate(shuffled, gate));
    }

    static void speculation(JavaSparkContext sc, List<String> lines, Path gate) throws Exception {
        JavaPairRDD<Integer, Long> shuffled = sc.parallelize(range(0, 400_000), 4)
                .mapPartitionsWithIndex((idx, it) -> {
                    TaskContext task = TaskContext.get();
                    boolean speculation =
                            org.apache.spark.SparkEnv.get().conf().getBoolean("spark.speculation", false);
                    if (idx != 0 || task.attemptNumber() != 0 || !speculation) {
                        return it; // without speculation (the sort-shuffle control) nothing stalls
                    }
                    System.err.println("TERRACE-E2E map 0 attempt 0 (task " + task.taskAttemptId()
                            + ") stalls half-way");
                    return new StallHalfWay<>(it, 50_000);
                }, true)
                .mapToPair(i -> new Tuple2<>(i % 1013, (long) i))
                .partitionBy(new org.apache.spark.HashPartitioner(8));
        lines.add("speculation " + sumsAfterGate(shuffled, gate));
    }

    /**
     * Yields {@code half} elements, then waits until its task is killed (at most two minutes, then
     * it goes on): the slow task speculation starts a copy of.
     */
    static final class StallHalfWay<T> implements Iterator<T> {
        private final Iterator<T> inner;
        private long left;

        StallHalfWay(Iterator<T> inner, long half) {
            this.inner = inner;
            this.left = half;
        }

        @Override
        public boolean hasNext() {
            if (left-- == 0) {
                long until = System.nanoTime() + 120_000_000_000L;
                TaskContext task = TaskContext.get();
                while (!task.isInterrupted() && System.nanoTime() < until) {
                    try {
                        Thread.sleep(50);
                    } catch (InterruptedException e) {
                        Thread.currentThread().interrupt();
                        throw new IllegalStateException("TERRACE-E2E stalled attempt interrupted", e);
                    }
                }
                task.killTaskIfInterrupted();
            }
            return inner.hasNext();
        }

        @Override
        public T next() {
            return inner.next();
        }
    }

    /**
     * Per reduce partition, the sums of the values of each key, taken once file {@code gate}
     * exists: partitionBy has no aggregator, so a reduce task reads only as this consumes its
     * iterator, after the gate.
     */
    private static String sumsAfterGate(JavaPairRDD<Integer, Long> shuffled, Path gate)
            throws Exception {
        String gatePath = gate.toString();
        return digest(sortedStrings(shuffled.mapPartitions(it -> {
            Path g = Paths.get(gatePath);
            while (!Files.exists(g)) {
                Thread.sleep(100);
            }
            java.util.TreeMap<Integer, Long> sums = new java.util.TreeMap<>();
            while (it.hasNext()) {
                Tuple2<Integer, Long> t = it.next();
                sums.merge(t._1(), t._2(), Long::sum);
            }
            List<String> out = new ArrayList<>();
            sums.forEach((k, v) -> out.add(k + "=" + v));
            return out.iterator();
        })));
    }
}

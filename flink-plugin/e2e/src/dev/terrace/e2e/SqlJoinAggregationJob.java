package dev.terrace.e2e;

import org.apache.flink.api.common.RuntimeExecutionMode;
import org.apache.flink.configuration.Configuration;
import org.apache.flink.streaming.api.environment.StreamExecutionEnvironment;
import org.apache.flink.table.api.EnvironmentSettings;
import org.apache.flink.table.api.StatementSet;
import org.apache.flink.table.api.bridge.java.StreamTableEnvironment;

import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.Paths;
import java.util.ArrayList;
import java.util.Collections;
import java.util.List;
import java.util.Map;
import java.util.TreeMap;
import java.util.stream.Collectors;
import java.util.stream.Stream;

/**
 * A multi-stage Flink SQL batch job: a broadcast join, a shuffled hash join and group-by
 * aggregations over generated tables, for measuring a shuffle tier under the Table planner.
 *
 * <p>Tables, generated deterministically from number sequences ({@code fromSequence}):
 *
 * <ul>
 *   <li>{@code orders} ({@code numRecords} rows): customer {@code id * 7919 mod C}, product
 *       {@code (id * 104729 + 17) mod P}, quantity {@code 1 + id mod 7}, and a note of {@code
 *       noteChars} characters of log text starting at {@code id mod 97};
 *   <li>{@code products} (P = {@code job.products}, default 1,000 rows): category, price;
 *   <li>{@code customers} (C = {@code job.customers}, default 200,000 rows): region, segment, and a
 *       position in the note.
 * </ul>
 *
 * <p>{@code enriched} joins orders with products under a {@code BROADCAST} hint (products sent to
 * every subtask) and then with customers under a {@code SHUFFLE_HASH} hint (both sides
 * hash-partitioned on the customer, customers the build side; the planner partitions the orders
 * before the broadcast join, so that its output needs no second shuffle). Its {@code flagged}
 * column reads the order's note at the customer's position, so the notes cross the shuffle. Two
 * aggregations read it in one job: revenue per (region, category), and spend per customer, then
 * customers per (segment, band of spend). Each runs its own copy of the joins, but over the same
 * shuffled orders and customers (the planner reuses those exchanges, so each of their partitions is
 * read twice). The job checks that the optimized plan has both join strategies (without the hints
 * the planner picks two shuffled hash joins), and checks every result row against the same figures
 * computed in plain Java; the sorted rows are the result, so runs with different shuffle
 * implementations can be compared with {@code cmp}.
 *
 * <p>Usage: {@code SqlJoinAggregationJob <parallelism> <numRecords> <noteChars> <outputFile>
 * [key=value ...]}; extra key=value pairs go into the Flink configuration, as for {@link
 * KeyedAggregationJob}, except {@code job.*} keys.
 */
public final class SqlJoinAggregationJob {

    private static final int NOTE_STARTS = 97;
    private static final long BAND = 1_000_000L;

    public static void main(String[] args) throws Exception {
        if (args.length < 4) {
            System.err.println(
                    "usage: SqlJoinAggregationJob <parallelism> <numRecords> <noteChars> <outputFile> [key=value ...]");
            System.exit(2);
        }
        final int parallelism = Integer.parseInt(args[0]);
        final long numOrders = Long.parseLong(args[1]);
        final int noteChars = Integer.parseInt(args[2]);
        final Path output = Paths.get(args[3]);
        Map<String, String> extra = JobSupport.keyValues(args, 4);
        final int numProducts = Integer.parseInt(extra.getOrDefault("job.products", "1000"));
        final int numCustomers = Integer.parseInt(extra.getOrDefault("job.customers", "200000"));
        if (noteChars < 4 || noteChars > 8192) {
            throw new IllegalArgumentException("noteChars must be in [4, 8192], not " + noteChars);
        }
        // Log text without newlines: the notes are substrings of it.
        final String noteSource =
                new String(CompressibleRecords.pool(), StandardCharsets.US_ASCII)
                        .substring(0, NOTE_STARTS + noteChars)
                        .replace('\n', ' ');

        Configuration conf = new Configuration();
        conf.setString("execution.runtime-mode", "BATCH");
        // Every vertex at the job's parallelism, as in the other jobs, rather than what the
        // adaptive batch scheduler derives from data volumes (1 for most vertices at small
        // sizes, and a MiniCluster with that many slots).
        conf.setString("execution.batch.adaptive.auto-parallelism.enabled", "false");
        for (Map.Entry<String, String> e : extra.entrySet()) {
            if (!e.getKey().startsWith("job.")) {
                conf.setString(e.getKey(), e.getValue());
            }
        }
        System.out.println("flink config overrides: " + extra);

        StreamExecutionEnvironment env =
                StreamExecutionEnvironment.createLocalEnvironment(parallelism, conf);
        env.setRuntimeMode(RuntimeExecutionMode.BATCH);
        StreamTableEnvironment tEnv =
                StreamTableEnvironment.create(env, EnvironmentSettings.inBatchMode());
        // Every operator at the job's parallelism, joins in the order written, and the join
        // strategies from the hints below (the generated tables have no statistics anyway).
        tEnv.getConfig().set("table.exec.resource.default-parallelism", String.valueOf(parallelism));
        tEnv.getConfig().set("table.optimizer.join-reorder-enabled", "false");

        tEnv.createTemporaryView(
                "order_seq", tEnv.fromDataStream(env.fromSequence(0, numOrders - 1)).as("id"));
        tEnv.createTemporaryView(
                "product_seq", tEnv.fromDataStream(env.fromSequence(0, numProducts - 1)).as("id"));
        tEnv.createTemporaryView(
                "customer_seq", tEnv.fromDataStream(env.fromSequence(0, numCustomers - 1)).as("id"));
        tEnv.executeSql(
                "CREATE TEMPORARY VIEW orders AS SELECT id AS order_id,"
                        + " CAST(MOD(id * 7919, " + numCustomers + ") AS BIGINT) AS customer_id,"
                        + " CAST(MOD(id * 104729 + 17, " + numProducts + ") AS BIGINT) AS product_id,"
                        + " CAST(1 + MOD(id, 7) AS BIGINT) AS quantity,"
                        + " SUBSTRING('" + noteSource + "', CAST(1 + MOD(id, " + NOTE_STARTS
                        + ") AS INT), " + noteChars + ") AS note"
                        + " FROM order_seq");
        tEnv.executeSql(
                "CREATE TEMPORARY VIEW products AS SELECT id AS product_id,"
                        + " CONCAT('category-', CAST(MOD(id * 31, 25) AS STRING)) AS category,"
                        + " CAST(100 + MOD(id * 7717, 90000) AS BIGINT) AS price_cents"
                        + " FROM product_seq");
        tEnv.executeSql(
                "CREATE TEMPORARY VIEW customers AS SELECT id AS customer_id,"
                        + " CONCAT('region-', CAST(MOD(id * 13, 12) AS STRING)) AS region,"
                        + " CONCAT('segment-', CAST(MOD(id, 5) AS STRING)) AS segment,"
                        + " CAST(1 + MOD(id * 31, " + (noteChars - 3) + ") AS INT) AS pos"
                        + " FROM customer_seq");
        tEnv.executeSql(
                "CREATE TEMPORARY VIEW enriched AS"
                        + " SELECT /*+ BROADCAST(products), SHUFFLE_HASH(customers) */"
                        + " orders.customer_id, orders.quantity * products.price_cents AS revenue,"
                        + " orders.quantity, products.category, customers.region, customers.segment,"
                        + " CAST(CASE WHEN SUBSTRING(orders.note, customers.pos, 1) BETWEEN '0' AND '9'"
                        + " THEN 1 ELSE 0 END AS BIGINT) AS flagged"
                        + " FROM orders"
                        + " JOIN products ON orders.product_id = products.product_id"
                        + " JOIN customers ON orders.customer_id = customers.customer_id");

        Path results = Paths.get(output.toString() + ".parts");
        JobSupport.deleteRecursively(results);
        Files.createDirectories(results);
        tEnv.executeSql(
                "CREATE TEMPORARY TABLE region_category (region STRING, category STRING,"
                        + " orders BIGINT, quantity BIGINT, revenue BIGINT, flagged BIGINT)"
                        + " WITH ('connector' = 'filesystem', 'format' = 'csv', 'path' = '"
                        + results.resolve("region_category").toUri() + "')");
        tEnv.executeSql(
                "CREATE TEMPORARY TABLE spend_band (segment STRING, band BIGINT, customers BIGINT,"
                        + " spend BIGINT, orders BIGINT, flagged BIGINT)"
                        + " WITH ('connector' = 'filesystem', 'format' = 'csv', 'path' = '"
                        + results.resolve("spend_band").toUri() + "')");
        StatementSet statements = tEnv.createStatementSet();
        statements.addInsertSql(
                "INSERT INTO region_category SELECT region, category, COUNT(*), SUM(quantity),"
                        + " SUM(revenue), SUM(flagged) FROM enriched GROUP BY region, category");
        statements.addInsertSql(
                "INSERT INTO spend_band SELECT segment, spend - MOD(spend, " + BAND + "), COUNT(*),"
                        + " SUM(spend), SUM(orders), SUM(flagged) FROM ("
                        + " SELECT customer_id, segment, SUM(revenue) AS spend, COUNT(*) AS orders,"
                        + " SUM(flagged) AS flagged FROM enriched GROUP BY customer_id, segment)"
                        + " GROUP BY segment, spend - MOD(spend, " + BAND + ")");

        String plan = statements.explain();
        System.out.println(plan);
        checkPlan(plan);

        long start = System.nanoTime();
        statements.execute().await();
        double seconds = (System.nanoTime() - start) / 1e9;

        List<String> rows = new ArrayList<>();
        rows.addAll(readCsv(results.resolve("region_category"), "region_category,"));
        rows.addAll(readCsv(results.resolve("spend_band"), "spend_band,"));
        JobSupport.deleteRecursively(results);
        Collections.sort(rows);
        List<String> expected =
                expected(numOrders, numProducts, numCustomers, noteChars, noteSource);
        Files.write(output, rows, StandardCharsets.UTF_8);
        System.out.printf("result: %d rows (expected %d) -> %s%n", rows.size(), expected.size(), output);
        System.out.printf(
                "wall time: %.2f s (job execution), %d orders x %d note chars, parallelism %d%n",
                seconds, numOrders, noteChars, parallelism);
        if (!rows.equals(expected)) {
            List<String> missing = new ArrayList<>(expected);
            missing.removeAll(rows);
            List<String> unexpected = new ArrayList<>(rows);
            unexpected.removeAll(expected);
            System.err.println(
                    "ERROR: result differs from the plain-Java figures; missing "
                            + missing.subList(0, Math.min(5, missing.size()))
                            + ", unexpected "
                            + unexpected.subList(0, Math.min(5, unexpected.size())));
            System.exit(1);
        }
    }

    /**
     * Fails unless the optimized physical plan joins with a broadcast hash join and with a hash
     * join over hash-partitioned inputs (the hints can be dropped silently by the planner).
     */
    static void checkPlan(String plan) {
        int at = plan.indexOf("== Optimized Physical Plan ==");
        int end = plan.indexOf("== Optimized Execution Plan ==");
        String physical = at < 0 ? plan : plan.substring(at, end < at ? plan.length() : end);
        List<String> joins =
                physical.lines().filter(l -> l.contains("HashJoin(")).collect(Collectors.toList());
        boolean broadcast = joins.stream().anyMatch(l -> l.contains("isBroadcast=[true]"));
        boolean shuffled = joins.stream().anyMatch(l -> !l.contains("isBroadcast=[true]"));
        boolean hashExchange = physical.contains("Exchange(distribution=[hash[customer_id");
        boolean broadcastExchange = physical.contains("Exchange(distribution=[broadcast])");
        if (!(broadcast && shuffled && hashExchange && broadcastExchange)) {
            throw new IllegalStateException(
                    "the plan lacks a broadcast hash join or a shuffled hash join: " + joins);
        }
    }

    /** The rows of the CSV files under {@code dir} (Flink's hidden staging files skipped). */
    static List<String> readCsv(Path dir, String prefix) throws IOException {
        List<String> rows = new ArrayList<>();
        try (Stream<Path> files = Files.walk(dir)) {
            for (Path f : (Iterable<Path>) files::iterator) {
                String name = f.getFileName().toString();
                if (Files.isRegularFile(f) && !name.startsWith(".") && !name.startsWith("_")) {
                    for (String l : Files.readAllLines(f, StandardCharsets.UTF_8)) {
                        if (!l.isEmpty()) {
                            rows.add(prefix + l);
                        }
                    }
                }
            }
        }
        return rows;
    }

    /** The job's result computed in plain Java from the same definitions, sorted. */
    static List<String> expected(
            long numOrders, int numProducts, int numCustomers, int noteChars, String noteSource) {
        long[] price = new long[numProducts];
        String[] category = new String[numProducts];
        for (int p = 0; p < numProducts; p++) {
            price[p] = 100 + Math.floorMod(p * 7717L, 90000L);
            category[p] = "category-" + Math.floorMod(p * 31L, 25L);
        }
        int[] pos = new int[numCustomers];
        long[] spend = new long[numCustomers];
        long[] orders = new long[numCustomers];
        long[] flaggedOf = new long[numCustomers];
        for (int c = 0; c < numCustomers; c++) {
            pos[c] = (int) (1 + Math.floorMod(c * 31L, (long) (noteChars - 3)));
        }
        // region,category -> {orders, quantity, revenue, flagged}
        Map<String, long[]> byRegionCategory = new TreeMap<>();
        for (long id = 0; id < numOrders; id++) {
            int c = (int) Math.floorMod(id * 7919, (long) numCustomers);
            int p = (int) Math.floorMod(id * 104729 + 17, (long) numProducts);
            long quantity = 1 + id % 7;
            long revenue = quantity * price[p];
            char at = noteSource.charAt((int) (id % NOTE_STARTS) + pos[c] - 1);
            long flagged = at >= '0' && at <= '9' ? 1 : 0;
            long[] a =
                    byRegionCategory.computeIfAbsent(
                            region(c) + "," + category[p], k -> new long[4]);
            a[0]++;
            a[1] += quantity;
            a[2] += revenue;
            a[3] += flagged;
            spend[c] += revenue;
            orders[c]++;
            flaggedOf[c] += flagged;
        }
        // segment,band -> {customers, spend, orders, flagged}
        Map<String, long[]> bySegmentBand = new TreeMap<>();
        for (int c = 0; c < numCustomers; c++) {
            if (orders[c] == 0) {
                continue; // no order joins it
            }
            long[] a =
                    bySegmentBand.computeIfAbsent(
                            "segment-" + (c % 5) + "," + (spend[c] - spend[c] % BAND),
                            k -> new long[4]);
            a[0]++;
            a[1] += spend[c];
            a[2] += orders[c];
            a[3] += flaggedOf[c];
        }
        List<String> rows = new ArrayList<>();
        byRegionCategory.forEach((k, a) -> rows.add("region_category," + k + "," + join(a)));
        bySegmentBand.forEach((k, a) -> rows.add("spend_band," + k + "," + join(a)));
        Collections.sort(rows);
        return rows;
    }

    private static String region(int c) {
        return "region-" + Math.floorMod(c * 13L, 12L);
    }

    private static String join(long[] a) {
        StringBuilder sb = new StringBuilder();
        for (int i = 0; i < a.length; i++) {
            sb.append(i == 0 ? "" : ",").append(a[i]);
        }
        return sb.toString();
    }

    private SqlJoinAggregationJob() {}
}

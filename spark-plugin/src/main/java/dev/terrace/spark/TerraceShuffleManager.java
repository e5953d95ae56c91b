package dev.terrace.spark;

import dev.terrace.bridge.NativeBridge;
import dev.terrace.bridge.NativeBridgeCalls;
import dev.terrace.bridge.TerraceNativeException;

import org.apache.spark.ShuffleDependency;
import org.apache.spark.SparkConf;
import org.apache.spark.SparkContext;
import org.apache.spark.SparkContext$;
import org.apache.spark.TaskContext;
import org.apache.spark.shuffle.ShuffleBlockResolver;
import org.apache.spark.shuffle.ShuffleHandle;
import org.apache.spark.shuffle.ShuffleManager;
import org.apache.spark.shuffle.ShuffleReadMetricsReporter;
import org.apache.spark.shuffle.ShuffleReader;
import org.apache.spark.shuffle.ShuffleWriteMetricsReporter;
import org.apache.spark.shuffle.ShuffleWriter;
import org.apache.spark.shuffle.sort.SortShuffleManager;
import org.slf4j.Logger;
import org.slf4j.LoggerFactory;

import scala.Option;

import java.security.SecureRandom;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.concurrent.ConcurrentHashMap;

/**
 * Terrace's Spark shuffle manager ({@code spark.shuffle.manager=dev.terrace.spark.TerraceShuffleManager}
 * on Spark 3.5 to 4.2; {@code dev.terrace.spark.TerraceBlockingShuffleManager} on 4.3 and later).
 *
 * <p>Driver: every shuffle is a Terrace job, registered with the masters at {@link
 * #registerShuffle} (the driver alone holds the cluster secret, when there is one) and dropped
 * with its data at {@link #unregisterShuffle} or when the application stops; a driver that dies
 * leaves it to the masters' job lease. Executors: each map task attempt places its own partition
 * with the job's token (in the handle) and writes it ({@link TerraceShuffleWriter}); reduce tasks
 * read it back ({@link TerraceShuffleReader}).
 */
public class TerraceShuffleManager implements ShuffleManager {
    private static final Logger LOG = LoggerFactory.getLogger(TerraceShuffleManager.class);

    /** The DataIO plug-in that tells Spark shuffle data outlives executors. */
    static final String DATA_IO_KEY = "spark.shuffle.sort.io.plugin.class";

    private final SparkConf conf;
    private final boolean isDriver;
    private final SparkTerraceConfig config;
    /** Distinguishes this run's jobs from any other run's (application ids can repeat). */
    private final String appRun;

    /** Driver: the master agent, opened at the first shuffle. */
    private long master;
    /** Set by {@link #stop}: no agent opens after it. */
    private boolean stopped;
    /** Driver: the Terrace job of each registered shuffle. */
    private final Map<Integer, byte[]> jobs = new ConcurrentHashMap<>();
    /** Driver: releases the partitions of map attempts Spark did not register. */
    private LosingAttempts losingAttempts;
    /** Executors: the placer of each shuffle this process has written. */
    private final Map<Integer, Long> placers = new ConcurrentHashMap<>();
    /** Lazily built: only for {@link #shuffleBlockResolver()}. */
    private volatile SortShuffleManager resolverOwner;

    public TerraceShuffleManager(SparkConf conf, boolean isDriver) {
        this.conf = conf;
        this.isDriver = isDriver;
        this.config = new SparkTerraceConfig(conf, isDriver);
        byte[] run = new byte[8];
        new SecureRandom().nextBytes(run);
        this.appRun = conf.get("spark.app.id", "app") + "/" + MapOutputs.hex(run);
        if (isDriver && !conf.contains(DATA_IO_KEY)) {
            // Map outputs live on Terrace, not on executors: with this plug-in Spark's dynamic
            // allocation may remove executors without an external shuffle service.
            conf.set(DATA_IO_KEY, TerraceShuffleDataIO.class.getName());
        }
        if (conf.getBoolean("spark.shuffle.useOldFetchProtocol", false)) {
            // Map ids are then map indices, the same for every attempt of a map task: Terrace
            // keeps one partition per attempt and tells them apart by the task attempt id.
            throw new IllegalArgumentException(
                    "Terrace needs Spark's map ids to be task attempt ids: set"
                            + " spark.shuffle.useOldFetchProtocol=false");
        }
        if (conf.getBoolean("spark.shuffle.push.enabled", false)) {
            throw new IllegalArgumentException(
                    "Terrace does not take Spark's push-based shuffle: set spark.shuffle.push.enabled=false");
        }
        config.ensureNativeLoaded();
    }

    @Override
    public <K, V, C> ShuffleHandle registerShuffle(int shuffleId, ShuffleDependency<K, V, C> dependency) {
        byte[] job = MapOutputs.jobId(appRun, shuffleId);
        try {
            long agent = master();
            NativeBridge.masterRegisterJob(agent, job);
            jobs.put(shuffleId, job);
            String token = NativeBridge.masterJobToken(agent, job);
            watchAttempts();
            LOG.info("shuffle {} is Terrace job {}", shuffleId, MapOutputs.hex(job));
            return new TerraceShuffleHandle<>(shuffleId, dependency, MapOutputs.hex(job), token);
        } catch (TerraceNativeException e) {
            throw new IllegalStateException("register shuffle " + shuffleId + " with Terrace", e);
        }
    }

    /**
     * Listens for map task attempts that end without their output registered (at the first
     * shuffle: the application's context is running by then).
     */
    private synchronized void watchAttempts() {
        if (losingAttempts != null) {
            return;
        }
        Option<SparkContext> context = SparkContext$.MODULE$.getActive();
        if (context.isEmpty()) {
            LOG.warn("no active SparkContext: failed map attempts' partitions stay until their shuffle ends");
            return;
        }
        losingAttempts =
                new LosingAttempts(
                        new LosingAttempts.Jobs() {
                            @Override
                            public byte[] job(int shuffleId) {
                                return jobs.get(shuffleId);
                            }

                            @Override
                            public boolean release(byte[] job, byte[] partition)
                                    throws TerraceNativeException {
                                return NativeBridge.masterReleasePlaced(master(), job, partition);
                            }
                        });
        context.get().addSparkListener(losingAttempts);
    }

    private synchronized long master() throws TerraceNativeException {
        if (stopped) {
            throw new IllegalStateException("the Terrace shuffle manager was stopped");
        }
        if (master == 0) {
            master = NativeBridge.masterOpen(config.flat());
        }
        return master;
    }

    @Override
    @SuppressWarnings("unchecked")
    public <K, V> ShuffleWriter<K, V> getWriter(
            ShuffleHandle handle, long mapId, TaskContext context, ShuffleWriteMetricsReporter metrics) {
        TerraceShuffleHandle<K, V, ?> h = (TerraceShuffleHandle<K, V, ?>) handle;
        return new TerraceShuffleWriter<>(
                h, placer(h), mapId, context, metrics, config);
    }

    private long placer(TerraceShuffleHandle<?, ?, ?> handle) {
        return placers.computeIfAbsent(
                handle.shuffleId(),
                id -> {
                    try {
                        return NativeBridge.placerOpen(config.flat(), handle.jobHex, handle.token);
                    } catch (TerraceNativeException e) {
                        throw new IllegalStateException("open a Terrace placer for shuffle " + id, e);
                    }
                });
    }

    @Override
    @SuppressWarnings("unchecked")
    public <K, C> ShuffleReader<K, C> getReader(
            ShuffleHandle handle,
            int startMapIndex,
            int endMapIndex,
            int startPartition,
            int endPartition,
            TaskContext context,
            ShuffleReadMetricsReporter metrics) {
        return new TerraceShuffleReader<>(
                (TerraceShuffleHandle<K, ?, C>) handle,
                startMapIndex,
                endMapIndex,
                startPartition,
                endPartition,
                context,
                metrics,
                config);
    }

    @Override
    public boolean unregisterShuffle(int shuffleId) {
        Long placer = placers.remove(shuffleId);
        if (placer != null) {
            NativeBridgeCalls.quietly(() -> NativeBridge.placerClose(placer));
        }
        byte[] job = jobs.remove(shuffleId);
        if (job != null) {
            long agent = master;
            NativeBridgeCalls.quietly(() -> NativeBridge.masterUnregisterJob(agent, job));
            LOG.info("shuffle {} released (Terrace job {})", shuffleId, MapOutputs.hex(job));
        }
        LosingAttempts watcher = losingAttempts;
        if (watcher != null) {
            watcher.forget(shuffleId);
        }
        return true;
    }

    /**
     * Spark asks for a resolver only to serve or migrate shuffle files an executor holds; Terrace's
     * executors hold none, so this is an empty sort-shuffle resolver.
     */
    public ShuffleBlockResolver shuffleBlockResolver() {
        SortShuffleManager owner = resolverOwner;
        if (owner == null) {
            synchronized (this) {
                if (resolverOwner == null) {
                    resolverOwner = new SortShuffleManager(conf);
                }
                owner = resolverOwner;
            }
        }
        return owner.shuffleBlockResolver();
    }

    @Override
    public void stop() {
        List<Integer> shuffles = new ArrayList<>(jobs.keySet());
        shuffles.addAll(placers.keySet());
        for (int shuffleId : shuffles) {
            unregisterShuffle(shuffleId);
        }
        synchronized (this) {
            stopped = true;
            if (losingAttempts != null) {
                losingAttempts.stop();
            }
            if (master != 0) {
                long agent = master;
                master = 0;
                NativeBridgeCalls.quietly(() -> NativeBridge.masterClose(agent));
            }
            if (resolverOwner != null) {
                resolverOwner.stop();
            }
        }
    }

    boolean isDriver() {
        return isDriver;
    }
}

package dev.terrace.flink;

import dev.terrace.bridge.NativeBridge;
import dev.terrace.bridge.NativeBridgeCalls;
import dev.terrace.bridge.TerraceNativeException;

import org.apache.flink.api.common.JobID;
import org.apache.flink.runtime.io.network.partition.ResultPartitionID;
import org.apache.flink.runtime.io.network.partition.hybrid.tiered.common.TieredStoragePartitionId;
import org.apache.flink.runtime.io.network.partition.hybrid.tiered.storage.TieredStorageResourceRegistry;
import org.apache.flink.runtime.io.network.partition.hybrid.tiered.tier.TierMasterAgent;
import org.apache.flink.runtime.io.network.partition.hybrid.tiered.tier.TierShuffleDescriptor;
import org.apache.flink.runtime.io.network.partition.hybrid.tiered.tier.TierShuffleHandler;
import org.apache.flink.util.ExceptionUtils;

import org.slf4j.Logger;
import org.slf4j.LoggerFactory;

import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.TimeUnit;

/**
 * JobManager side. Delegates to the Rust master agent. One Java daemon thread waits for
 * lost-partition events and hands them to the job's {@link TierShuffleHandler}, so Flink re-runs
 * the producers. Releases (a partition, or a whole job) run on a background thread so the
 * JobManager's main thread never waits on a worker; {@link #close} drains them first.
 */
class TerraceMasterAgent implements TierMasterAgent {
    private static final Logger LOG = LoggerFactory.getLogger(TerraceMasterAgent.class);

    private static final byte EVENT_LOST_PARTITIONS = 1;
    private static final byte EVENT_FATAL = 2;

    private final TerraceConfig config;
    final long handle;
    /**
     * Flink keeps a job's finished partitions across a JobManager failover
     * ({@code execution.batch.job-recovery.enabled}): a JobMaster that stops may only be losing
     * its leadership, so unregistering a job leaves its data to the next one.
     */
    private final boolean jobRecovery;
    private final Map<JobID, TierShuffleHandler> handlers = new ConcurrentHashMap<>();
    private final Thread eventThread;
    private final ExecutorService releases;
    private volatile boolean closed;

    TerraceMasterAgent(
            TerraceConfig config, TieredStorageResourceRegistry unused, boolean jobRecovery) {
        this.config = config;
        this.jobRecovery = jobRecovery;
        this.handle = call(() -> NativeBridge.masterOpen(config.flat()));
        this.releases =
                Executors.newSingleThreadExecutor(
                        r -> {
                            Thread t = new Thread(r, "terrace-master-agent-releases");
                            t.setDaemon(true);
                            return t;
                        });
        this.eventThread = new Thread(this::eventLoop, "terrace-master-agent-events");
        this.eventThread.setDaemon(true);
        this.eventThread.start();
    }

    @Override
    public void registerJob(JobID jobID, TierShuffleHandler tierShuffleHandler) {
        handlers.put(jobID, tierShuffleHandler);
        run(() -> NativeBridge.masterRegisterJob(handle, jobID.getBytes()));
    }

    @Override
    public void unregisterJob(JobID jobID) {
        handlers.remove(jobID);
        if (jobRecovery) {
            // Flink releases a finished job's partitions one by one before this; what is left
            // goes when the job's lease runs out, unless a new JobManager registers it again.
            run(() -> NativeBridge.masterDetachJob(handle, jobID.getBytes()));
            return;
        }
        background(
                "unregister job " + jobID,
                () -> NativeBridge.masterUnregisterJob(handle, jobID.getBytes()));
    }

    /** Flink 1.20's form (no {@code @Override}: 2.x's interface has only the other one). */
    public TierShuffleDescriptor addPartitionAndGetShuffleDescriptor(
            JobID jobID, ResultPartitionID resultPartitionID) {
        TerraceShuffleDescriptor descriptor =
                TerraceShuffleDescriptor.fromFields(
                        call(
                                () ->
                                        NativeBridge.masterAddPartition(
                                                handle,
                                                jobID.getBytes(),
                                                resultPartitionID.getBytes())));
        onPartitionAdded(jobID, descriptor);
        return descriptor;
    }

    /** A partition was placed for {@code jobID} (for subclasses that snapshot placements). */
    void onPartitionAdded(JobID jobID, TerraceShuffleDescriptor descriptor) {}

    /**
     * Flink 2.x's form (no {@code @Override}: 1.20's interface has only the other one). The
     * worker learns the subpartition count from the producer agent, as on 1.20.
     */
    public TierShuffleDescriptor addPartitionAndGetShuffleDescriptor(
            JobID jobID, int numSubpartitions, ResultPartitionID resultPartitionID) {
        return addPartitionAndGetShuffleDescriptor(jobID, resultPartitionID);
    }

    @Override
    public void releasePartition(TierShuffleDescriptor shuffleDescriptor) {
        if (!(shuffleDescriptor instanceof TerraceShuffleDescriptor)) {
            return;
        }
        TerraceShuffleDescriptor d = (TerraceShuffleDescriptor) shuffleDescriptor;
        background(
                "release " + d,
                () ->
                        NativeBridge.masterReleasePartition(
                                handle,
                                d.getJobIdHex(),
                                d.getPartitionIdHex(),
                                d.getWorkerId(),
                                d.getWorkerAddress(),
                                d.getToken()));
    }

    private void background(String what, NativeBridgeCalls.Run r) {
        if (closed) {
            LOG.warn("Terrace master agent is closed; not running: {}", what);
            return;
        }
        releases.execute(
                () -> {
                    try {
                        r.run();
                    } catch (Throwable t) {
                        LOG.warn("Terrace: failed to {}", what, t);
                    }
                });
    }

    @Override
    public void close() {
        if (closed) {
            return;
        }
        closed = true;
        releases.shutdown();
        try {
            if (!releases.awaitTermination(60, TimeUnit.SECONDS)) {
                LOG.warn("Terrace releases did not finish within 60 s; data may stay on workers");
            }
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
        }
        NativeBridgeCalls.quietly(() -> NativeBridge.masterClose(handle));
        try {
            eventThread.join(10_000);
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
        }
    }

    private void eventLoop() {
        while (!closed) {
            byte[] batch;
            try {
                batch = NativeBridge.masterWaitEvents(handle, config.eventPollIntervalMillis);
            } catch (TerraceNativeException e) {
                if (!closed && e.kind() != TerraceNativeException.Kind.CLOSED) {
                    LOG.error("Terrace master agent event wait failed", e);
                    handlers.values().forEach(h -> h.onFatalError(e));
                }
                return;
            } catch (Throwable t) {
                LOG.error("Terrace master agent event wait failed", t);
                handlers.values().forEach(h -> h.onFatalError(t));
                return;
            }
            if (batch != null) {
                try {
                    dispatch(batch);
                } catch (Throwable t) {
                    LOG.error("Terrace: cannot dispatch master agent events", t);
                }
            }
        }
    }

    private static byte[] bytes16(ByteBuffer b) {
        byte[] out = new byte[b.getShort() & 0xFFFF];
        b.get(out);
        return out;
    }

    /** Decodes a batch from {@link NativeBridge#masterWaitEvents} and calls the handlers. */
    private void dispatch(byte[] batch) {
        ByteBuffer b = ByteBuffer.wrap(batch);
        while (b.hasRemaining()) {
            byte kind = b.get();
            JobID job = new JobID(bytes16(b));
            TierShuffleHandler handler = handlers.get(job);
            if (kind == EVENT_LOST_PARTITIONS) {
                int n = b.getInt();
                List<TieredStoragePartitionId> lost = new ArrayList<>(n);
                for (int i = 0; i < n; i++) {
                    lost.add(new TieredStoragePartitionId(new ResultPartitionID(bytes16(b))));
                }
                if (handler == null) {
                    LOG.debug("Terrace lost {} partitions of finished job {}", n, job);
                    continue;
                }
                // The producers as Flink's execution attempt ids, the form Flink's own task
                // state log uses: one can follow which producers ran again.
                List<String> producers = new ArrayList<>(n);
                for (TieredStoragePartitionId p : lost) {
                    producers.add(
                            p.getPartitionID().getProducerId().toString());
                }
                LOG.warn(
                        "Terrace lost {} partition(s) of job {} with their worker; asking Flink to"
                                + " re-run their producers: {}",
                        n,
                        job,
                        producers);
                handler.onReleasePartitions(lost);
            } else if (kind == EVENT_FATAL) {
                String message = new String(bytes16(b), StandardCharsets.UTF_8);
                if (handler != null) {
                    handler.onFatalError(new IOException("Terrace: " + message));
                }
            } else {
                throw new IllegalStateException("unknown Terrace master event kind " + kind);
            }
        }
    }

    static <T> T call(NativeBridgeCalls.Call<T> c) {
        try {
            return c.call();
        } catch (Exception e) {
            ExceptionUtils.rethrow(e);
            return null; // unreachable
        }
    }

    static void run(NativeBridgeCalls.Run r) {
        try {
            r.run();
        } catch (Exception e) {
            ExceptionUtils.rethrow(e);
        }
    }

    @Override
    public String toString() {
        return "TerraceMasterAgent" + config.terraceKeys;
    }
}

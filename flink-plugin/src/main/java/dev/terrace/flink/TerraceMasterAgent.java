package dev.terrace.flink;

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

import java.nio.ByteBuffer;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.concurrent.ConcurrentHashMap;

/**
 * JobManager side. Delegates to the Rust master agent; one Java daemon thread waits for
 * lost-partition events and hands them to the job's {@link TierShuffleHandler}, so Flink re-runs
 * the producers.
 */
final class TerraceMasterAgent implements TierMasterAgent {
    private static final Logger LOG = LoggerFactory.getLogger(TerraceMasterAgent.class);

    private final TerraceConfig config;
    private final long handle;
    private final Map<JobID, TierShuffleHandler> handlers = new ConcurrentHashMap<>();
    private final Thread eventThread;
    private volatile boolean closed;

    TerraceMasterAgent(TerraceConfig config, TieredStorageResourceRegistry unused) {
        this.config = config;
        this.handle = call(() -> NativeBridge.masterOpen(config.flat()));
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
        run(() -> NativeBridge.masterUnregisterJob(handle, jobID.getBytes()));
    }

    @Override
    public TierShuffleDescriptor addPartitionAndGetShuffleDescriptor(
            JobID jobID, ResultPartitionID resultPartitionID) {
        String worker =
                call(
                        () ->
                                NativeBridge.masterAddPartition(
                                        handle, jobID.getBytes(), resultPartitionID.getBytes()));
        int comma = worker.indexOf(',');
        return TerraceShuffleDescriptor.of(
                jobID,
                resultPartitionID,
                Long.parseLong(worker.substring(0, comma)),
                worker.substring(comma + 1));
    }

    @Override
    public void releasePartition(TierShuffleDescriptor shuffleDescriptor) {
        if (!(shuffleDescriptor instanceof TerraceShuffleDescriptor)) {
            return;
        }
        TerraceShuffleDescriptor d = (TerraceShuffleDescriptor) shuffleDescriptor;
        run(() -> NativeBridge.masterReleasePartition(handle, d.jobIdBytes(), d.partitionIdBytes()));
    }

    @Override
    public void close() {
        if (closed) {
            return;
        }
        closed = true;
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
            } catch (Throwable t) {
                if (!closed) {
                    LOG.error("Terrace master agent event wait failed", t);
                    handlers.values().forEach(h -> h.onFatalError(t));
                }
                return;
            }
            if (batch != null) {
                dispatchLost(batch);
            }
        }
    }

    /** Batch format: repeated [16 bytes jobId][u16 BE len][len bytes ResultPartitionID]. */
    private void dispatchLost(byte[] batch) {
        Map<JobID, List<TieredStoragePartitionId>> byJob = new HashMap<>();
        ByteBuffer b = ByteBuffer.wrap(batch);
        while (b.remaining() >= 18) {
            byte[] job = new byte[16];
            b.get(job);
            byte[] part = new byte[b.getShort() & 0xFFFF];
            b.get(part);
            byJob.computeIfAbsent(new JobID(job), k -> new ArrayList<>())
                    .add(new TieredStoragePartitionId(new ResultPartitionID(part)));
        }
        byJob.forEach(
                (job, parts) -> {
                    TierShuffleHandler h = handlers.get(job);
                    if (h == null) {
                        LOG.debug("lost partitions of unknown job {}: {}", job, parts);
                        return;
                    }
                    LOG.warn("Terrace lost {} partitions of job {}; asking Flink to release them", parts.size(), job);
                    h.onReleasePartitions(parts);
                });
    }

    private static <T> T call(NativeBridgeCalls.Call<T> c) {
        try {
            return c.call();
        } catch (Exception e) {
            ExceptionUtils.rethrow(e);
            return null; // unreachable
        }
    }

    private static void run(NativeBridgeCalls.Run r) {
        try {
            r.run();
        } catch (Exception e) {
            ExceptionUtils.rethrow(e);
        }
    }

    @Override
    public String toString() {
        return "TerraceMasterAgent" + Arrays.asList(config.terraceKeys);
    }
}

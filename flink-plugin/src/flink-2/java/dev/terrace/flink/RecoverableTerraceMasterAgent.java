package dev.terrace.flink;

import dev.terrace.bridge.NativeBridge;

import org.apache.flink.api.common.JobID;
import org.apache.flink.runtime.executiongraph.ResultPartitionBytes;
import org.apache.flink.runtime.io.network.partition.ResultPartitionID;
import org.apache.flink.runtime.io.network.partition.hybrid.tiered.shuffle.TieredShuffleMasterSnapshot;
import org.apache.flink.runtime.io.network.partition.hybrid.tiered.storage.TieredStorageResourceRegistry;
import org.apache.flink.runtime.shuffle.DefaultShuffleMetrics;
import org.apache.flink.runtime.shuffle.ShuffleMasterSnapshotContext;
import org.apache.flink.runtime.shuffle.ShuffleMetrics;

import org.slf4j.Logger;
import org.slf4j.LoggerFactory;

import java.nio.ByteBuffer;
import java.time.Duration;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.Set;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.ConcurrentHashMap;

/**
 * The 2.x master agent: what Flink's batch job recovery needs to reuse finished partitions after
 * a JobManager failover instead of re-running their producers.
 *
 * <ul>
 *   <li>{@link #partitionInRemote()}: the partitions live on Terrace workers, not on
 *       TaskManagers, so Flink asks this agent about them.
 *   <li>{@link #snapshotState(CompletableFuture, ShuffleMasterSnapshotContext, JobID)}: the
 *       partitions placed for the job since its last snapshot (Flink keeps every snapshot in its
 *       job events and hands them all back in order); {@link #restoreState(
 *       TieredShuffleMasterSnapshot, JobID)} tracks them again, so the new agent reports their
 *       loss and can find them.
 *   <li>{@link #getPartitionWithMetrics}: asks the workers which of the expected partitions are
 *       finished (every part sealed) and their stored bytes per subpartition; Flink re-runs the
 *       producers of those left out.
 * </ul>
 */
final class RecoverableTerraceMasterAgent extends TerraceMasterAgent {
    private static final Logger LOG = LoggerFactory.getLogger(RecoverableTerraceMasterAgent.class);

    /** Placements per job since its last snapshot. */
    private final Map<JobID, List<TerraceShuffleDescriptor>> unsnapshotted =
            new ConcurrentHashMap<>();

    RecoverableTerraceMasterAgent(
            TerraceConfig config, TieredStorageResourceRegistry registry, boolean jobRecovery) {
        super(config, registry, jobRecovery);
    }

    @Override
    void onPartitionAdded(JobID jobID, TerraceShuffleDescriptor descriptor) {
        unsnapshotted.compute(
                jobID,
                (j, list) -> {
                    List<TerraceShuffleDescriptor> placed = list == null ? new ArrayList<>() : list;
                    placed.add(descriptor);
                    return placed;
                });
    }

    @Override
    public void unregisterJob(JobID jobID) {
        unsnapshotted.remove(jobID);
        super.unregisterJob(jobID);
    }

    @Override
    public boolean partitionInRemote() {
        return true;
    }

    @Override
    public void snapshotState(
            CompletableFuture<TieredShuffleMasterSnapshot> snapshotFuture,
            ShuffleMasterSnapshotContext context,
            JobID jobId) {
        List<TerraceShuffleDescriptor> placed = new ArrayList<>();
        unsnapshotted.computeIfPresent(
                jobId,
                (j, list) -> {
                    placed.addAll(list);
                    return new ArrayList<>();
                });
        snapshotFuture.complete(new TerraceMasterSnapshot(placed));
    }

    @Override
    public void snapshotState(CompletableFuture<TieredShuffleMasterSnapshot> snapshotFuture) {
        // Nothing is kept across jobs: a cluster-level snapshot is empty.
        snapshotFuture.complete(new TerraceMasterSnapshot(new ArrayList<>()));
    }

    @Override
    public void restoreState(TieredShuffleMasterSnapshot snapshot, JobID jobId) {
        if (!(snapshot instanceof TerraceMasterSnapshot)) {
            return; // a tier that took no snapshot yet
        }
        List<TerraceShuffleDescriptor> placed = ((TerraceMasterSnapshot) snapshot).placed;
        if (placed.isEmpty()) {
            return;
        }
        List<String> fields = new ArrayList<>(placed.size() * 5);
        for (TerraceShuffleDescriptor d : placed) {
            fields.addAll(Arrays.asList(d.fields()));
        }
        run(
                () ->
                        NativeBridge.masterRestorePartitions(
                                handle, jobId.getBytes(), fields.toArray(new String[0])));
        LOG.info("Terrace: restored {} partition(s) of job {}", placed.size(), jobId);
    }

    @Override
    public void restoreState(TieredShuffleMasterSnapshot snapshot) {}

    @Override
    public CompletableFuture<Map<ResultPartitionID, ShuffleMetrics>> getPartitionWithMetrics(
            JobID jobId, Duration timeout, Set<ResultPartitionID> expectedPartitions) {
        Map<ByteBuffer, ResultPartitionID> byBytes = new HashMap<>();
        byte[][] ids = new byte[expectedPartitions.size()][];
        int i = 0;
        for (ResultPartitionID id : expectedPartitions) {
            ids[i++] = id.getBytes();
            byBytes.put(ByteBuffer.wrap(id.getBytes()), id);
        }
        return CompletableFuture.supplyAsync(
                () -> {
                    byte[] encoded =
                            call(
                                    () ->
                                            NativeBridge.masterPartitionMetrics(
                                                    handle,
                                                    jobId.getBytes(),
                                                    ids,
                                                    timeout.toMillis()));
                    Map<ResultPartitionID, ShuffleMetrics> out = new HashMap<>();
                    ByteBuffer b = ByteBuffer.wrap(encoded);
                    while (b.hasRemaining()) {
                        byte[] id = new byte[b.getShort() & 0xFFFF];
                        b.get(id);
                        long[] bytes = new long[b.getInt()];
                        for (int s = 0; s < bytes.length; s++) {
                            bytes[s] = b.getLong();
                        }
                        ResultPartitionID partition = byBytes.get(ByteBuffer.wrap(id));
                        if (partition != null) {
                            out.put(
                                    partition,
                                    new DefaultShuffleMetrics(new ResultPartitionBytes(bytes)));
                        }
                    }
                    LOG.info(
                            "Terrace: {} of {} expected partition(s) of job {} are finished on"
                                    + " the workers",
                            out.size(),
                            expectedPartitions.size(),
                            jobId);
                    return out;
                });
    }

    /** The partitions placed for a job between two snapshots. */
    static final class TerraceMasterSnapshot implements TieredShuffleMasterSnapshot {
        private static final long serialVersionUID = 1L;

        final List<TerraceShuffleDescriptor> placed;

        TerraceMasterSnapshot(List<TerraceShuffleDescriptor> placed) {
            this.placed = placed;
        }
    }
}

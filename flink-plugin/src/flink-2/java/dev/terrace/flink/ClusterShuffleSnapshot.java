package dev.terrace.flink;

import org.apache.flink.configuration.Configuration;
import org.apache.flink.core.fs.FSDataOutputStream;
import org.apache.flink.core.fs.FileSystem;
import org.apache.flink.core.fs.Path;
import org.apache.flink.runtime.highavailability.HighAvailabilityServicesUtils;
import org.apache.flink.runtime.io.network.partition.hybrid.tiered.shuffle.AllTieredShuffleMasterSnapshots;
import org.apache.flink.runtime.io.network.partition.hybrid.tiered.shuffle.TieredInternalShuffleMasterSnapshot;
import org.apache.flink.util.InstantiationUtil;

import org.slf4j.Logger;
import org.slf4j.LoggerFactory;

/**
 * Works around Flink 2.x's Dispatcher start with batch job recovery and an external tier as the
 * only tier: when the cluster has no cluster-level shuffle master snapshot yet (its first start),
 * the Dispatcher calls the shuffle master's {@code restoreState(null)}, which the tiered shuffle
 * master refuses ({@code NettyShuffleMaster.restoreState} checks the snapshot's type), and the
 * Dispatcher fails to start. Before that, the JobManager creates this tier's master agent; it
 * writes the snapshot a fresh cluster would have (no descriptors, no tier snapshots) where Flink
 * reads it, in Flink's own format ({@code ShuffleMasterSnapshotUtil}: a big-endian int length,
 * then the Java-serialized snapshot). A snapshot already there is left alone.
 */
final class ClusterShuffleSnapshot {
    private static final Logger LOG = LoggerFactory.getLogger(ClusterShuffleSnapshot.class);

    /** Where Flink keeps it, under the cluster's high-availability storage path. */
    private static final String DIR = "shuffleMaster-snapshot";

    static void ensure(Configuration conf) {
        String storageDir = conf.toMap().get("high-availability.storageDir");
        if (storageDir == null || storageDir.trim().isEmpty()) {
            return; // Flink's recovery needs it and says so itself
        }
        try {
            String clusterId =
                    conf.toMap().getOrDefault("high-availability.cluster-id", "/default");
            Path dir =
                    new Path(
                            HighAvailabilityServicesUtils.getClusterHighAvailableStoragePath(conf),
                            DIR);
            Path file = new Path(dir, clusterId);
            FileSystem fs = dir.getFileSystem();
            if (fs.exists(file)) {
                return;
            }
            fs.mkdirs(dir);
            byte[] snapshot =
                    InstantiationUtil.serializeObject(
                            new TieredInternalShuffleMasterSnapshot(
                                    null, AllTieredShuffleMasterSnapshots.empty()));
            try (FSDataOutputStream out = fs.create(file, FileSystem.WriteMode.NO_OVERWRITE)) {
                out.write(snapshot.length >>> 24);
                out.write(snapshot.length >>> 16);
                out.write(snapshot.length >>> 8);
                out.write(snapshot.length);
                out.write(snapshot);
            }
            LOG.info(
                    "Terrace: wrote an empty cluster-level shuffle master snapshot at {} (Flink's"
                            + " Dispatcher cannot start without one when job recovery is on)",
                    file);
        } catch (Exception e) {
            LOG.warn(
                    "Terrace: cannot write the cluster-level shuffle master snapshot; Flink's"
                            + " Dispatcher may fail to start with job recovery on",
                    e);
        }
    }

    private ClusterShuffleSnapshot() {}
}

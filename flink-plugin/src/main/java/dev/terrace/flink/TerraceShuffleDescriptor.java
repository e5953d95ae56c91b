package dev.terrace.flink;

import org.apache.flink.api.common.JobID;
import org.apache.flink.runtime.io.network.partition.ResultPartitionID;
import org.apache.flink.runtime.io.network.partition.hybrid.tiered.tier.TierShuffleDescriptor;
import org.apache.flink.util.StringUtils;

import java.util.Objects;

/**
 * Where a partition lives in Terrace. Created by {@link TerraceMasterAgent} on the JobManager,
 * Java-serialized to the TaskManagers inside Flink's NettyShuffleDescriptor. It never changes:
 * splits to other workers are followed by the workers (redirects), not by new descriptors.
 */
public final class TerraceShuffleDescriptor implements TierShuffleDescriptor {
    private static final long serialVersionUID = 1L;

    private final String jobIdHex;
    private final String partitionIdHex;
    private final long workerId;
    private final String workerAddress;

    public TerraceShuffleDescriptor(
            String jobIdHex, String partitionIdHex, long workerId, String workerAddress) {
        this.jobIdHex = Objects.requireNonNull(jobIdHex);
        this.partitionIdHex = Objects.requireNonNull(partitionIdHex);
        this.workerId = workerId;
        this.workerAddress = Objects.requireNonNull(workerAddress);
    }

    public static TerraceShuffleDescriptor of(
            JobID jobId, ResultPartitionID partitionId, long workerId, String workerAddress) {
        return new TerraceShuffleDescriptor(
                jobId.toHexString(),
                StringUtils.byteToHexString(partitionId.getBytes()),
                workerId,
                workerAddress);
    }

    public String getJobIdHex() {
        return jobIdHex;
    }

    public String getPartitionIdHex() {
        return partitionIdHex;
    }

    public long getWorkerId() {
        return workerId;
    }

    public String getWorkerAddress() {
        return workerAddress;
    }

    public byte[] jobIdBytes() {
        return StringUtils.hexStringToByte(jobIdHex);
    }

    public byte[] partitionIdBytes() {
        return StringUtils.hexStringToByte(partitionIdHex);
    }

    @Override
    public boolean equals(Object o) {
        if (!(o instanceof TerraceShuffleDescriptor)) {
            return false;
        }
        TerraceShuffleDescriptor d = (TerraceShuffleDescriptor) o;
        return workerId == d.workerId
                && jobIdHex.equals(d.jobIdHex)
                && partitionIdHex.equals(d.partitionIdHex)
                && workerAddress.equals(d.workerAddress);
    }

    @Override
    public int hashCode() {
        return Objects.hash(jobIdHex, partitionIdHex, workerId, workerAddress);
    }

    @Override
    public String toString() {
        return "TerraceShuffleDescriptor{job="
                + jobIdHex
                + ", partition="
                + partitionIdHex
                + ", worker="
                + workerId
                + "@"
                + workerAddress
                + "}";
    }
}

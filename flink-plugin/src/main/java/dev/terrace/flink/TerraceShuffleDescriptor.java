package dev.terrace.flink;

import dev.terrace.bridge.NativeBridge;

import org.apache.flink.runtime.io.network.partition.hybrid.tiered.tier.TierShuffleDescriptor;

import java.util.Objects;

/**
 * Where a partition lives in Terrace, and the job's token its readers and writers present: five
 * short strings. Created by {@link TerraceMasterAgent}
 * on the JobManager and Java-serialized to the TaskManagers inside Flink's NettyShuffleDescriptor.
 * It never changes: splits to other workers are followed by the workers (redirects), not by new
 * descriptors.
 */
public final class TerraceShuffleDescriptor implements TierShuffleDescriptor {
    private static final long serialVersionUID = 3L;

    private final String jobIdHex;
    private final String partitionIdHex;
    private final String workerId;
    private final String workerAddress;
    /** Hex of the job's token; empty when the cluster has no secret. Never printed. */
    private final String token;

    public TerraceShuffleDescriptor(
            String jobIdHex,
            String partitionIdHex,
            String workerId,
            String workerAddress,
            String token) {
        this.jobIdHex = Objects.requireNonNull(jobIdHex);
        this.partitionIdHex = Objects.requireNonNull(partitionIdHex);
        this.workerId = Objects.requireNonNull(workerId);
        this.workerAddress = Objects.requireNonNull(workerAddress);
        this.token = Objects.requireNonNull(token);
    }

    /** From the fields {@link NativeBridge#masterAddPartition} returns. */
    static TerraceShuffleDescriptor fromFields(String[] fields) {
        if (fields == null || fields.length != 5) {
            throw new IllegalStateException("expected 5 descriptor fields from the native side");
        }
        return new TerraceShuffleDescriptor(fields[0], fields[1], fields[2], fields[3], fields[4]);
    }

    /** The fields {@link #fromFields} takes. */
    String[] fields() {
        return new String[] {
            getJobIdHex(), getPartitionIdHex(), getWorkerId(), getWorkerAddress(), getToken()
        };
    }

    public String getJobIdHex() {
        return jobIdHex;
    }

    public String getPartitionIdHex() {
        return partitionIdHex;
    }

    public String getWorkerId() {
        return workerId;
    }

    public String getWorkerAddress() {
        return workerAddress;
    }

    public String getToken() {
        return token;
    }

    @Override
    public boolean equals(Object o) {
        if (!(o instanceof TerraceShuffleDescriptor)) {
            return false;
        }
        TerraceShuffleDescriptor d = (TerraceShuffleDescriptor) o;
        return jobIdHex.equals(d.jobIdHex)
                && partitionIdHex.equals(d.partitionIdHex)
                && workerId.equals(d.workerId)
                && workerAddress.equals(d.workerAddress)
                && token.equals(d.token);
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

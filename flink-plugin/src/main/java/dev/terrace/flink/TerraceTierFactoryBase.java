package dev.terrace.flink;

import org.apache.flink.configuration.Configuration;
import org.apache.flink.runtime.io.network.buffer.BufferCompressor;
import org.apache.flink.runtime.io.network.partition.hybrid.tiered.common.TieredStoragePartitionId;
import org.apache.flink.runtime.io.network.partition.hybrid.tiered.netty.TieredStorageNettyService;
import org.apache.flink.runtime.io.network.partition.hybrid.tiered.storage.TieredStorageConsumerSpec;
import org.apache.flink.runtime.io.network.partition.hybrid.tiered.storage.TieredStorageMemorySpec;
import org.apache.flink.runtime.io.network.partition.hybrid.tiered.storage.TieredStorageResourceRegistry;
import org.apache.flink.runtime.io.network.partition.hybrid.tiered.tier.TierConsumerAgent;
import org.apache.flink.runtime.io.network.partition.hybrid.tiered.tier.TierFactory;
import org.apache.flink.runtime.io.network.partition.hybrid.tiered.tier.TierMasterAgent;
import org.apache.flink.runtime.io.network.partition.hybrid.tiered.tier.TierProducerAgent;
import org.apache.flink.runtime.io.network.partition.hybrid.tiered.tier.TierShuffleDescriptor;

import java.util.List;

import static org.apache.flink.util.Preconditions.checkState;

/**
 * What {@link TerraceTierFactory} does on every Flink line; the factory itself is a thin class per
 * line ({@code flink-plugin/src/flink-1.20}, {@code flink-plugin/src/flink-2}) declaring the one
 * method whose signature differs, {@code createProducerAgent}.
 */
abstract class TerraceTierFactoryBase implements TierFactory {

    private TerraceConfig config;

    /** Flink's {@code execution.batch.job-recovery.enabled}. */
    boolean jobRecovery;

    @Override
    public void setup(Configuration configuration) {
        this.config = new TerraceConfig(configuration);
        this.jobRecovery =
                Boolean.parseBoolean(
                        configuration
                                .toMap()
                                .getOrDefault("execution.batch.job-recovery.enabled", "false")
                                .trim());
    }

    /**
     * The key Flink 2.x files this tier's master snapshots under (abstract in 2.x's {@code
     * TierFactory}, absent in 1.20's, hence no {@code @Override}); stable across restarts.
     */
    public String identifier() {
        return "terrace";
    }

    TerraceConfig config() {
        checkState(config != null, "TerraceTierFactory.setup was not called");
        config.ensureNativeLoaded();
        return config;
    }

    @Override
    public TieredStorageMemorySpec getMasterAgentMemorySpec() {
        return new TieredStorageMemorySpec(this, 0);
    }

    @Override
    public TieredStorageMemorySpec getProducerAgentMemorySpec() {
        // tryWrite copies and recycles at once, so the producer itself holds no network buffer.
        // One guaranteed buffer, as Celeborn asks for, keeps the memory manager's accounting sane.
        return new TieredStorageMemorySpec(this, 1);
    }

    @Override
    public TieredStorageMemorySpec getConsumerAgentMemorySpec() {
        return new TieredStorageMemorySpec(this, 1);
    }

    @Override
    public TierMasterAgent createMasterAgent(TieredStorageResourceRegistry resourceRegistry) {
        return new TerraceMasterAgent(config(), resourceRegistry, jobRecovery);
    }

    /**
     * The producer agent of one result partition. {@code compressor} is what Flink 2.x hands a
     * tier when shuffle compression is on (null on 1.20, which gives an external tier
     * uncompressed buffers and no compressor).
     */
    TierProducerAgent producerAgent(
            int numSubpartitions,
            TieredStoragePartitionId partitionID,
            boolean isBroadcastOnly,
            TieredStorageResourceRegistry resourceRegistry,
            List<TierShuffleDescriptor> shuffleDescriptors,
            BufferCompressor compressor) {
        checkState(
                shuffleDescriptors.size() == 1
                        && shuffleDescriptors.get(0) instanceof TerraceShuffleDescriptor,
                "expected exactly one TerraceShuffleDescriptor, got %s",
                shuffleDescriptors);
        return new TerraceProducerAgent(
                config(),
                numSubpartitions,
                partitionID,
                isBroadcastOnly,
                resourceRegistry,
                (TerraceShuffleDescriptor) shuffleDescriptors.get(0),
                compressor);
    }

    @Override
    public TierConsumerAgent createConsumerAgent(
            List<TieredStorageConsumerSpec> tieredStorageConsumerSpecs,
            List<TierShuffleDescriptor> shuffleDescriptors,
            TieredStorageNettyService nettyService) {
        return new TerraceConsumerAgent(config(), tieredStorageConsumerSpecs, shuffleDescriptors);
    }
}

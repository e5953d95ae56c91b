package dev.terrace.flink;

import org.apache.flink.configuration.Configuration;
import org.apache.flink.runtime.io.disk.BatchShuffleReadBufferPool;
import org.apache.flink.runtime.io.network.partition.hybrid.tiered.common.TieredStoragePartitionId;
import org.apache.flink.runtime.io.network.partition.hybrid.tiered.netty.TieredStorageNettyService;
import org.apache.flink.runtime.io.network.partition.hybrid.tiered.storage.TieredStorageConsumerSpec;
import org.apache.flink.runtime.io.network.partition.hybrid.tiered.storage.TieredStorageMemoryManager;
import org.apache.flink.runtime.io.network.partition.hybrid.tiered.storage.TieredStorageMemorySpec;
import org.apache.flink.runtime.io.network.partition.hybrid.tiered.storage.TieredStorageResourceRegistry;
import org.apache.flink.runtime.io.network.partition.hybrid.tiered.tier.TierConsumerAgent;
import org.apache.flink.runtime.io.network.partition.hybrid.tiered.tier.TierFactory;
import org.apache.flink.runtime.io.network.partition.hybrid.tiered.tier.TierMasterAgent;
import org.apache.flink.runtime.io.network.partition.hybrid.tiered.tier.TierProducerAgent;
import org.apache.flink.runtime.io.network.partition.hybrid.tiered.tier.TierShuffleDescriptor;

import java.util.List;
import java.util.concurrent.ScheduledExecutorService;

import static org.apache.flink.util.Preconditions.checkState;

/**
 * Terrace as Flink 1.20's external remote tier. Enable with
 *
 * <pre>
 * taskmanager.network.hybrid-shuffle.external-remote-tier-factory.class: dev.terrace.flink.TerraceTierFactory
 * execution.batch-shuffle-mode: ALL_EXCHANGES_HYBRID_FULL
 * terrace.master.address: host1:port,host2:port
 * </pre>
 *
 * <p>and drop {@code terrace-flink-1.20.jar} into Flink's {@code lib/} (it bundles the
 * linux-x86_64 native library and loads it itself). Every other {@code terrace.*} key and its
 * default is listed in {@link TerraceConfig}.
 *
 * Flink instantiates it with the no-arg constructor on the JobManager and on every TaskManager
 * and calls {@link #setup} with the whole Flink configuration. When configured, it is the only
 * tier: it carries every buffer of the job's shuffle.
 */
public class TerraceTierFactory implements TierFactory {

    private TerraceConfig config;

    public TerraceTierFactory() {}

    @Override
    public void setup(Configuration configuration) {
        this.config = new TerraceConfig(configuration);
    }

    private TerraceConfig config() {
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
        return new TerraceMasterAgent(config(), resourceRegistry);
    }

    @Override
    public TierProducerAgent createProducerAgent(
            int numPartitions,
            int numSubpartitions,
            TieredStoragePartitionId partitionID,
            String dataFileBasePath,
            boolean isBroadcastOnly,
            TieredStorageMemoryManager storageMemoryManager,
            TieredStorageNettyService nettyService,
            TieredStorageResourceRegistry resourceRegistry,
            BatchShuffleReadBufferPool bufferPool,
            ScheduledExecutorService ioExecutor,
            List<TierShuffleDescriptor> shuffleDescriptors,
            int maxRequestedBuffer) {
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
                (TerraceShuffleDescriptor) shuffleDescriptors.get(0));
    }

    @Override
    public TierConsumerAgent createConsumerAgent(
            List<TieredStorageConsumerSpec> tieredStorageConsumerSpecs,
            List<TierShuffleDescriptor> shuffleDescriptors,
            TieredStorageNettyService nettyService) {
        return new TerraceConsumerAgent(config(), tieredStorageConsumerSpecs, shuffleDescriptors);
    }
}

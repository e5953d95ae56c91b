package dev.terrace.flink;

import org.apache.flink.configuration.Configuration;
import org.apache.flink.runtime.io.disk.BatchShuffleReadBufferPool;
import org.apache.flink.runtime.io.network.buffer.BufferCompressor;
import org.apache.flink.runtime.io.network.partition.hybrid.tiered.common.TieredStoragePartitionId;
import org.apache.flink.runtime.io.network.partition.hybrid.tiered.netty.TieredStorageNettyService;
import org.apache.flink.runtime.io.network.partition.hybrid.tiered.storage.TieredStorageMemoryManager;
import org.apache.flink.runtime.io.network.partition.hybrid.tiered.storage.TieredStorageResourceRegistry;
import org.apache.flink.runtime.io.network.partition.hybrid.tiered.tier.TierMasterAgent;
import org.apache.flink.runtime.io.network.partition.hybrid.tiered.tier.TierProducerAgent;
import org.apache.flink.runtime.io.network.partition.hybrid.tiered.tier.TierShuffleDescriptor;

import javax.annotation.Nullable;

import java.util.List;
import java.util.concurrent.ScheduledExecutorService;

/**
 * Terrace as Flink 2.x's external remote tier (this class is in {@code terrace-flink-2.x.jar}).
 * Enabled as on 1.20:
 *
 * <pre>
 * taskmanager.network.hybrid-shuffle.external-remote-tier-factory.class: dev.terrace.flink.TerraceTierFactory
 * execution.batch-shuffle-mode: ALL_EXCHANGES_HYBRID_FULL
 * terrace.master.address: host1:port,host2:port
 * </pre>
 *
 * <p>2.x hands a tier Flink's own {@link BufferCompressor} when shuffle compression is on
 * ({@code taskmanager.network.batch-shuffle.compression.enabled}, the default) and expects the
 * tier to compress data buffers with it; the readers' input gates decompress them. Terrace does
 * so, and then leaves its own lz4 ({@code terrace.compression}) off for that partition.
 */
public class TerraceTierFactory extends TerraceTierFactoryBase {

    public TerraceTierFactory() {}

    private Configuration flinkConfig;

    @Override
    public void setup(Configuration configuration) {
        super.setup(configuration);
        this.flinkConfig = configuration;
    }

    /** JobManager side (before its Dispatcher starts). */
    @Override
    public TierMasterAgent createMasterAgent(TieredStorageResourceRegistry resourceRegistry) {
        if (jobRecovery) {
            ClusterShuffleSnapshot.ensure(flinkConfig);
        }
        return new RecoverableTerraceMasterAgent(config(), resourceRegistry, jobRecovery);
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
            int maxRequestedBuffer,
            @Nullable BufferCompressor bufferCompressor) {
        return producerAgent(
                numSubpartitions,
                partitionID,
                isBroadcastOnly,
                resourceRegistry,
                shuffleDescriptors,
                bufferCompressor);
    }
}

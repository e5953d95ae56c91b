package dev.terrace.flink;

import org.apache.flink.runtime.io.disk.BatchShuffleReadBufferPool;
import org.apache.flink.runtime.io.network.partition.hybrid.tiered.common.TieredStoragePartitionId;
import org.apache.flink.runtime.io.network.partition.hybrid.tiered.netty.TieredStorageNettyService;
import org.apache.flink.runtime.io.network.partition.hybrid.tiered.storage.TieredStorageMemoryManager;
import org.apache.flink.runtime.io.network.partition.hybrid.tiered.storage.TieredStorageResourceRegistry;
import org.apache.flink.runtime.io.network.partition.hybrid.tiered.tier.TierProducerAgent;
import org.apache.flink.runtime.io.network.partition.hybrid.tiered.tier.TierShuffleDescriptor;

import java.util.List;
import java.util.concurrent.ScheduledExecutorService;

/**
 * Terrace as Flink 1.20's external remote tier (this class is in {@code terrace-flink-1.20.jar}).
 * Enable with
 *
 * <pre>
 * taskmanager.network.hybrid-shuffle.external-remote-tier-factory.class: dev.terrace.flink.TerraceTierFactory
 * execution.batch-shuffle-mode: ALL_EXCHANGES_HYBRID_FULL
 * terrace.master.address: host1:port,host2:port
 * </pre>
 *
 * <p>and drop the jar into Flink's {@code lib/} (it bundles the linux-x86_64 native library and
 * loads it itself). Every other {@code terrace.*} key and its default is listed in {@link
 * TerraceConfig}.
 *
 * <p>Flink instantiates it with the no-arg constructor on the JobManager and on every TaskManager
 * and calls {@code setup} with the whole Flink configuration. When configured, it is the only
 * tier: it carries every buffer of the job's shuffle.
 */
public class TerraceTierFactory extends TerraceTierFactoryBase {

    public TerraceTierFactory() {}

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
        return producerAgent(
                numSubpartitions,
                partitionID,
                isBroadcastOnly,
                resourceRegistry,
                shuffleDescriptors,
                null);
    }
}

package dev.terrace.flink;

import org.apache.flink.core.memory.MemorySegment;
import org.apache.flink.runtime.io.network.buffer.Buffer;
import org.apache.flink.runtime.io.network.buffer.BufferBuilder;
import org.apache.flink.runtime.io.network.buffer.BufferRecycler;
import org.apache.flink.runtime.io.network.buffer.NetworkBuffer;
import org.apache.flink.runtime.io.network.partition.PartitionNotFoundException;
import org.apache.flink.runtime.io.network.partition.ResultSubpartitionIndexSet;
import org.apache.flink.runtime.io.network.partition.hybrid.tiered.common.TieredStorageIdMappingUtils;
import org.apache.flink.runtime.io.network.partition.hybrid.tiered.common.TieredStorageInputChannelId;
import org.apache.flink.runtime.io.network.partition.hybrid.tiered.common.TieredStoragePartitionId;
import org.apache.flink.runtime.io.network.partition.hybrid.tiered.common.TieredStorageSubpartitionId;
import org.apache.flink.runtime.io.network.partition.hybrid.tiered.storage.AvailabilityNotifier;
import org.apache.flink.runtime.io.network.partition.hybrid.tiered.storage.TieredStorageConsumerSpec;
import org.apache.flink.runtime.io.network.partition.hybrid.tiered.storage.TieredStorageMemoryManager;
import org.apache.flink.runtime.io.network.partition.hybrid.tiered.tier.TierConsumerAgent;
import org.apache.flink.runtime.io.network.partition.hybrid.tiered.tier.TierShuffleDescriptor;

import org.slf4j.Logger;
import org.slf4j.LoggerFactory;

import java.io.IOException;
import java.io.UncheckedIOException;
import java.nio.ByteBuffer;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.Optional;

import static org.apache.flink.util.Preconditions.checkState;

/**
 * TaskManager side, one per input gate. Stream {@code i} = consumer spec {@code i}. Rust receives
 * buffers from the workers into its own bounded receive budget; {@link #getNextBuffer} copies one
 * into a network buffer taken from Flink's {@link TieredStorageMemoryManager} (the one copy on
 * this side) and hands it to Flink, which recycles it back into the gate's pool.
 */
final class TerraceConsumerAgent implements TierConsumerAgent {
    private static final Logger LOG = LoggerFactory.getLogger(TerraceConsumerAgent.class);

    private final TerraceConfig config;
    private final List<TieredStorageConsumerSpec> specs;
    private final Map<TieredStoragePartitionId, List<Integer>> streamsByPartition = new HashMap<>();
    private final long handle;
    private final Thread eventThread;

    private TieredStorageMemoryManager memoryManager;
    private volatile AvailabilityNotifier notifier;
    private volatile boolean closed;

    /** One network buffer kept ready for the next poll (task thread only). */
    private MemorySegment spareSegment;

    private BufferRecycler spareRecycler;

    TerraceConsumerAgent(
            TerraceConfig config,
            List<TieredStorageConsumerSpec> specs,
            List<TierShuffleDescriptor> descriptors) {
        checkState(specs.size() == descriptors.size(), "one descriptor per consumer spec");
        this.config = config;
        this.specs = new ArrayList<>(specs);
        for (int i = 0; i < specs.size(); i++) {
            streamsByPartition
                    .computeIfAbsent(specs.get(i).getPartitionId(), k -> new ArrayList<>())
                    .add(i);
        }
        try {
            this.handle =
                    NativeBridge.consumerOpen(config.flat(), specs.size(), config.bufferSizeBytes);
            for (int i = 0; i < specs.size(); i++) {
                // UnknownTierShuffleDescriptor: the producer is not deployed yet; the stream is
                // added in updateTierShuffleDescriptor.
                if (descriptors.get(i) instanceof TerraceShuffleDescriptor) {
                    addStream(i, (TerraceShuffleDescriptor) descriptors.get(i));
                }
            }
        } catch (IOException e) {
            throw new UncheckedIOException(e);
        }
        this.eventThread = new Thread(this::eventLoop, "terrace-consumer-agent-events");
        this.eventThread.setDaemon(true);
    }

    private void addStream(int stream, TerraceShuffleDescriptor d) throws IOException {
        ResultSubpartitionIndexSet subs = specs.get(stream).getSubpartitionIds();
        NativeBridge.consumerAddStream(
                handle,
                stream,
                d.jobIdBytes(),
                d.partitionIdBytes(),
                d.getWorkerId(),
                d.getWorkerAddress(),
                subs.getStartIndex(),
                subs.getEndIndex());
    }

    @Override
    public void setup(TieredStorageMemoryManager memoryManager) {
        this.memoryManager = memoryManager;
    }

    @Override
    public void start() {
        try {
            NativeBridge.consumerStart(handle);
        } catch (IOException e) {
            throw new UncheckedIOException(e);
        }
        eventThread.start();
    }

    @Override
    public int peekNextBufferSubpartitionId(
            TieredStoragePartitionId partitionId, ResultSubpartitionIndexSet indexSet)
            throws IOException {
        List<Integer> streams = streamsByPartition.get(partitionId);
        if (streams == null) {
            return -1;
        }
        for (int stream : streams) {
            ResultSubpartitionIndexSet own = specs.get(stream).getSubpartitionIds();
            int start = Math.max(own.getStartIndex(), indexSet.getStartIndex());
            int end = Math.min(own.getEndIndex(), indexSet.getEndIndex());
            if (start > end) {
                continue;
            }
            int sub = translate(partitionId, () -> NativeBridge.consumerPeek(handle, stream, start, end));
            if (sub >= 0) {
                return sub;
            }
        }
        return -1;
    }

    @Override
    public Optional<Buffer> getNextBuffer(
            TieredStoragePartitionId partitionId,
            TieredStorageSubpartitionId subpartitionId,
            int segmentId)
            throws IOException {
        int sub = subpartitionId.getSubpartitionId();
        int stream = streamFor(partitionId, sub);
        if (stream < 0) {
            return Optional.empty();
        }
        ensureSpare();
        ByteBuffer dst = spareSegment.wrap(0, spareSegment.size());
        long header =
                translate(
                        partitionId,
                        () -> NativeBridge.consumerPoll(handle, stream, sub, segmentId, dst));
        if (header == NativeBridge.POLL_EMPTY) {
            return Optional.empty();
        }
        Buffer buffer =
                new NetworkBuffer(
                        spareSegment,
                        spareRecycler,
                        Buffer.DataType.values()[NativeBridge.headerDataType(header)],
                        NativeBridge.headerCompressed(header),
                        NativeBridge.headerLength(header));
        spareSegment = null;
        spareRecycler = null;
        return Optional.of(buffer);
    }

    /**
     * Takes one buffer from the gate's pool through the memory manager. requestBufferBlocking
     * returns a BufferBuilder; its segment and recycler (the manager's, which keeps the per-owner
     * count) are reused in our own NetworkBuffer, as Flink's SortBufferAccumulator does.
     */
    private void ensureSpare() {
        if (spareSegment != null) {
            return;
        }
        checkState(memoryManager != null, "setup(TieredStorageMemoryManager) was not called");
        BufferBuilder builder = memoryManager.requestBufferBlocking(this);
        Buffer tmp = builder.createBufferConsumerFromBeginning().build();
        MemorySegment segment = tmp.getMemorySegment();
        checkState(segment.isOffHeap(), "network buffers are expected off-heap");
        spareSegment = segment;
        spareRecycler = tmp.getRecycler();
    }

    @Override
    public void registerAvailabilityNotifier(AvailabilityNotifier notifier) {
        this.notifier = notifier;
    }

    @Override
    public void updateTierShuffleDescriptor(
            TieredStoragePartitionId partitionId,
            TieredStorageInputChannelId inputChannelId,
            TieredStorageSubpartitionId subpartitionId,
            TierShuffleDescriptor tierShuffleDescriptor) {
        if (!(tierShuffleDescriptor instanceof TerraceShuffleDescriptor)) {
            return;
        }
        for (int stream : streamsByPartition.getOrDefault(partitionId, new ArrayList<>())) {
            if (specs.get(stream).getInputChannelId().equals(inputChannelId)) {
                try {
                    addStream(stream, (TerraceShuffleDescriptor) tierShuffleDescriptor);
                } catch (IOException e) {
                    throw new UncheckedIOException(e);
                }
            }
        }
    }

    @Override
    public void close() throws IOException {
        if (closed) {
            return;
        }
        closed = true;
        NativeBridge.consumerClose(handle);
        if (spareSegment != null) {
            spareRecycler.recycle(spareSegment);
            spareSegment = null;
        }
        try {
            eventThread.join(10_000);
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
        }
    }

    private void eventLoop() {
        int[] ready = new int[Math.max(1, specs.size())];
        while (!closed) {
            int n;
            try {
                n = NativeBridge.consumerWaitEvents(handle, config.eventPollIntervalMillis, ready);
            } catch (Throwable t) {
                if (!closed) {
                    LOG.error("Terrace consumer event wait failed; waking every channel", t);
                    for (int i = 0; i < specs.size(); i++) {
                        notifyStream(i); // the failure surfaces from peek/getNextBuffer
                    }
                }
                return;
            }
            if (n < 0) {
                return;
            }
            for (int i = 0; i < n; i++) {
                notifyStream(ready[i]);
            }
        }
    }

    private void notifyStream(int stream) {
        AvailabilityNotifier n = notifier;
        if (n != null) {
            TieredStorageConsumerSpec spec = specs.get(stream);
            n.notifyAvailable(spec.getPartitionId(), spec.getInputChannelId());
        }
    }

    private int streamFor(TieredStoragePartitionId partitionId, int subpartition) {
        List<Integer> streams = streamsByPartition.get(partitionId);
        if (streams != null) {
            for (int stream : streams) {
                if (specs.get(stream).getSubpartitionIds().contains(subpartition)) {
                    return stream;
                }
            }
        }
        return -1;
    }

    private interface NativeIntCall {
        int call() throws IOException;
    }

    private interface NativeLongCall {
        long call() throws IOException;
    }

    private static int translate(TieredStoragePartitionId p, NativeIntCall c) throws IOException {
        try {
            return c.call();
        } catch (TerraceNativeException e) {
            throw map(p, e);
        }
    }

    private static long translate(TieredStoragePartitionId p, NativeLongCall c) throws IOException {
        try {
            return c.call();
        } catch (TerraceNativeException e) {
            throw map(p, e);
        }
    }

    /** PartitionNotFoundException makes Flink re-run the producer; anything else fails the task. */
    private static IOException map(TieredStoragePartitionId p, TerraceNativeException e) {
        if (e.kind() == TerraceNativeException.Kind.PARTITION_NOT_FOUND) {
            PartitionNotFoundException pnf =
                    new PartitionNotFoundException(TieredStorageIdMappingUtils.convertId(p));
            pnf.addSuppressed(e);
            return pnf;
        }
        return e;
    }
}

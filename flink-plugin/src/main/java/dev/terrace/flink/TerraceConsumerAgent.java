package dev.terrace.flink;

import dev.terrace.bridge.NativeBridge;
import dev.terrace.bridge.TerraceNativeException;

import org.apache.flink.core.memory.MemorySegment;
import org.apache.flink.core.memory.MemorySegmentFactory;
import org.apache.flink.runtime.io.network.buffer.Buffer;
import org.apache.flink.runtime.io.network.buffer.BufferBuilder;
import org.apache.flink.runtime.io.network.buffer.BufferRecycler;
import org.apache.flink.runtime.io.network.buffer.FreeingBufferRecycler;
import org.apache.flink.runtime.io.network.buffer.NetworkBuffer;
import org.apache.flink.runtime.io.network.partition.PartitionNotFoundException;
import org.apache.flink.runtime.io.network.partition.ResultSubpartitionIndexSet;
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
import java.util.Collections;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.Optional;

import static org.apache.flink.util.Preconditions.checkState;

/**
 * TaskManager side, one per input gate. Stream {@code i} = consumer spec {@code i}. Rust receives
 * buffers from the workers into its own bounded receive budget (credits); {@link #getNextBuffer}
 * has Rust copy one into a network buffer taken from Flink's {@link TieredStorageMemoryManager}
 * (the one copy on this side) and hands it to Flink, which recycles it into the gate's pool. A
 * daemon thread waits for "stream has data or failed" and calls {@link
 * AvailabilityNotifier#notifyAvailable}.
 */
final class TerraceConsumerAgent implements TierConsumerAgent {
    private static final Logger LOG = LoggerFactory.getLogger(TerraceConsumerAgent.class);

    private static final Buffer.DataType[] DATA_TYPES = Buffer.DataType.values();

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
        int n = specs.size();
        byte[][] partitionIds = new byte[n][];
        int[] channels = new int[n];
        int[] firsts = new int[n];
        int[] lasts = new int[n];
        String[] fields = new String[5 * n];
        for (int i = 0; i < n; i++) {
            TieredStorageConsumerSpec spec = specs.get(i);
            streamsByPartition
                    .computeIfAbsent(spec.getPartitionId(), k -> new ArrayList<>())
                    .add(i);
            partitionIds[i] = spec.getPartitionId().getPartitionID().getBytes();
            channels[i] = spec.getInputChannelId().getInputChannelId();
            firsts[i] = spec.getSubpartitionIds().getStartIndex();
            lasts[i] = spec.getSubpartitionIds().getEndIndex();
            // UnknownTierShuffleDescriptor: the producer is not deployed yet; the descriptor
            // comes later through updateTierShuffleDescriptor (fields stay null).
            if (descriptors.get(i) instanceof TerraceShuffleDescriptor) {
                TerraceShuffleDescriptor d = (TerraceShuffleDescriptor) descriptors.get(i);
                fields[5 * i] = d.getJobIdHex();
                fields[5 * i + 1] = d.getPartitionIdHex();
                fields[5 * i + 2] = d.getWorkerId();
                fields[5 * i + 3] = d.getWorkerAddress();
                fields[5 * i + 4] = d.getToken();
            }
        }
        try {
            this.handle =
                    NativeBridge.consumerOpen(
                            config.flat(), partitionIds, channels, firsts, lasts, fields);
        } catch (IOException e) {
            throw new UncheckedIOException("open Terrace consumer", e);
        }
        this.eventThread = new Thread(this::eventLoop, "terrace-consumer-agent-events");
        this.eventThread.setDaemon(true);
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
            throw new UncheckedIOException("start Terrace consumer", e);
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
            int sub;
            try {
                sub = NativeBridge.consumerPeek(handle, stream, start, end);
            } catch (TerraceNativeException e) {
                throw map(partitionId, e);
            }
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
        try {
            long header =
                    NativeBridge.consumerPoll(
                            handle, stream, sub, segmentId, spareSegment.wrap(0, spareSegment.size()));
            if (header == NativeBridge.POLL_EMPTY) {
                return Optional.empty();
            }
            if (header >= 0) {
                Buffer buffer = wrap(spareSegment, spareRecycler, header);
                spareSegment = null;
                spareRecycler = null;
                return Optional.of(buffer);
            }
            // Larger than a network buffer (Flink never writes one, but do not drop it).
            int size = NativeBridge.requiredCapacity(header);
            MemorySegment large = MemorySegmentFactory.allocateUnpooledOffHeapMemory(size);
            header = NativeBridge.consumerPoll(handle, stream, sub, segmentId, large.wrap(0, size));
            checkState(header >= 0, "Terrace kept a buffer of %s bytes but returned %s", size, header);
            return Optional.of(wrap(large, FreeingBufferRecycler.INSTANCE, header));
        } catch (TerraceNativeException e) {
            throw map(partitionId, e);
        }
    }

    private static Buffer wrap(MemorySegment segment, BufferRecycler recycler, long header)
            throws IOException {
        int type = NativeBridge.headerDataType(header);
        if (type >= DATA_TYPES.length) {
            recycler.recycle(segment);
            throw new IOException("Terrace returned unknown Flink buffer data type " + type);
        }
        return new NetworkBuffer(
                segment,
                recycler,
                DATA_TYPES[type],
                NativeBridge.headerCompressed(header),
                NativeBridge.headerLength(header));
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
        TerraceShuffleDescriptor d = (TerraceShuffleDescriptor) tierShuffleDescriptor;
        for (int stream : streamsByPartition.getOrDefault(partitionId, Collections.emptyList())) {
            if (specs.get(stream).getInputChannelId().equals(inputChannelId)) {
                try {
                    NativeBridge.consumerUpdateDescriptor(
                            handle,
                            stream,
                            d.getJobIdHex(),
                            d.getPartitionIdHex(),
                            d.getWorkerId(),
                            d.getWorkerAddress(),
                            d.getToken());
                } catch (IOException e) {
                    throw new UncheckedIOException("Terrace consumer of " + d, e);
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
        try {
            NativeBridge.consumerClose(handle);
        } finally {
            if (spareSegment != null) {
                spareRecycler.recycle(spareSegment);
                spareSegment = null;
                spareRecycler = null;
            }
            if (eventThread.isAlive()) {
                try {
                    eventThread.join(10_000);
                } catch (InterruptedException e) {
                    Thread.currentThread().interrupt();
                }
            }
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
                        notifyStream(i); // a failure surfaces from peek/getNextBuffer
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

    /**
     * PartitionNotFoundException makes Flink re-run the producer: for a partition that is gone,
     * and for one whose stored bytes fail their checksum (reading them again would fail again;
     * the worker reports data it cannot read as not found itself). Anything else fails the task
     * with an IOException naming the partition.
     */
    private static IOException map(TieredStoragePartitionId p, TerraceNativeException e) {
        if (e.kind() == TerraceNativeException.Kind.PARTITION_NOT_FOUND
                || e.kind() == TerraceNativeException.Kind.DATA_CORRUPTION) {
            PartitionNotFoundException pnf = new PartitionNotFoundException(p.getPartitionID());
            // The cause is fixed (null) by PartitionException's constructor.
            pnf.addSuppressed(e);
            return pnf;
        }
        return new IOException("Terrace: reading partition " + p.getPartitionID() + " failed", e);
    }
}

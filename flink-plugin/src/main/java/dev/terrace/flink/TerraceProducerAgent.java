package dev.terrace.flink;

import dev.terrace.bridge.NativeBridge;
import dev.terrace.bridge.NativeBridgeCalls;

import org.apache.flink.runtime.io.network.api.EndOfSegmentEvent;
import org.apache.flink.runtime.io.network.api.serialization.EventSerializer;
import org.apache.flink.runtime.io.network.buffer.Buffer;
import org.apache.flink.runtime.io.network.buffer.BufferCompressor;
import org.apache.flink.runtime.io.network.partition.hybrid.tiered.common.TieredStoragePartitionId;
import org.apache.flink.runtime.io.network.partition.hybrid.tiered.common.TieredStorageSubpartitionId;
import org.apache.flink.runtime.io.network.partition.hybrid.tiered.storage.TieredStorageResourceRegistry;
import org.apache.flink.runtime.io.network.partition.hybrid.tiered.tier.TierProducerAgent;

import java.io.IOException;
import java.io.UncheckedIOException;
import java.nio.ByteBuffer;
import java.util.concurrent.atomic.AtomicBoolean;

/**
 * TaskManager side, one per result partition. Every buffer Flink hands over is copied once into
 * the Rust producer's push batch (Rust reads the off-heap segment in place) and recycled at once,
 * so this agent never holds Flink memory and needs no {@code transferBufferOwnership}. Segment
 * bookkeeping (when a segment is full, appending END_OF_SEGMENT) is Rust's.
 */
final class TerraceProducerAgent implements TierProducerAgent {

    /** Payload of the END_OF_SEGMENT buffer, as Flink serializes EndOfSegmentEvent. */
    static final byte[] END_OF_SEGMENT_PAYLOAD = endOfSegmentPayload();

    private final long handle;
    private final String partition;
    /** Flink 2.x's compressor for data buffers (null: Flink gave none; Terrace's own lz4 runs). */
    private final BufferCompressor compressor;
    private final AtomicBoolean released = new AtomicBoolean();
    private boolean finished;

    TerraceProducerAgent(
            TerraceConfig config,
            int numSubpartitions,
            TieredStoragePartitionId partitionId,
            boolean isBroadcastOnly,
            TieredStorageResourceRegistry resourceRegistry,
            TerraceShuffleDescriptor descriptor,
            BufferCompressor compressor) {
        this.partition = descriptor.toString();
        this.compressor = compressor;
        try {
            this.handle =
                    NativeBridge.producerOpen(
                            // Buffers Flink's compressor could not shrink would not shrink
                            // under lz4 either: with a compressor, Terrace's lz4 stays off.
                            compressor == null
                                    ? config.flat()
                                    : config.flatWith(TerraceConfig.COMPRESSION, "false"),
                            descriptor.getJobIdHex(),
                            descriptor.getPartitionIdHex(),
                            descriptor.getWorkerId(),
                            descriptor.getWorkerAddress(),
                            descriptor.getToken(),
                            numSubpartitions,
                            isBroadcastOnly,
                            END_OF_SEGMENT_PAYLOAD);
        } catch (IOException e) {
            throw new UncheckedIOException("open Terrace producer for " + partition, e);
        }
        // Frees the native producer when Flink releases the partition on this TaskManager
        // (TieredResultPartition.releaseInternal), even if close() never ran (task failed).
        resourceRegistry.registerResource(partitionId, this::release);
    }

    @Override
    public boolean tryStartNewSegment(
            TieredStorageSubpartitionId subpartitionId, int segmentId, int minNumBuffers) {
        try {
            return NativeBridge.producerStartSegment(
                    handle, subpartitionId.getSubpartitionId(), segmentId, minNumBuffers);
        } catch (IOException e) {
            throw new UncheckedIOException("Terrace producer of " + partition, e);
        }
    }

    @Override
    public boolean tryWrite(
            TieredStorageSubpartitionId subpartitionId,
            Buffer finishedBuffer,
            Object bufferOwner,
            int numRemainingConsecutiveBuffers) {
        // Flink's compressor writes into its own buffer, never into finishedBuffer: when the
        // segment is full, Flink hands the same buffer over again for the next segment, so it
        // must still hold what it held (compressing in place would compress it twice).
        Buffer toWrite = finishedBuffer;
        if (compressor != null
                && finishedBuffer.isBuffer()
                && !finishedBuffer.isCompressed()
                && finishedBuffer.readableBytes() > 0) {
            // The compressor's buffer, flagged compressed, only if it shrank.
            toWrite = compressor.compressToIntermediateBuffer(finishedBuffer);
        }
        int result;
        try {
            ByteBuffer data = toWrite.getNioBufferReadable();
            int sub = subpartitionId.getSubpartitionId();
            int type = toWrite.getDataType().ordinal();
            boolean compressed = toWrite.isCompressed();
            if (data.isDirect()) {
                result =
                        NativeBridge.producerWrite(
                                handle,
                                sub,
                                data,
                                data.position(),
                                data.remaining(),
                                type,
                                compressed,
                                numRemainingConsecutiveBuffers);
            } else {
                result =
                        NativeBridge.producerWriteArray(
                                handle,
                                sub,
                                data.array(),
                                data.arrayOffset() + data.position(),
                                data.remaining(),
                                type,
                                compressed,
                                numRemainingConsecutiveBuffers);
            }
        } catch (IOException e) {
            // The caller recycles only on IOException from choosing a tier; we own it here.
            finishedBuffer.recycleBuffer();
            throw new UncheckedIOException("Terrace producer of " + partition, e);
        } finally {
            if (toWrite != finishedBuffer) {
                // Copied out (or refused): hand the compressor its buffer back.
                toWrite.recycleBuffer();
            }
        }
        if (result == NativeBridge.WRITE_SEGMENT_FULL) {
            return false; // not consumed: Flink starts segment + 1 and writes it again
        }
        // Copied into the push batch: give the network buffer back right away.
        finishedBuffer.recycleBuffer();
        return true;
    }

    @Override
    public void close() {
        if (finished || released.get()) {
            return;
        }
        finished = true;
        try {
            NativeBridge.producerFinish(handle);
        } catch (IOException e) {
            throw new UncheckedIOException("finish Terrace partition " + partition, e);
        } finally {
            release();
        }
    }

    private void release() {
        if (released.compareAndSet(false, true)) {
            NativeBridgeCalls.quietly(() -> NativeBridge.producerRelease(handle));
        }
    }

    private static byte[] endOfSegmentPayload() {
        try {
            ByteBuffer b = EventSerializer.toSerializedEvent(EndOfSegmentEvent.INSTANCE);
            byte[] bytes = new byte[b.remaining()];
            b.get(bytes);
            return bytes;
        } catch (IOException e) {
            throw new UncheckedIOException(e);
        }
    }
}

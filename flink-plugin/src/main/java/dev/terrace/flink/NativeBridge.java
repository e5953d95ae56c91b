package dev.terrace.flink;

import java.nio.ByteBuffer;

/**
 * The whole JNI surface between the Flink adapter and the Rust agents (library {@code
 * terrace_flink}). All calls go Java → Rust; Rust never calls back into the JVM. Events that
 * originate in Rust (data available, partitions lost) are fetched by one Java daemon thread per
 * agent through a blocking {@code *WaitEvents} call, then dispatched to Flink on that Java thread.
 *
 * <p>Conventions:
 *
 * <ul>
 *   <li>Handles are opaque {@code long}s (a boxed Rust object); {@code 0} is never a valid handle.
 *       Every {@code *Open} has a matching {@code *Close}/{@code *Release} that frees it; using a
 *       freed handle is a bug on the Java side and Rust answers with an exception, not a crash.
 *   <li>Ids cross as raw bytes: JobID = 16 bytes ({@code JobID#getBytes}), partition id = the
 *       bytes of {@code ResultPartitionID#getBytes} (opaque to Rust).
 *   <li>Configuration crosses as a flat {@code String[]} of key, value, key, value, ... (all
 *       {@code terrace.*} keys of the Flink configuration).
 *   <li>Payloads cross as <b>direct</b> ByteBuffers (Flink network buffers are off-heap), read or
 *       written by Rust through {@code GetDirectBufferAddress}: the only copy is the memcpy between
 *       Flink's segment and Rust's push batch / receive batch. {@code byte[]} variants exist for
 *       heap segments (one copy through {@code GetByteArrayRegion}).
 *   <li>Failures are thrown as {@link TerraceNativeException} with a {@link
 *       TerraceNativeException.Kind}; the agents translate them to Flink exceptions.
 *   <li>Blocking calls (open, close, wait) must not be made while holding a Java lock that a
 *       Flink thread may need.
 * </ul>
 */
public final class NativeBridge {

    /** Result of {@link #producerWrite}: the buffer was copied; the caller must recycle it. */
    public static final int WRITE_OK = 0;

    /**
     * Result of {@link #producerWrite}: the current segment of this subpartition is full. Rust
     * has already appended the END_OF_SEGMENT buffer; the buffer was NOT consumed.
     */
    public static final int WRITE_SEGMENT_FULL = 1;

    /** Packed header returned by {@link #consumerPoll} when no buffer is ready. */
    public static final long POLL_EMPTY = -1L;

    private NativeBridge() {}

    // ---------------------------------------------------------------- library

    /** Protocol/ABI version of the Java side; the native library must report the same. */
    public static final int ABI_VERSION = 1;

    public static native int abiVersion();

    // ---------------------------------------------------------------- master agent (JobManager)

    /** Connects to the Terrace masters named in {@code conf}. */
    public static native long masterOpen(String[] conf) throws TerraceNativeException;

    public static native void masterRegisterJob(long master, byte[] jobId) throws TerraceNativeException;

    /** Drops every partition of the job on the workers. */
    public static native void masterUnregisterJob(long master, byte[] jobId) throws TerraceNativeException;

    /**
     * Picks a worker for a new partition and registers it. Returns {@code "<workerId>,<host:port>"}.
     */
    public static native String masterAddPartition(long master, byte[] jobId, byte[] partitionId) throws TerraceNativeException;

    public static native void masterReleasePartition(long master, byte[] jobId, byte[] partitionId) throws TerraceNativeException;

    /**
     * Blocks up to {@code timeoutMillis} for lost-partition events. Returns {@code null} on
     * timeout, else a batch encoded as repeated {@code [16 bytes jobId][u16 BE len][len bytes
     * partitionId]}.
     */
    public static native byte[] masterWaitEvents(long master, long timeoutMillis) throws TerraceNativeException;

    /** Wakes a thread blocked in {@link #masterWaitEvents} (it returns null) and frees the agent. */
    public static native void masterClose(long master) throws TerraceNativeException;

    // ---------------------------------------------------------------- producer agent (TaskManager)

    /**
     * Opens a producer for one result partition on the worker named by its descriptor.
     *
     * @param endOfSegmentPayload the bytes Rust stores as the END_OF_SEGMENT buffer's payload
     *     (EventSerializer.toSerializedEvent(EndOfSegmentEvent.INSTANCE)); Rust never builds
     *     Flink events itself.
     * @param broadcastOnly Flink writes only subpartition 0; the worker serves every subpartition
     *     from it.
     */
    public static native long producerOpen(
            String[] conf,
            byte[] jobId,
            byte[] partitionId,
            long workerId,
            String workerAddress,
            int numSubpartitions,
            boolean broadcastOnly,
            int bufferSizeBytes,
            byte[] endOfSegmentPayload) throws TerraceNativeException;

    /** Flink's tryStartNewSegment. True if segment {@code segmentId} of {@code sub} is accepted. */
    public static native boolean producerStartSegment(
            long producer, int subpartition, int segmentId, int minNumBuffers) throws TerraceNativeException;

    /**
     * Flink's tryWrite: copies {@code length} bytes at {@code offset} of the direct buffer {@code
     * data} into the current push batch. Returns {@link #WRITE_OK} or {@link #WRITE_SEGMENT_FULL}.
     * May block when the worker applies backpressure.
     */
    public static native int producerWrite(
            long producer,
            int subpartition,
            ByteBuffer data,
            int offset,
            int length,
            int dataType,
            boolean compressed,
            int numRemainingConsecutiveBuffers) throws TerraceNativeException;

    /** As {@link #producerWrite} for heap segments. */
    public static native int producerWriteArray(
            long producer,
            int subpartition,
            byte[] data,
            int offset,
            int length,
            int dataType,
            boolean compressed,
            int numRemainingConsecutiveBuffers) throws TerraceNativeException;

    /** Flushes, finishes every open segment and seals the partition on the worker (blocking). */
    public static native void producerFinish(long producer) throws TerraceNativeException;

    /** Frees the producer (after finish, or to abandon it on failure). Idempotent. */
    public static native void producerRelease(long producer) throws TerraceNativeException;

    // ---------------------------------------------------------------- consumer agent (TaskManager)

    /** Opens a consumer for one input gate with {@code numStreams} consumer specs. */
    public static native long consumerOpen(String[] conf, int numStreams, int bufferSizeBytes) throws TerraceNativeException;

    /**
     * Declares stream {@code stream} (index of the consumer spec) once its descriptor is known:
     * partition on a worker, subpartitions {@code [startSub, endSub]}. Before {@link
     * #consumerStart} or later (updateTierShuffleDescriptor).
     */
    public static native void consumerAddStream(
            long consumer,
            int stream,
            byte[] jobId,
            byte[] partitionId,
            long workerId,
            String workerAddress,
            int startSubpartition,
            int endSubpartition) throws TerraceNativeException;

    /** Opens the streams declared so far and asks for segment 0 of each subpartition. */
    public static native void consumerStart(long consumer) throws TerraceNativeException;

    /**
     * A subpartition in {@code [startSub, endSub]} of stream {@code stream} that has a buffer
     * ready, else -1. Throws if the stream failed.
     */
    public static native int consumerPeek(long consumer, int stream, int startSub, int endSub) throws TerraceNativeException;

    /**
     * Copies the next buffer of segment {@code segmentId} of {@code subpartition} into {@code dst}
     * (a direct buffer of capacity {@code dst.capacity()}) and returns its packed header: {@code
     * length | dataType << 32 | compressed << 40}; or {@link #POLL_EMPTY}. Asking for a new
     * segment id tells the worker which segment to send next.
     */
    public static native long consumerPoll(
            long consumer, int stream, int subpartition, int segmentId, ByteBuffer dst) throws TerraceNativeException;

    /**
     * Blocks up to {@code timeoutMillis} until some streams became non-empty or failed; writes
     * their indices to {@code out} and returns how many (0 on timeout, -1 once closed).
     */
    public static native int consumerWaitEvents(long consumer, long timeoutMillis, int[] out) throws TerraceNativeException;

    /** Closes all streams, wakes {@link #consumerWaitEvents}, frees the consumer. */
    public static native void consumerClose(long consumer) throws TerraceNativeException;

    // ---------------------------------------------------------------- helpers

    public static int headerLength(long header) {
        return (int) (header & 0xFFFF_FFFFL);
    }

    public static int headerDataType(long header) {
        return (int) ((header >>> 32) & 0xFF);
    }

    public static boolean headerCompressed(long header) {
        return ((header >>> 40) & 1) != 0;
    }
}

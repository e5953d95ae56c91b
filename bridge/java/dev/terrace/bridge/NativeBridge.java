package dev.terrace.bridge;

import java.nio.ByteBuffer;

/**
 * The whole JNI surface between the engine adapters (Flink, Spark) and the Rust agents (library {@code
 * terrace_jni}, crate {@code bridge/jni}). All calls go Java → Rust; Rust never calls back
 * into the JVM. Events that start in Rust (data available, partitions lost) are fetched by one
 * Java daemon thread per agent through a blocking {@code *WaitEvents} call, then dispatched to
 * Flink on that Java thread.
 *
 * <p>Conventions:
 *
 * <ul>
 *   <li>Handles are opaque {@code long}s into generation-checked tables on the Rust side; {@code
 *       0} is never valid. Every {@code *Open} has a matching {@code *Close}/{@code *Release}.
 *       Using a closed (or foreign) handle throws {@link TerraceNativeException} with kind
 *       CLOSED (or INVALID_ARGUMENT); it never crashes the JVM.
 *   <li>Ids cross as raw bytes on the way in (JobID 16 bytes, ResultPartitionID 60 bytes) and
 *       as the descriptor's five strings ({@code jobHex, partitionHex, workerId, workerAddress,
 *       token})
 *       once a partition is placed.
 *   <li>Configuration crosses as a flat {@code String[]} of key, value, ... (the {@code
 *       terrace.*} keys of the Flink configuration); unknown {@code terrace.*} keys are rejected.
 *   <li>Payloads cross as <b>direct</b> ByteBuffers (Flink network buffers are off-heap): the
 *       producer's memory is borrowed for the call and copied once into the Rust agent's push batch;
 *       the consumer's buffer is copied once from Rust's received batch into {@code dst}. Buffer
 *       metadata travels in arguments and a packed {@code long}, never by extra JNI calls.
 *   <li>Failures are thrown as {@link TerraceNativeException}; a Rust panic becomes one too.
 *   <li>Blocking calls (open, finish, write under backpressure, wait) must not be made while
 *       holding a Java lock that a Flink thread may need.
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

    /** Returned by {@link #consumerPoll} when no buffer is ready. */
    public static final long POLL_EMPTY = -1L;

    private NativeBridge() {}

    // ---------------------------------------------------------------- library

    /** ABI version of the Java side; the native library must report the same. */
    public static final int ABI_VERSION = 5;

    public static native int abiVersion();

    // ---------------------------------------------------------------- master agent (JobManager)

    /** Creates a master agent for the masters named by {@code terrace.master.address}. */
    public static native long masterOpen(String[] conf) throws TerraceNativeException;

    public static native void masterRegisterJob(long master, byte[] jobId)
            throws TerraceNativeException;

    /** Forgets the job and drops all of its data on every live worker. */
    public static native void masterUnregisterJob(long master, byte[] jobId)
            throws TerraceNativeException;

    /**
     * Stops tracking the job without dropping its data: a JobManager that lost its leadership
     * leaves the job to the next one, which registers it again within the masters' job lease.
     */
    public static native void masterDetachJob(long master, byte[] jobId)
            throws TerraceNativeException;

    /**
     * Tracks partitions an earlier JobManager placed (their loss is then reported): {@code
     * fields} holds the five fields of each descriptor in turn, as {@link #masterAddPartition}
     * returns them.
     */
    public static native void masterRestorePartitions(long master, byte[] jobId, String[] fields)
            throws TerraceNativeException;

    /**
     * The stored bytes per subpartition of each finished partition (every part sealed) among
     * {@code partitionIds}, asked of the workers within {@code timeoutMillis}; partitions not
     * found, unfinished or unanswered are left out. Encoded big-endian: {@code n × [u16 len,
     * partition id][u32 count] count × [i64 bytes]}.
     */
    public static native byte[] masterPartitionMetrics(
            long master, byte[] jobId, byte[][] partitionIds, long timeoutMillis)
            throws TerraceNativeException;

    /**
     * Places a new partition on a worker. Returns the descriptor's fields {@code {jobHex,
     * partitionHex, workerId, workerAddress, token}}.
     */
    public static native String[] masterAddPartition(long master, byte[] jobId, byte[] partitionId)
            throws TerraceNativeException;

    /** Deletes the partition's data on its worker (a partition already gone is fine). */
    public static native void masterReleasePartition(
            long master,
            String jobHex,
            String partitionHex,
            String workerId,
            String workerAddress,
            String token)
            throws TerraceNativeException;

    /**
     * Releases a partition of a registered job that another process placed (an engine's task,
     * through a placer): the masters locate it, its worker deletes it. Returns whether a worker
     * held it (a partition never placed, or already gone, is {@code false}).
     */
    public static native boolean masterReleasePlaced(long master, byte[] jobId, byte[] partitionId)
            throws TerraceNativeException;

    /**
     * Blocks up to {@code timeoutMillis} for events. Returns {@code null} on timeout, else a batch
     * of events (big-endian): {@code [u8 1][u16 n, job][u32 count] count × [u16 n, partition]}
     * for lost partitions, {@code [u8 2][u16 n, job][u16 n, UTF-8 message]} for a fatal error.
     * Throws kind CLOSED once the agent is closed.
     */
    public static native byte[] masterWaitEvents(long master, long timeoutMillis)
            throws TerraceNativeException;

    /**
     * The token of a registered job (hex; empty when the cluster has no secret): what the engine
     * hands to the processes that place, write and read the job's partitions.
     */
    public static native String masterJobToken(long master, byte[] jobId)
            throws TerraceNativeException;

    /** Wakes {@link #masterWaitEvents}, stops lost-worker detection, frees the agent. */
    public static native void masterClose(long master) throws TerraceNativeException;

    // ---------------------------------------------------------------- placer (task process)

    /**
     * Opens a placer for job {@code jobHex}: it places the job's partitions presenting only the
     * job's {@code token} (hex, empty without a cluster secret), for engines whose tasks create
     * their own partitions (Spark's map tasks).
     */
    public static native long placerOpen(String[] conf, String jobHex, String token)
            throws TerraceNativeException;

    /**
     * Places a new partition of the placer's job. Returns the descriptor's fields {@code {jobHex,
     * partitionHex, workerId, workerAddress, token}}.
     */
    public static native String[] placerPlace(long placer, byte[] partitionId, int numSubpartitions)
            throws TerraceNativeException;

    /** Closes the placer's connection to the masters and frees it. */
    public static native void placerClose(long placer) throws TerraceNativeException;

    // ---------------------------------------------------------------- producer agent (TaskManager)

    /**
     * Opens a producer for one result partition on the worker of its descriptor and creates the
     * partition there.
     *
     * @param endOfSegmentPayload the payload of the END_OF_SEGMENT buffers (data type 7) Rust
     *     appends when a segment is full: EventSerializer.toSerializedEvent(EndOfSegmentEvent).
     * @param broadcastOnly Flink writes only subpartition 0; the worker serves every
     *     subpartition from it.
     */
    public static native long producerOpen(
            String[] conf,
            String jobHex,
            String partitionHex,
            String workerId,
            String workerAddress,
            String token,
            int numSubpartitions,
            boolean broadcastOnly,
            byte[] endOfSegmentPayload)
            throws TerraceNativeException;

    /** Flink's tryStartNewSegment: Terrace is the only tier and always accepts. */
    public static native boolean producerStartSegment(
            long producer, int subpartition, int segmentId, int minNumBuffers)
            throws TerraceNativeException;

    /**
     * Flink's tryWrite: copies {@code length} bytes at {@code offset} (absolute, from the
     * buffer's address) of the direct buffer {@code data} into the current push batch. Returns
     * {@link #WRITE_OK} or {@link #WRITE_SEGMENT_FULL}. May block while the worker applies
     * backpressure.
     */
    public static native int producerWrite(
            long producer,
            int subpartition,
            ByteBuffer data,
            int offset,
            int length,
            int dataType,
            boolean compressed,
            int numRemainingConsecutiveBuffers)
            throws TerraceNativeException;

    /** As {@link #producerWrite} for heap segments (Flink's events, a few bytes each). */
    public static native int producerWriteArray(
            long producer,
            int subpartition,
            byte[] data,
            int offset,
            int length,
            int dataType,
            boolean compressed,
            int numRemainingConsecutiveBuffers)
            throws TerraceNativeException;

    /** Flushes, ends every open segment and seals the partition on the worker (blocking). */
    public static native void producerFinish(long producer) throws TerraceNativeException;

    /** Frees the producer (after finish, or to abandon it on failure). */
    public static native void producerRelease(long producer) throws TerraceNativeException;

    // ---------------------------------------------------------------- consumer agent (TaskManager)

    /**
     * Opens a consumer for one input gate. Stream {@code i} reads subpartitions {@code
     * [firstSubpartitions[i], lastSubpartitions[i]]} of partition {@code partitionIds[i]} for
     * input channel {@code channels[i]}; {@code descriptorFields[5i..5i+4]} are its descriptor's
     * {@code jobHex, partitionHex, workerId, workerAddress, token}, or five nulls while unknown.
     */
    public static native long consumerOpen(
            String[] conf,
            byte[][] partitionIds,
            int[] channels,
            int[] firstSubpartitions,
            int[] lastSubpartitions,
            String[] descriptorFields)
            throws TerraceNativeException;

    /** The descriptor of {@code stream} became known (updateTierShuffleDescriptor). */
    public static native void consumerUpdateDescriptor(
            long consumer,
            int stream,
            String jobHex,
            String partitionHex,
            String workerId,
            String workerAddress,
            String token)
            throws TerraceNativeException;

    /** Opens the streams whose descriptors are known and asks for segment 0 of each. */
    public static native void consumerStart(long consumer) throws TerraceNativeException;

    /**
     * A subpartition in {@code [first, last]} of stream {@code stream} that has a buffer ready,
     * else -1. Throws the partition's failure (PARTITION_NOT_FOUND, DATA_CORRUPTION, IO).
     */
    public static native int consumerPeek(long consumer, int stream, int first, int last)
            throws TerraceNativeException;

    /**
     * Copies the next buffer of segment {@code segmentId} of {@code subpartition} into {@code
     * dst} (a direct buffer, from its address, up to its capacity) and returns its packed header
     * {@code length | dataType << 32 | compressed << 40}; or {@link #POLL_EMPTY}; or, when
     * {@code dst} is too small, {@code -(2 + length)} (the buffer is kept for the next poll).
     * Asking for a new segment id tells the worker which segment to send next.
     */
    public static native long consumerPoll(
            long consumer, int stream, int subpartition, int segmentId, ByteBuffer dst)
            throws TerraceNativeException;

    /**
     * Whether {@code subpartition} of {@code stream} is read to its end: the partition is sealed,
     * the worker said it has no more segments of it, and every buffer received was polled.
     * Throws the partition's failure, as {@link #consumerPeek} does.
     */
    public static native boolean consumerFinished(long consumer, int stream, int subpartition)
            throws TerraceNativeException;

    /**
     * Blocks up to {@code timeoutMillis} until streams got data or failed; writes their indices to
     * {@code out} and returns how many (0 on timeout, -1 once closed).
     */
    public static native int consumerWaitEvents(long consumer, long timeoutMillis, int[] out)
            throws TerraceNativeException;

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

    /** For a poll result below {@link #POLL_EMPTY}: the size {@code dst} must have. */
    public static int requiredCapacity(long pollResult) {
        return (int) (-pollResult - 2);
    }
}

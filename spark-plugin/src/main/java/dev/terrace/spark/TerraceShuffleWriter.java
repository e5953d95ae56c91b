package dev.terrace.spark;

import dev.terrace.bridge.NativeBridge;
import dev.terrace.bridge.NativeBridgeCalls;
import dev.terrace.bridge.TerraceNativeException;

import org.apache.spark.Partitioner;
import org.apache.spark.ShuffleDependency;
import org.apache.spark.SparkEnv;
import org.apache.spark.TaskContext;
import org.apache.spark.scheduler.MapStatus;
import org.apache.spark.serializer.SerializationStream;
import org.apache.spark.serializer.Serializer;
import org.apache.spark.serializer.SerializerInstance;
import org.apache.spark.serializer.SerializerManager;
import org.apache.spark.shuffle.ShuffleWriteMetricsReporter;
import org.apache.spark.shuffle.ShuffleWriter;
import org.apache.spark.storage.ShuffleBlockId;
import org.slf4j.Logger;
import org.slf4j.LoggerFactory;

import scala.Option;
import scala.Product2;
import scala.collection.Iterator;
import scala.reflect.ClassTag;
import scala.reflect.ClassTag$;

import java.io.IOException;
import java.io.OutputStream;

/**
 * Writes one map task attempt's output as one Terrace partition whose subpartitions are the
 * reduce partitions.
 *
 * <p>Records are serialized with the shuffle's serializer into a buffer per reduce partition.
 * A buffer that reaches {@code spark.terrace.spark.chunk-size} (or the largest buffers, when all
 * of them together pass {@code spark.terrace.spark.writer-buffer-size}) becomes one chunk:
 * compressed (and encrypted) as Spark wraps any shuffle block, then pushed as Terrace buffers of
 * at most {@link SparkTerraceConfig#pieceSize} bytes, every piece but the last typed {@link
 * #CONTINUED}. A chunk is a
 * whole serialization stream, so a reader deserializes each on its own.
 *
 * <p>With a serializer that supports relocation (Kryo, Spark SQL's rows) one serialization stream
 * serves every reduce partition and each record's bytes are moved to its partition's buffer;
 * otherwise (Java serialization) each reduce partition with buffered records has its own stream.
 */
final class TerraceShuffleWriter<K, V> extends ShuffleWriter<K, V> {
    private static final Logger LOG = LoggerFactory.getLogger(TerraceShuffleWriter.class);
    private static final ClassTag<Object> OBJECT = ClassTag$.MODULE$.Object();

    /** Data type of the last (or only) piece of a chunk (Terrace's data buffer). */
    static final int CHUNK_END = 1;
    /** Data type of a piece of a chunk that more pieces follow. */
    static final int CONTINUED = 9;
    /** Data type of the marker closing a segment (the agent appends it). */
    static final int END_OF_SEGMENT = 7;

    private final TerraceShuffleHandle<K, V, ?> handle;
    private final ShuffleDependency<K, V, ?> dep;
    private final long placer;
    private final long mapId;
    private final TaskContext context;
    private final ShuffleWriteMetricsReporter metrics;
    private final SparkTerraceConfig config;
    private final int numPartitions;
    private final long[] sizes;
    private final int[] segments;
    private final boolean[] segmentStarted;

    private long producer;
    private String[] descriptor;
    private MapStatus status;
    private boolean stopping;

    TerraceShuffleWriter(
            TerraceShuffleHandle<K, V, ?> handle,
            long placer,
            long mapId,
            TaskContext context,
            ShuffleWriteMetricsReporter metrics,
            SparkTerraceConfig config) {
        this.handle = handle;
        this.dep = handle.dependency();
        this.placer = placer;
        this.mapId = mapId;
        this.context = context;
        this.metrics = metrics;
        this.config = config;
        this.numPartitions = dep.partitioner().numPartitions();
        this.sizes = new long[numPartitions];
        this.segments = new int[numPartitions];
        this.segmentStarted = new boolean[numPartitions];
    }

    @Override
    @SuppressWarnings({"unchecked", "rawtypes"})
    public void write(Iterator<Product2<K, V>> records) throws IOException {
        Iterator<? extends Product2<K, ?>> input = records;
        if (dep.mapSideCombine()) {
            if (dep.aggregator().isEmpty()) {
                throw new IllegalStateException("map-side combine without an aggregator");
            }
            input = (Iterator) dep.aggregator().get().combineValuesByKey((Iterator) records, context);
        }
        long start = System.nanoTime();
        byte[] partition = MapOutputs.partitionId(mapId, context.partitionId());
        descriptor = NativeBridge.placerPlace(placer, partition, numPartitions);
        producer =
                NativeBridge.producerOpen(
                        config.flat(),
                        descriptor[0],
                        descriptor[1],
                        descriptor[2],
                        descriptor[3],
                        descriptor[4],
                        numPartitions,
                        false,
                        new byte[] {0});
        metrics.incWriteTime(System.nanoTime() - start);

        Partitioner partitioner = dep.partitioner();
        Serializer serializer = dep.serializer();
        Buffers buffers =
                serializer.supportsRelocationOfSerializedObjects()
                        ? new SharedStreamBuffers(serializer.newInstance())
                        : new StreamPerPartitionBuffers(serializer.newInstance());
        long records0 = 0;
        while (input.hasNext()) {
            Product2<K, ?> record = input.next();
            buffers.add(partitioner.getPartition(record._1()), record._1(), record._2());
            records0++;
            if ((records0 & 0x3FF) == 0) {
                metrics.incRecordsWritten(1024);
            }
        }
        metrics.incRecordsWritten(records0 & 0x3FF);
        buffers.flushAll();

        start = System.nanoTime();
        NativeBridge.producerFinish(producer);
        metrics.incWriteTime(System.nanoTime() - start);
        status = MapOutputs.mapStatus(MapOutputs.location(descriptor[2], descriptor[3]), sizes, mapId);
    }

    @Override
    public Option<MapStatus> stop(boolean success) {
        if (stopping) {
            return Option.empty();
        }
        stopping = true;
        if (producer != 0) {
            long p = producer;
            producer = 0;
            NativeBridgeCalls.quietly(() -> NativeBridge.producerRelease(p));
        }
        if (success && status != null) {
            return Option.apply(status);
        }
        if (!success && descriptor != null) {
            LOG.info(
                    "map task {} (attempt {}) of shuffle {} failed; the driver releases its partition {}",
                    context.partitionId(),
                    mapId,
                    handle.shuffleId(),
                    descriptor[1]);
        }
        return Option.empty();
    }

    @Override
    public long[] getPartitionLengths() {
        return sizes;
    }

    /** Compresses a reduce partition's serialized bytes as Spark would and pushes them. */
    private void pushChunk(int reduceId, byte[] raw, int length) throws IOException {
        if (length == 0) {
            return;
        }
        SerializerManager wrapper = SparkEnv.get().serializerManager();
        ChunkBuffer chunk = new ChunkBuffer(Math.max(64, length / 2));
        try (OutputStream out =
                wrapper.wrapStream(new ShuffleBlockId(handle.shuffleId(), mapId, reduceId), chunk)) {
            out.write(raw, 0, length);
        }
        long start = System.nanoTime();
        byte[] bytes = chunk.array();
        int size = chunk.size();
        for (int offset = 0; offset < size; ) {
            int len = Math.min(config.pieceSize, size - offset);
            int type = offset + len == size ? CHUNK_END : CONTINUED;
            write(reduceId, bytes, offset, len, type);
            offset += len;
        }
        sizes[reduceId] += size;
        metrics.incBytesWritten(size);
        metrics.incWriteTime(System.nanoTime() - start);
    }

    private void write(int reduceId, byte[] bytes, int offset, int len, int type)
            throws TerraceNativeException {
        if (!segmentStarted[reduceId]) {
            NativeBridge.producerStartSegment(producer, reduceId, segments[reduceId], 1);
            segmentStarted[reduceId] = true;
        }
        while (NativeBridge.producerWriteArray(producer, reduceId, bytes, offset, len, type, false, 0)
                == NativeBridge.WRITE_SEGMENT_FULL) {
            segments[reduceId]++;
            NativeBridge.producerStartSegment(producer, reduceId, segments[reduceId], 1);
        }
    }

    /** Serialized records per reduce partition, bounded in total. */
    private abstract class Buffers {
        final ChunkBuffer[] raw = new ChunkBuffer[numPartitions];
        long buffered;

        abstract void add(int reduceId, Object key, Object value) throws IOException;

        /** Ends the chunk of {@code reduceId} (its stream, if it has one) and pushes it. */
        abstract void flush(int reduceId) throws IOException;

        ChunkBuffer buffer(int reduceId) {
            ChunkBuffer b = raw[reduceId];
            if (b == null) {
                b = new ChunkBuffer(Math.min(config.chunkSize, 32 << 10));
                raw[reduceId] = b;
            }
            return b;
        }

        /** After {@code grown} bytes were added to {@code reduceId}'s buffer. */
        void added(int reduceId, long grown) throws IOException {
            buffered += grown;
            if (raw[reduceId].size() >= config.chunkSize) {
                flush(reduceId);
            }
            while (buffered > config.writerBufferSize) {
                int largest = -1;
                for (int p = 0; p < numPartitions; p++) {
                    if (raw[p] != null && (largest < 0 || raw[p].size() > raw[largest].size())) {
                        largest = p;
                    }
                }
                flush(largest);
            }
        }

        void pushed(int reduceId) throws IOException {
            ChunkBuffer b = raw[reduceId];
            pushChunk(reduceId, b.array(), b.size());
            buffered -= b.size();
            // A buffer grown for a large record is not kept.
            if (b.capacity() > 2 * config.chunkSize) {
                raw[reduceId] = null;
            } else {
                b.reset();
            }
        }

        void flushAll() throws IOException {
            for (int p = 0; p < numPartitions; p++) {
                if (raw[p] != null) {
                    flush(p);
                }
            }
        }
    }

    /** One serialization stream; each record's bytes are moved to its reduce partition. */
    private final class SharedStreamBuffers extends Buffers {
        private final ChunkBuffer scratch = new ChunkBuffer(64 << 10);
        private final SerializationStream stream;

        SharedStreamBuffers(SerializerInstance serializer) {
            this.stream = serializer.serializeStream(scratch);
        }

        @Override
        void add(int reduceId, Object key, Object value) throws IOException {
            stream.writeKey(key, OBJECT);
            stream.writeValue(value, OBJECT);
            stream.flush();
            int n = scratch.size();
            buffer(reduceId).write(scratch.array(), 0, n);
            scratch.reset();
            added(reduceId, n);
        }

        @Override
        void flush(int reduceId) throws IOException {
            if (raw[reduceId].size() > 0) {
                pushed(reduceId);
            }
        }

        @Override
        void flushAll() throws IOException {
            super.flushAll();
            stream.close();
        }
    }

    /** A serialization stream per reduce partition with buffered records, ended with each chunk. */
    private final class StreamPerPartitionBuffers extends Buffers {
        private final SerializerInstance serializer;
        private final SerializationStream[] streams = new SerializationStream[numPartitions];

        StreamPerPartitionBuffers(SerializerInstance serializer) {
            this.serializer = serializer;
        }

        @Override
        void add(int reduceId, Object key, Object value) throws IOException {
            ChunkBuffer b = buffer(reduceId);
            SerializationStream s = streams[reduceId];
            if (s == null) {
                s = serializer.serializeStream(b);
                streams[reduceId] = s;
            }
            int before = b.size();
            s.writeKey(key, OBJECT);
            s.writeValue(value, OBJECT);
            added(reduceId, b.size() - before);
        }

        @Override
        void flush(int reduceId) throws IOException {
            SerializationStream s = streams[reduceId];
            if (s == null) {
                return;
            }
            streams[reduceId] = null;
            int before = raw[reduceId].size();
            s.close();
            buffered += raw[reduceId].size() - before;
            pushed(reduceId);
        }
    }
}

package dev.terrace.spark;

import dev.terrace.bridge.NativeBridge;
import dev.terrace.bridge.NativeBridgeCalls;
import dev.terrace.bridge.TerraceNativeException;

import org.apache.spark.Aggregator;
import org.apache.spark.InterruptibleIterator;
import org.apache.spark.ShuffleDependency;
import org.apache.spark.SparkEnv;
import org.apache.spark.TaskContext;
import org.apache.spark.serializer.SerializerInstance;
import org.apache.spark.serializer.SerializerManager;
import org.apache.spark.shuffle.FetchFailedException;
import org.apache.spark.shuffle.ShuffleReadMetricsReporter;
import org.apache.spark.shuffle.ShuffleReader;
import org.apache.spark.storage.BlockId;
import org.apache.spark.storage.BlockManagerId;
import org.apache.spark.storage.ShuffleBlockId;
import org.apache.spark.util.TaskCompletionListener;
import org.apache.spark.util.collection.ExternalSorter;

import scala.Option;
import scala.Product2;
import scala.Tuple2;
import scala.Tuple3;
import scala.collection.Iterator;
import scala.collection.JavaConverters;
import scala.math.Ordering;

import java.io.ByteArrayInputStream;
import java.io.IOException;
import java.lang.reflect.Array;
import java.lang.reflect.Constructor;
import java.nio.ByteBuffer;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.NoSuchElementException;

/**
 * Reads reduce partitions {@code [startPartition, endPartition)} of the map outputs {@code
 * [startMapIndex, endMapIndex)}: the map outputs Spark's tracker lists (the attempts Spark
 * registered, and only those with data in the range), each one stream of one Terrace consumer,
 * {@code spark.terrace.spark.reader-streams} streams at a time (bounded memory: the consumer
 * keeps {@code terrace.read-credits} batches per stream), the streams of a round fetched from
 * every worker at once with credit-based flow control.
 *
 * <p>A map output lost or corrupt ends the task with a {@link FetchFailedException} naming it and
 * its worker, so Spark runs again the map tasks whose outputs were on that worker.
 */
final class TerraceShuffleReader<K, C> implements ShuffleReader<K, C> {
    private final TerraceShuffleHandle<K, ?, C> handle;
    private final ShuffleDependency<K, ?, C> dep;
    private final int startMapIndex;
    private final int endMapIndex;
    private final int startPartition;
    private final int endPartition;
    private final TaskContext context;
    private final ShuffleReadMetricsReporter metrics;
    private final SparkTerraceConfig config;

    TerraceShuffleReader(
            TerraceShuffleHandle<K, ?, C> handle,
            int startMapIndex,
            int endMapIndex,
            int startPartition,
            int endPartition,
            TaskContext context,
            ShuffleReadMetricsReporter metrics,
            SparkTerraceConfig config) {
        this.handle = handle;
        this.dep = handle.dependency();
        this.startMapIndex = startMapIndex;
        this.endMapIndex = endMapIndex;
        this.startPartition = startPartition;
        this.endPartition = endPartition;
        this.context = context;
        this.metrics = metrics;
        this.config = config;
    }

    /** One map output to read: its attempt, where it is, and its reduce partitions with data. */
    static final class MapInput {
        final long mapId;
        final int mapIndex;
        final BlockManagerId location;
        int firstReduce = Integer.MAX_VALUE;
        int lastReduce = -1;

        MapInput(long mapId, int mapIndex, BlockManagerId location) {
            this.mapId = mapId;
            this.mapIndex = mapIndex;
            this.location = location;
        }
    }

    @Override
    @SuppressWarnings({"unchecked", "rawtypes"})
    public Iterator<Product2<K, C>> read() {
        List<MapInput> inputs = mapInputs();
        SerializerInstance serializer = dep.serializer().newInstance();
        Records records = new Records(inputs, serializer);
        context.addTaskCompletionListener(
                new TaskCompletionListener() {
                    @Override
                    public void onTaskCompletion(TaskContext ctx) {
                        records.close();
                    }
                });
        Iterator<Product2<K, Object>> raw = JavaConverters.asScalaIterator(records);
        Iterator<Product2<K, C>> out;
        Option<Aggregator<K, ?, C>> aggregator = (Option) dep.aggregator();
        if (aggregator.isDefined()) {
            if (dep.mapSideCombine()) {
                out = (Iterator) aggregator.get().combineCombinersByKey((Iterator) raw, context);
            } else {
                out = (Iterator) aggregator.get().combineValuesByKey((Iterator) raw, context);
            }
        } else {
            out = (Iterator) raw;
        }
        Option<Ordering<K>> ordering = dep.keyOrdering();
        if (ordering.isDefined()) {
            ExternalSorter<K, C, C> sorter = sorter(ordering.get());
            out = sorter.insertAllAndUpdateMetrics((Iterator) out);
        }
        return new InterruptibleIterator<>(context, out);
    }

    /**
     * An {@code ExternalSorter} that only sorts: its constructor gained a trailing {@code
     * RowBasedChecksum[]} in Spark 4.1.
     */
    @SuppressWarnings("unchecked")
    private ExternalSorter<K, C, C> sorter(Ordering<K> ordering) {
        try {
            for (Constructor<?> c : ExternalSorter.class.getConstructors()) {
                Class<?>[] types = c.getParameterTypes();
                if (types.length < 5 || types[0] != TaskContext.class) {
                    continue;
                }
                Object[] args = new Object[types.length];
                args[0] = context;
                args[1] = Option.empty();
                args[2] = Option.empty();
                args[3] = Option.apply(ordering);
                args[4] = dep.serializer();
                if (types.length == 6 && types[5].isArray()) {
                    args[5] = Array.newInstance(types[5].getComponentType(), 0);
                } else if (types.length != 5) {
                    continue;
                }
                return (ExternalSorter<K, C, C>) c.newInstance(args);
            }
        } catch (ReflectiveOperationException e) {
            throw new IllegalStateException("cannot build Spark's ExternalSorter", e);
        }
        throw new IllegalStateException("this Spark's ExternalSorter has no known constructor");
    }

    /** The map outputs with data in the range, from Spark's map output tracker. */
    private List<MapInput> mapInputs() {
        Iterator<Tuple2<BlockManagerId, scala.collection.Seq<Tuple3<BlockId, Object, Object>>>> blocks =
                SparkEnv.get()
                        .mapOutputTracker()
                        .getMapSizesByExecutorId(
                                handle.shuffleId(), startMapIndex, endMapIndex, startPartition, endPartition);
        Map<Long, MapInput> byMap = new LinkedHashMap<>();
        while (blocks.hasNext()) {
            Tuple2<BlockManagerId, scala.collection.Seq<Tuple3<BlockId, Object, Object>>> at = blocks.next();
            MapOutputs.workerId(at._1());
            Iterator<Tuple3<BlockId, Object, Object>> it = at._2().iterator();
            while (it.hasNext()) {
                Tuple3<BlockId, Object, Object> block = it.next();
                if (!(block._1() instanceof ShuffleBlockId)) {
                    throw new IllegalStateException("unexpected block " + block._1() + " in a Terrace shuffle");
                }
                ShuffleBlockId id = (ShuffleBlockId) block._1();
                if ((Long) block._2() == 0) {
                    continue;
                }
                MapInput input =
                        byMap.computeIfAbsent(
                                id.mapId(), m -> new MapInput(m, (Integer) block._3(), at._1()));
                input.firstReduce = Math.min(input.firstReduce, id.reduceId());
                input.lastReduce = Math.max(input.lastReduce, id.reduceId());
            }
        }
        return new ArrayList<>(byMap.values());
    }

    @SuppressWarnings("unchecked")
    private static <T extends Throwable> void sneakyThrow(Throwable t) throws T {
        throw (T) t;
    }

    /** The records of every map input, chunk by chunk, round by round. */
    private final class Records implements java.util.Iterator<Product2<K, Object>> {
        private final List<MapInput> inputs;
        private final SerializerInstance serializer;
        private final SerializerManager wrapper = SparkEnv.get().serializerManager();
        private int nextInput;
        private Round round;
        private Iterator<Tuple2<Object, Object>> current;
        private boolean closed;

        Records(List<MapInput> inputs, SerializerInstance serializer) {
            this.inputs = inputs;
            this.serializer = serializer;
        }

        @Override
        public boolean hasNext() {
            while (current == null || !current.hasNext()) {
                Chunk chunk = nextChunk();
                if (chunk == null) {
                    close();
                    return false;
                }
                try {
                    BlockId block = new ShuffleBlockId(handle.shuffleId(), chunk.input.mapId, chunk.reduceId);
                    current =
                            serializer
                                    .deserializeStream(
                                            wrapper.wrapStream(block, new ByteArrayInputStream(chunk.bytes)))
                                    .asKeyValueIterator();
                } catch (RuntimeException e) {
                    fetchFailed(chunk.input, chunk.reduceId, "undecodable chunk", e);
                }
            }
            return true;
        }

        @Override
        @SuppressWarnings("unchecked")
        public Product2<K, Object> next() {
            if (!hasNext()) {
                throw new NoSuchElementException();
            }
            metrics.incRecordsRead(1);
            return (Product2<K, Object>) (Product2<?, ?>) current.next();
        }

        private Chunk nextChunk() {
            while (true) {
                if (round == null) {
                    if (nextInput >= inputs.size()) {
                        return null;
                    }
                    int end = Math.min(inputs.size(), nextInput + config.readerStreams);
                    round = new Round(inputs.subList(nextInput, end));
                    nextInput = end;
                }
                Chunk chunk = round.next();
                if (chunk != null) {
                    return chunk;
                }
                round.close();
                round = null;
            }
        }

        void close() {
            if (!closed) {
                closed = true;
                if (round != null) {
                    round.close();
                    round = null;
                }
            }
        }
    }

    /** A complete chunk of one reduce partition of one map output. */
    static final class Chunk {
        final MapInput input;
        final int reduceId;
        final byte[] bytes;

        Chunk(MapInput input, int reduceId, byte[] bytes) {
            this.input = input;
            this.reduceId = reduceId;
            this.bytes = bytes;
        }
    }

    /** One consumer reading a group of map inputs, a stream each. */
    private final class Round {
        private final List<MapInput> inputs;
        private final long consumer;
        private final boolean[] done;
        /** Per stream and reduce partition (offset by firstReduce): the segment being read. */
        private final int[][] segments;
        /** Per stream and reduce partition: the pieces of a chunk received so far. */
        private final ChunkBuffer[][] partial;
        private final int[] ready;
        /** Per stream: reduce partitions below this one are read to their end. */
        private final int[] finishedUpTo;
        private ByteBuffer dst = ByteBuffer.allocateDirect(config.pieceSize);
        private int remaining;

        Round(List<MapInput> inputs) {
            this.inputs = inputs;
            int n = inputs.size();
            this.done = new boolean[n];
            this.segments = new int[n][];
            this.partial = new ChunkBuffer[n][];
            this.ready = new int[n];
            this.finishedUpTo = new int[n];
            this.remaining = n;
            byte[][] partitionIds = new byte[n][];
            int[] channels = new int[n];
            int[] first = new int[n];
            int[] last = new int[n];
            String[] fields = new String[5 * n];
            for (int i = 0; i < n; i++) {
                MapInput in = inputs.get(i);
                partitionIds[i] = MapOutputs.partitionId(in.mapId, in.mapIndex);
                channels[i] = i;
                first[i] = in.firstReduce;
                last[i] = in.lastReduce;
                segments[i] = new int[in.lastReduce - in.firstReduce + 1];
                partial[i] = new ChunkBuffer[in.lastReduce - in.firstReduce + 1];
                finishedUpTo[i] = in.firstReduce;
                fields[5 * i] = handle.jobHex;
                fields[5 * i + 1] = MapOutputs.hex(partitionIds[i]);
                fields[5 * i + 2] = MapOutputs.workerId(in.location);
                fields[5 * i + 3] = MapOutputs.workerAddress(in.location);
                fields[5 * i + 4] = handle.token;
            }
            long c = 0;
            try {
                c = NativeBridge.consumerOpen(config.flat(), partitionIds, channels, first, last, fields);
                NativeBridge.consumerStart(c);
            } catch (TerraceNativeException e) {
                if (c != 0) {
                    long opened = c;
                    NativeBridgeCalls.quietly(() -> NativeBridge.consumerClose(opened));
                }
                sneakyThrow(new IOException("open a Terrace consumer for shuffle " + handle.shuffleId(), e));
            }
            this.consumer = c;
        }

        /** The next complete chunk of any stream, waiting for one; null once every stream is done. */
        Chunk next() {
            while (remaining > 0) {
                boolean progress = false;
                for (int s = 0; s < inputs.size(); s++) {
                    if (done[s]) {
                        continue;
                    }
                    Chunk chunk = poll(s);
                    if (chunk != null) {
                        return chunk;
                    }
                }
                if (remaining == 0) {
                    break;
                }
                long start = System.nanoTime();
                try {
                    NativeBridge.consumerWaitEvents(consumer, 100, ready);
                } catch (TerraceNativeException e) {
                    sneakyThrow(new IOException("wait for Terrace shuffle data", e));
                }
                metrics.incFetchWaitTime((System.nanoTime() - start) / 1_000_000);
            }
            return null;
        }

        /** A complete chunk of stream {@code s}, or null when it has none ready (or is done). */
        private Chunk poll(int s) {
            MapInput in = inputs.get(s);
            try {
                while (true) {
                    int sub = NativeBridge.consumerPeek(consumer, s, in.firstReduce, in.lastReduce);
                    if (sub < 0) {
                        break;
                    }
                    int slot = sub - in.firstReduce;
                    long header = NativeBridge.consumerPoll(consumer, s, sub, segments[s][slot], dst);
                    if (header == NativeBridge.POLL_EMPTY) {
                        break;
                    }
                    if (header < NativeBridge.POLL_EMPTY) {
                        dst = ByteBuffer.allocateDirect(NativeBridge.requiredCapacity(header));
                        continue;
                    }
                    int type = NativeBridge.headerDataType(header);
                    int length = NativeBridge.headerLength(header);
                    if (type == TerraceShuffleWriter.END_OF_SEGMENT) {
                        segments[s][slot]++;
                        continue;
                    }
                    if (type != TerraceShuffleWriter.CHUNK_END && type != TerraceShuffleWriter.CONTINUED) {
                        fetchFailed(in, sub, "unexpected buffer type " + type, null);
                    }
                    byte[] piece = new byte[length];
                    dst.position(0);
                    dst.get(piece, 0, length);
                    metrics.incRemoteBytesRead(length);
                    ChunkBuffer parts = partial[s][slot];
                    if (type == TerraceShuffleWriter.CONTINUED) {
                        if (parts == null) {
                            parts = new ChunkBuffer(Math.max(length * 2, 64));
                            partial[s][slot] = parts;
                        }
                        parts.write(piece, 0, length);
                        continue;
                    }
                    if (parts != null) {
                        parts.write(piece, 0, length);
                        partial[s][slot] = null;
                        piece = parts.toByteArray();
                    }
                    return new Chunk(in, sub, piece);
                }
                // Nothing ready: is every reduce partition of this stream read to its end?
                while (finishedUpTo[s] <= in.lastReduce) {
                    if (!NativeBridge.consumerFinished(consumer, s, finishedUpTo[s])) {
                        return null;
                    }
                    finishedUpTo[s]++;
                }
                for (ChunkBuffer parts : partial[s]) {
                    if (parts != null) {
                        fetchFailed(in, in.firstReduce, "a chunk ends in the middle", null);
                    }
                }
                done[s] = true;
                remaining--;
                metrics.incRemoteBlocksFetched(in.lastReduce - in.firstReduce + 1);
                return null;
            } catch (TerraceNativeException e) {
                switch (e.kind()) {
                    case PARTITION_NOT_FOUND:
                    case DATA_CORRUPTION:
                    case IO:
                        fetchFailed(in, in.firstReduce, e.getMessage(), e);
                        break;
                    default:
                        sneakyThrow(new IOException("read shuffle " + handle.shuffleId() + " from Terrace", e));
                }
                return null;
            }
        }

        void close() {
            NativeBridgeCalls.quietly(() -> NativeBridge.consumerClose(consumer));
        }
    }

    /** Ends the task: the map output of {@code input} cannot be read. */
    private void fetchFailed(MapInput input, int reduceId, String message, Throwable cause) {
        String text =
                "Terrace map output of shuffle "
                        + handle.shuffleId()
                        + " map "
                        + input.mapIndex
                        + " (attempt "
                        + input.mapId
                        + ") on worker "
                        + MapOutputs.workerId(input.location)
                        + " is lost or corrupt: "
                        + message;
        sneakyThrow(
                new FetchFailedException(
                        input.location, handle.shuffleId(), input.mapId, input.mapIndex, reduceId, text, cause));
    }
}

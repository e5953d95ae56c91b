package dev.terrace.spark;

import org.apache.spark.scheduler.MapStatus;
import org.apache.spark.storage.BlockManagerId;

import scala.Option;

import java.lang.reflect.Method;
import java.lang.reflect.Modifier;
import java.nio.ByteBuffer;
import java.nio.charset.StandardCharsets;

/**
 * How Terrace's map outputs appear to Spark, and back.
 *
 * <p>A map task attempt's output is one Terrace partition; its id is the attempt's {@code mapId}
 * (Spark's task attempt id, unique in the application) and map index. Its {@link MapStatus} is
 * "located" at a block manager id that names the Terrace worker holding the partition's first
 * part: executor id {@code terrace-worker:<worker id>}, the worker's host and port. So:
 *
 * <ul>
 *   <li>a reader rebuilds every descriptor from what Spark's map output tracker gives it (the
 *       location, the map id, the map index) and the shuffle handle (job and token);
 *   <li>an executor that goes away takes no map output with it (none is located at it);
 *   <li>a fetch failure naming a worker's location makes Spark unregister the map outputs on that
 *       worker, and run again exactly those map tasks.
 * </ul>
 */
final class MapOutputs {
    static final String EXECUTOR_PREFIX = "terrace-worker:";

    private static final Method MAP_STATUS_APPLY = mapStatusApply();

    private MapOutputs() {}

    /** Terrace partition id of a map task attempt: {@code mapId} (8 bytes), map index (4). */
    static byte[] partitionId(long mapId, int mapIndex) {
        return ByteBuffer.allocate(12).putLong(mapId).putInt(mapIndex).array();
    }

    static String hex(byte[] bytes) {
        StringBuilder sb = new StringBuilder(bytes.length * 2);
        for (byte b : bytes) {
            sb.append(Character.forDigit((b >> 4) & 0xF, 16)).append(Character.forDigit(b & 0xF, 16));
        }
        return sb.toString();
    }

    /** Terrace job id of one shuffle of one application run. */
    static byte[] jobId(String appRun, int shuffleId) {
        return ("spark/" + appRun + "/" + shuffleId).getBytes(StandardCharsets.UTF_8);
    }

    /** The location of map outputs whose partition starts on worker {@code id} at {@code address}. */
    static BlockManagerId location(String workerId, String workerAddress) {
        int colon = workerAddress.lastIndexOf(':');
        if (colon <= 0 || colon == workerAddress.length() - 1) {
            throw new IllegalArgumentException("worker address without a port: " + workerAddress);
        }
        String host = workerAddress.substring(0, colon);
        if (host.startsWith("[") && host.endsWith("]")) {
            host = host.substring(1, host.length() - 1);
        }
        int port = Integer.parseInt(workerAddress.substring(colon + 1));
        return BlockManagerId.apply(EXECUTOR_PREFIX + workerId, host, port, Option.empty());
    }

    /** Whether {@code location} is one of Terrace's, and its worker id. */
    static String workerId(BlockManagerId location) {
        String exec = location.executorId();
        if (!exec.startsWith(EXECUTOR_PREFIX)) {
            throw new IllegalStateException(
                    "map output at "
                            + location
                            + " was not written by Terrace (is spark.shuffle.manager the same on"
                            + " every executor?)");
        }
        return exec.substring(EXECUTOR_PREFIX.length());
    }

    static String workerAddress(BlockManagerId location) {
        String host = location.host();
        return (host.indexOf(':') >= 0 ? "[" + host + "]" : host) + ":" + location.port();
    }

    /**
     * {@code MapStatus.apply}: {@code (location, sizes, mapTaskId)} on Spark 3.5 and 4.0, {@code
     * (location, sizes, mapTaskId, checksumValue)} from 4.1 (a checksum of 0, as no row-based
     * checksum is computed).
     */
    static MapStatus mapStatus(BlockManagerId location, long[] sizes, long mapTaskId) {
        try {
            if (MAP_STATUS_APPLY.getParameterCount() == 3) {
                return (MapStatus) MAP_STATUS_APPLY.invoke(null, location, sizes, mapTaskId);
            }
            return (MapStatus) MAP_STATUS_APPLY.invoke(null, location, sizes, mapTaskId, 0L);
        } catch (ReflectiveOperationException e) {
            throw new IllegalStateException("MapStatus.apply failed", e);
        }
    }

    private static Method mapStatusApply() {
        for (int params : new int[] {4, 3}) {
            for (Method m : MapStatus.class.getMethods()) {
                if (m.getName().equals("apply")
                        && Modifier.isStatic(m.getModifiers())
                        && m.getParameterCount() == params
                        && m.getParameterTypes()[0] == BlockManagerId.class
                        && m.getParameterTypes()[1] == long[].class) {
                    return m;
                }
            }
        }
        throw new IllegalStateException(
                "this Spark has no MapStatus.apply(BlockManagerId, long[], long[, long])");
    }
}

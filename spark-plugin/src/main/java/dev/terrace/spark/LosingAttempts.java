package dev.terrace.spark;

import dev.terrace.bridge.TerraceNativeException;

import org.apache.spark.Success$;
import org.apache.spark.scheduler.SparkListener;
import org.apache.spark.scheduler.SparkListenerStageSubmitted;
import org.apache.spark.scheduler.SparkListenerTaskEnd;
import org.apache.spark.scheduler.StageInfo;
import org.apache.spark.scheduler.TaskInfo;
import org.slf4j.Logger;
import org.slf4j.LoggerFactory;

import scala.Option;

import java.util.Map;
import java.util.concurrent.ArrayBlockingQueue;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.RejectedExecutionException;
import java.util.concurrent.ThreadPoolExecutor;
import java.util.concurrent.TimeUnit;

/**
 * Driver: releases the partition of every map task attempt whose output Spark did not register:
 * attempts that failed, were killed (the losers of speculation among them, and an attempt that
 * finished after another one had already succeeded), or whose executor was lost. Spark registers
 * a map output only when its attempt ends in success, so every other attempt's partition is
 * garbage from the moment its end reaches the driver; without this it would stay on the workers
 * until its shuffle is unregistered.
 *
 * <p>Releases run on one daemon thread, so the listener bus never waits for the network; they are
 * queued up to {@link #QUEUE} at a time (past that an attempt's partition is left to its shuffle's
 * unregistration, and logged).
 */
final class LosingAttempts extends SparkListener {
    private static final Logger LOG = LoggerFactory.getLogger(LosingAttempts.class);
    private static final int QUEUE = 10_000;

    /** What the listener needs of the shuffle manager. */
    interface Jobs {
        /** The Terrace job of a registered shuffle, or null. */
        byte[] job(int shuffleId);

        /** Releases a partition of {@code job}; true when a worker held it. */
        boolean release(byte[] job, byte[] partition) throws TerraceNativeException;
    }

    private final Jobs jobs;
    /** The shuffle each map stage writes (a map stage's tasks end after it was submitted). */
    private final Map<Integer, Integer> stageShuffles = new ConcurrentHashMap<>();
    private final ThreadPoolExecutor releaser;

    LosingAttempts(Jobs jobs) {
        this.jobs = jobs;
        this.releaser =
                new ThreadPoolExecutor(
                        1,
                        1,
                        0,
                        TimeUnit.MILLISECONDS,
                        new ArrayBlockingQueue<>(QUEUE),
                        r -> {
                            Thread t = new Thread(r, "terrace-release-attempts");
                            t.setDaemon(true);
                            return t;
                        });
    }

    @Override
    public void onStageSubmitted(SparkListenerStageSubmitted event) {
        StageInfo stage = event.stageInfo();
        Option<Object> shuffle = stage.shuffleDepId();
        if (shuffle.isDefined()) {
            stageShuffles.put(stage.stageId(), (Integer) shuffle.get());
        }
    }

    @Override
    public void onTaskEnd(SparkListenerTaskEnd event) {
        if (!"ShuffleMapTask".equals(event.taskType()) || event.reason() == Success$.MODULE$) {
            return;
        }
        Integer shuffleId = stageShuffles.get(event.stageId());
        TaskInfo task = event.taskInfo();
        if (shuffleId == null || task == null || task.partitionId() < 0) {
            return;
        }
        int shuffle = shuffleId;
        long mapId = task.taskId();
        int mapIndex = task.partitionId();
        String why = event.reason().getClass().getSimpleName().replace("$", "");
        try {
            releaser.execute(() -> release(shuffle, mapId, mapIndex, why));
        } catch (RejectedExecutionException e) {
            LOG.warn(
                    "too many releases queued: the partition of map {} attempt {} of shuffle {}"
                            + " stays until the shuffle is unregistered",
                    mapIndex,
                    mapId,
                    shuffle);
        }
    }

    private void release(int shuffle, long mapId, int mapIndex, String why) {
        byte[] job = jobs.job(shuffle);
        if (job == null) {
            return; // unregistered meanwhile: its data went with it
        }
        try {
            boolean held = jobs.release(job, MapOutputs.partitionId(mapId, mapIndex));
            LOG.info(
                    "shuffle {}: map {} attempt {} ended without its output registered ({});"
                            + " its partition {}",
                    shuffle,
                    mapIndex,
                    mapId,
                    why,
                    held ? "was released" : "was not placed");
        } catch (TerraceNativeException | RuntimeException e) {
            LOG.warn(
                    "shuffle {}: could not release the partition of map {} attempt {}; it goes"
                            + " when the shuffle is unregistered",
                    shuffle,
                    mapIndex,
                    mapId,
                    e);
        }
    }

    /** Forgets the stages of a shuffle that was unregistered. */
    void forget(int shuffleId) {
        stageShuffles.values().removeIf(s -> s == shuffleId);
    }

    void stop() {
        releaser.shutdownNow();
    }
}

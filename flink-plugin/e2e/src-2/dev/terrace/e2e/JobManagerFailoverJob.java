package dev.terrace.e2e;

import org.apache.flink.api.common.JobID;
import org.apache.flink.configuration.BatchExecutionOptions;
import org.apache.flink.configuration.Configuration;
import org.apache.flink.core.fs.FileStatus;
import org.apache.flink.core.fs.FileSystem;
import org.apache.flink.core.fs.Path;
import org.apache.flink.runtime.execution.ExecutionState;
import org.apache.flink.runtime.executiongraph.AccessExecutionGraph;
import org.apache.flink.runtime.executiongraph.AccessExecutionVertex;
import org.apache.flink.runtime.highavailability.HighAvailabilityServicesUtils;
import org.apache.flink.runtime.highavailability.nonha.embedded.HaLeadershipControl;
import org.apache.flink.runtime.jobmaster.event.ExecutionVertexFinishedEvent;
import org.apache.flink.runtime.jobmaster.event.JobEvents;
import org.apache.flink.runtime.jobmaster.JobResult;
import org.apache.flink.runtime.minicluster.MiniCluster;
import org.apache.flink.runtime.minicluster.MiniClusterConfiguration;

import java.io.DataInputStream;
import java.io.EOFException;
import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Paths;
import java.util.concurrent.TimeUnit;

/**
 * The keyed-aggregation job on a MiniCluster whose JobManager fails over mid-job (Flink 2.x).
 *
 * <p>Usage as {@link KeyedAggregationJob}, with {@code job.gate=FILE} required and Flink's {@code
 * high-availability.storageDir} set. The job's shuffle-1 consumers wait for the gate file; once
 * every shuffle-1 producer has finished, the JobMaster's leadership is revoked and granted again
 * (a new JobMaster takes the job over, as after a JobManager failover), then the gate opens and
 * the job runs to its end. Whether the new JobMaster reuses the finished producers' partitions
 * (with {@code execution.batch.job-recovery.enabled}) or runs them again shows in Flink's task
 * state log.
 */
public final class JobManagerFailoverJob {

    /** The shuffle-1 producers, as the job names them. */
    private static final String PRODUCERS = "make-records";

    public static void main(String[] args) throws Exception {
        KeyedAggregationJob.run(args, JobManagerFailoverJob::runWithFailover);
    }

    private static void runWithFailover(
            org.apache.flink.streaming.api.environment.StreamExecutionEnvironment env,
            Configuration conf,
            String gate)
            throws Exception {
        if (gate == null) {
            throw new IllegalArgumentException("JobManagerFailoverJob needs job.gate=FILE");
        }
        // The Terrace adapter writes the cluster-level shuffle snapshot Flink 2.x's Dispatcher
        // needs to start with job recovery on (see its ClusterShuffleSnapshot).
        Configuration cluster = new Configuration(conf);
        MiniClusterConfiguration config =
                new MiniClusterConfiguration.Builder()
                        .setConfiguration(cluster)
                        .setNumTaskManagers(1)
                        .setNumSlotsPerTaskManager(env.getParallelism())
                        .setHaServices(MiniCluster.HaServices.WITH_LEADERSHIP_CONTROL)
                        .build();
        try (MiniCluster miniCluster = new MiniCluster(config)) {
            miniCluster.start();
            JobID job = miniCluster.submitJob(env.getStreamGraph()).get().getJobID();
            awaitProducersFinished(miniCluster, job);
            awaitFinishedEventsStored(cluster, job, env.getParallelism());
            HaLeadershipControl leadership =
                    miniCluster
                            .getHaLeadershipControl()
                            .orElseThrow(() -> new IllegalStateException("no leadership control"));
            System.out.println("failover: revoking the JobMaster's leadership of " + job);
            leadership.revokeJobMasterLeadership(job).get(60, TimeUnit.SECONDS);
            System.out.println("failover: granting it again");
            leadership.grantJobMasterLeadership(job).get(60, TimeUnit.SECONDS);
            Files.write(Paths.get(gate), new byte[0]);
            JobResult result = miniCluster.requestJobResult(job).get(240, TimeUnit.SECONDS);
            if (!result.isSuccess()) {
                throw new IllegalStateException(
                        "the job failed after the JobManager failover",
                        result.getSerializedThrowable().orElse(null));
            }
            System.out.println("failover: the job finished after the JobManager failover");
        }
    }

    /** Waits (up to 120 s) until every shuffle-1 producer subtask has finished. */
    private static void awaitProducersFinished(MiniCluster miniCluster, JobID job)
            throws Exception {
        long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(120);
        while (true) {
            AccessExecutionGraph graph = miniCluster.getExecutionGraph(job).get();
            int producers = 0;
            int finished = 0;
            for (AccessExecutionVertex v : graph.getAllExecutionVertices()) {
                if (v.getTaskNameWithSubtaskIndex().contains(PRODUCERS)) {
                    producers++;
                    if (v.getExecutionState() == ExecutionState.FINISHED) {
                        finished++;
                    }
                }
            }
            if (producers > 0 && finished == producers) {
                System.out.println("failover: all " + producers + " producers finished");
                return;
            }
            if (System.nanoTime() > deadline) {
                throw new IllegalStateException(
                        finished + " of " + producers + " producers finished within 120 s");
            }
            Thread.sleep(100);
        }
    }

    /**
     * Waits (up to 120 s) until Flink's job event store holds a finished event for every producer,
     * when job recovery is on. Flink writes those events on a thread of its own, and the last
     * producer's waits for the source coordinator's snapshot: a JobManager that fails over before
     * the write loses the event, and Flink runs the producers again by design. Under load that
     * window lasted long enough for this job's failover to hit it (the event failed with
     * "Serialize ExecutionVertexFinishedEvent ... failed", interrupted). The failover this job
     * means to show comes after the events are stored.
     */
    private static void awaitFinishedEventsStored(Configuration conf, JobID job, int producers)
            throws Exception {
        if (!conf.get(BatchExecutionOptions.JOB_RECOVERY_ENABLED)) {
            return;
        }
        Path dir =
                new Path(
                        HighAvailabilityServicesUtils.getClusterHighAvailableStoragePath(conf),
                        job + "/job-events");
        int finishedType = JobEvents.getTypeID(ExecutionVertexFinishedEvent.class);
        long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(120);
        int stored = 0;
        while (true) {
            stored = countEvents(dir, finishedType);
            if (stored >= producers) {
                System.out.println(
                        "failover: " + stored + " producer-finished events stored in " + dir);
                return;
            }
            if (System.nanoTime() > deadline) {
                throw new IllegalStateException(
                        stored + " producer-finished events stored in " + dir + " within 120 s");
            }
            Thread.sleep(100);
        }
    }

    /**
     * Events of {@code type} in the job event files under {@code dir} as written so far: each event
     * is its type, its length and its bytes (Flink's FileSystemJobEventStore); a file cut short
     * by a write in progress ends the count of that file.
     */
    private static int countEvents(Path dir, int type) throws IOException {
        FileSystem fs = dir.getFileSystem();
        if (!fs.exists(dir)) {
            return 0;
        }
        int count = 0;
        FileStatus[] files = fs.listStatus(dir);
        for (FileStatus file : files == null ? new FileStatus[0] : files) {
            if (!file.getPath().getName().startsWith("events.")) {
                continue;
            }
            try (DataInputStream in = new DataInputStream(fs.open(file.getPath()))) {
                while (true) {
                    int eventType = in.readInt();
                    int length = in.readInt();
                    if (length < 0 || in.skipBytes(length) < length) {
                        break;
                    }
                    if (eventType == type) {
                        count++;
                    }
                }
            } catch (EOFException end) {
                // the end of what is written
            }
        }
        return count;
    }

    private JobManagerFailoverJob() {}
}

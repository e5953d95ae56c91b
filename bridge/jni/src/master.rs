//! The master agent behind `NativeBridge.master*` (Flink JobManager side):
//! jobs, partition placement, releases, and lost-partition events.

use std::sync::Arc;
use std::time::Duration;

use jni::JNIEnv;
use jni::objects::{JByteArray, JClass, JObjectArray, JString};
use jni::sys::{jboolean, jbyteArray, jlong, jobjectArray};
use terrace_master_agent::MasterAgent;
use terrace_tier_api::{
    JobId, PartitionId, ShuffleDescriptor, TierError, TierMasterAgent, TierShuffleHandler,
};

use crate::boundary::entry;
use crate::config::parse_config;
use crate::error::{NativeError, NativeResult};
use crate::events::{LostEvent, WaitQueue, Waited, encode_events};
use crate::handles::{HandleKind, HandleTable};
use crate::java;
use crate::library::init_logging;

/// Flink 1.20's `addPartitionAndGetShuffleDescriptor` does not say how many
/// subpartitions a partition has; the master only checks it is positive (the
/// producer tells the worker the real number when it creates the partition).
const UNKNOWN_NUM_SUBPARTITIONS: u32 = 1;

struct NativeMaster {
    agent: MasterAgent,
    events: Arc<WaitQueue<LostEvent>>,
}

static MASTERS: HandleTable<NativeMaster> = HandleTable::new(HandleKind::Master);

/// Turns the agent's callbacks for one job into queued events.
struct JobEvents {
    job: JobId,
    events: Arc<WaitQueue<LostEvent>>,
}

impl TierShuffleHandler for JobEvents {
    fn on_release_partitions(&self, partitions: Vec<PartitionId>) {
        self.events.push(LostEvent::Partitions {
            job: self.job.clone(),
            partitions,
        });
    }

    fn on_fatal_error(&self, error: TierError) {
        self.events.push(LostEvent::Fatal {
            job: self.job.clone(),
            message: error.to_string(),
        });
    }
}

fn job_id(env: &mut JNIEnv<'_>, job: &JByteArray<'_>) -> NativeResult<JobId> {
    Ok(JobId::new(java::bytes(env, "job id", job)?)?)
}

/// Strings of a descriptor on the Java side (`TerraceShuffleDescriptor`).
pub(crate) const DESCRIPTOR_FIELDS: usize = 5;

/// A descriptor as Java gets it: its [`DESCRIPTOR_FIELDS`] strings `{jobHex,
/// partitionHex, workerId, workerAddress, token}`.
pub(crate) fn descriptor_to_java<'l>(
    env: &mut JNIEnv<'l>,
    d: ShuffleDescriptor,
) -> NativeResult<JObjectArray<'l>> {
    let fields: [String; DESCRIPTOR_FIELDS] =
        [d.job, d.partition, d.worker_id, d.worker_address, d.token];
    java::string_array(env, &fields)
}

/// A descriptor from its Java fields.
pub(crate) fn descriptor_from(
    job: String,
    partition: String,
    worker_id: String,
    worker_address: String,
    token: String,
) -> NativeResult<ShuffleDescriptor> {
    let descriptor = ShuffleDescriptor {
        job,
        partition,
        worker_id,
        worker_address,
        token,
    };
    descriptor.key()?;
    Ok(descriptor)
}

#[unsafe(no_mangle)]
pub extern "system" fn Java_dev_terrace_bridge_NativeBridge_masterOpen<'l>(
    mut env: JNIEnv<'l>,
    _class: JClass<'l>,
    conf: JObjectArray<'l>,
) -> jlong {
    entry(&mut env, "open Terrace master agent", 0, |env| {
        let pairs = java::pairs(env, &conf)?;
        let config = parse_config(pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())))?;
        init_logging(&config.log_filter);
        let agent = MasterAgent::with_poll_interval(config.agent, config.master_poll_interval)?;
        Ok(MASTERS.insert(NativeMaster {
            agent,
            events: Arc::new(WaitQueue::default()),
        }))
    })
}

#[unsafe(no_mangle)]
pub extern "system" fn Java_dev_terrace_bridge_NativeBridge_masterRegisterJob<'l>(
    mut env: JNIEnv<'l>,
    _class: JClass<'l>,
    handle: jlong,
    job: JByteArray<'l>,
) {
    entry(&mut env, "register job with Terrace", (), |env| {
        let master = MASTERS.get(handle)?;
        let job = job_id(env, &job)?;
        let handler = Arc::new(JobEvents {
            job: job.clone(),
            events: Arc::clone(&master.events),
        });
        Ok(master.agent.register_job(&job, handler)?)
    })
}

#[unsafe(no_mangle)]
pub extern "system" fn Java_dev_terrace_bridge_NativeBridge_masterUnregisterJob<'l>(
    mut env: JNIEnv<'l>,
    _class: JClass<'l>,
    handle: jlong,
    job: JByteArray<'l>,
) {
    entry(&mut env, "unregister job from Terrace", (), |env| {
        let master = MASTERS.get(handle)?;
        let job = job_id(env, &job)?;
        Ok(master.agent.unregister_job(&job)?)
    })
}

/// Stops tracking the job without dropping its data (a JobManager that lost
/// its leadership; see `MasterAgent::detach_job`).
#[unsafe(no_mangle)]
pub extern "system" fn Java_dev_terrace_bridge_NativeBridge_masterDetachJob<'l>(
    mut env: JNIEnv<'l>,
    _class: JClass<'l>,
    handle: jlong,
    job: JByteArray<'l>,
) {
    entry(&mut env, "detach job from Terrace", (), |env| {
        let master = MASTERS.get(handle)?;
        let job = job_id(env, &job)?;
        Ok(master.agent.detach_job(&job)?)
    })
}

/// Tracks partitions an earlier JobManager placed: `fields` holds
/// [`DESCRIPTOR_FIELDS`] strings per descriptor, all of `job`.
#[unsafe(no_mangle)]
pub extern "system" fn Java_dev_terrace_bridge_NativeBridge_masterRestorePartitions<'l>(
    mut env: JNIEnv<'l>,
    _class: JClass<'l>,
    handle: jlong,
    job: JByteArray<'l>,
    fields: JObjectArray<'l>,
) {
    entry(&mut env, "restore Terrace partitions", (), |env| {
        let master = MASTERS.get(handle)?;
        let job = job_id(env, &job)?;
        let len = java::object_array_len(env, "descriptor fields", &fields)?;
        if len % DESCRIPTOR_FIELDS != 0 {
            return Err(NativeError::invalid(format!(
                "{len} descriptor fields are not whole descriptors of {DESCRIPTOR_FIELDS}"
            )));
        }
        let mut partitions = Vec::with_capacity(len / DESCRIPTOR_FIELDS);
        for first in (0..len).step_by(DESCRIPTOR_FIELDS) {
            let mut field = |i: usize| -> NativeResult<String> {
                java::string_element(env, "descriptor field", &fields, first + i)?
                    .ok_or_else(|| NativeError::invalid("a descriptor field is null"))
            };
            let d = descriptor_from(field(0)?, field(1)?, field(2)?, field(3)?, field(4)?)?;
            let key = d.key()?;
            if key.job != job {
                return Err(NativeError::invalid(format!(
                    "a descriptor of job {} restored for job {job}",
                    key.job
                )));
            }
            partitions.push((key.partition, d.worker_id));
        }
        Ok(master.agent.restore_partitions(&job, partitions)?)
    })
}

/// The stored bytes per subpartition of each finished partition among
/// `partitions` (a `byte[][]` of partition ids), within `timeout_millis`:
/// `n × (u16 len, partition id | u32 count | count × i64)`, big-endian.
#[unsafe(no_mangle)]
pub extern "system" fn Java_dev_terrace_bridge_NativeBridge_masterPartitionMetrics<'l>(
    mut env: JNIEnv<'l>,
    _class: JClass<'l>,
    handle: jlong,
    job: JByteArray<'l>,
    partitions: JObjectArray<'l>,
    timeout_millis: jlong,
) -> jbyteArray {
    entry(
        &mut env,
        "get Terrace partition metrics",
        std::ptr::null_mut(),
        |env| {
            let master = MASTERS.get(handle)?;
            let job = job_id(env, &job)?;
            let len = java::object_array_len(env, "partition ids", &partitions)?;
            let mut ids = Vec::with_capacity(len);
            for i in 0..len {
                ids.push(PartitionId::new(java::bytes_element(
                    env,
                    "partition id",
                    &partitions,
                    i,
                )?)?);
            }
            let timeout = Duration::from_millis(u64::try_from(timeout_millis).unwrap_or(0));
            let metrics = master.agent.partition_metrics(&job, &ids, timeout)?;
            let mut out = Vec::new();
            for (partition, bytes) in metrics {
                crate::events::put_bytes16(&mut out, partition.as_bytes());
                let n = u32::try_from(bytes.len()).map_err(|_| {
                    NativeError::invalid("a partition with more than 2^32 subpartitions")
                })?;
                out.extend_from_slice(&n.to_be_bytes());
                for b in bytes {
                    out.extend_from_slice(&i64::try_from(b).unwrap_or(i64::MAX).to_be_bytes());
                }
            }
            let array = env
                .byte_array_from_slice(&out)
                .map_err(|e| NativeError::jni("allocate partition metrics", e))?;
            Ok(array.into_raw())
        },
    )
}

/// Returns the descriptor's fields: `{jobHex, partitionHex, workerId, workerAddress, token}`.
#[unsafe(no_mangle)]
pub extern "system" fn Java_dev_terrace_bridge_NativeBridge_masterAddPartition<'l>(
    mut env: JNIEnv<'l>,
    _class: JClass<'l>,
    handle: jlong,
    job: JByteArray<'l>,
    partition: JByteArray<'l>,
) -> jobjectArray {
    entry(
        &mut env,
        "place partition on a Terrace worker",
        std::ptr::null_mut(),
        |env| {
            let master = MASTERS.get(handle)?;
            let job = job_id(env, &job)?;
            let partition = PartitionId::new(java::bytes(env, "partition id", &partition)?)?;
            let d = master.agent.add_partition_and_get_shuffle_descriptor(
                &job,
                &partition,
                UNKNOWN_NUM_SUBPARTITIONS,
            )?;
            Ok(descriptor_to_java(env, d)?.into_raw())
        },
    )
}

#[unsafe(no_mangle)]
pub extern "system" fn Java_dev_terrace_bridge_NativeBridge_masterReleasePartition<'l>(
    mut env: JNIEnv<'l>,
    _class: JClass<'l>,
    handle: jlong,
    job_hex: JString<'l>,
    partition_hex: JString<'l>,
    worker_id: JString<'l>,
    worker_address: JString<'l>,
    token: JString<'l>,
) {
    entry(
        &mut env,
        "release partition on its Terrace worker",
        (),
        |env| {
            let master = MASTERS.get(handle)?;
            let descriptor = descriptor_from(
                java::string(env, "job", &job_hex)?,
                java::string(env, "partition", &partition_hex)?,
                java::string(env, "worker id", &worker_id)?,
                java::string(env, "worker address", &worker_address)?,
                java::string(env, "job token", &token)?,
            )?;
            Ok(master.agent.release_partition(&descriptor)?)
        },
    )
}

/// Releases a partition another process placed (located through the
/// masters); `true` when a worker held it.
#[unsafe(no_mangle)]
pub extern "system" fn Java_dev_terrace_bridge_NativeBridge_masterReleasePlaced<'l>(
    mut env: JNIEnv<'l>,
    _class: JClass<'l>,
    handle: jlong,
    job: JByteArray<'l>,
    partition: JByteArray<'l>,
) -> jboolean {
    entry(
        &mut env,
        "release a placed partition on its Terrace worker",
        0,
        |env| {
            let master = MASTERS.get(handle)?;
            let job = job_id(env, &job)?;
            let partition = PartitionId::new(java::bytes(env, "partition id", &partition)?)?;
            Ok(u8::from(master.agent.release_placed(&job, &partition)?))
        },
    )
}

/// Blocks up to `timeout_millis` for events; `null` on timeout, else the
/// batch encoded by [`encode_events`]. Throws `CLOSED` once the agent is closed.
#[unsafe(no_mangle)]
pub extern "system" fn Java_dev_terrace_bridge_NativeBridge_masterWaitEvents<'l>(
    mut env: JNIEnv<'l>,
    _class: JClass<'l>,
    handle: jlong,
    timeout_millis: jlong,
) -> jbyteArray {
    entry(
        &mut env,
        "wait for Terrace master agent events",
        std::ptr::null_mut(),
        |env| {
            let master = MASTERS.get(handle)?;
            let timeout = Duration::from_millis(u64::try_from(timeout_millis).unwrap_or(0));
            match master.events.wait(timeout) {
                Waited::TimedOut => Ok(std::ptr::null_mut()),
                Waited::Closed => Err(NativeError::closed("the master agent was closed")),
                Waited::Events(events) => {
                    let encoded = encode_events(&events);
                    let array = env
                        .byte_array_from_slice(&encoded)
                        .map_err(|e| NativeError::jni("allocate event batch", e))?;
                    Ok(array.into_raw())
                }
            }
        },
    )
}

#[unsafe(no_mangle)]
pub extern "system" fn Java_dev_terrace_bridge_NativeBridge_masterClose<'l>(
    mut env: JNIEnv<'l>,
    _class: JClass<'l>,
    handle: jlong,
) {
    entry(&mut env, "close Terrace master agent", (), |_env| {
        let master = MASTERS.remove(handle)?;
        master.events.close();
        master.agent.close();
        Ok(())
    })
}

/// The token of a registered job (hex; empty when the cluster has no
/// secret), for the engine to hand to the processes that place, write and
/// read the job's partitions.
#[unsafe(no_mangle)]
pub extern "system" fn Java_dev_terrace_bridge_NativeBridge_masterJobToken<'l>(
    mut env: JNIEnv<'l>,
    _class: JClass<'l>,
    handle: jlong,
    job: JByteArray<'l>,
) -> jni::sys::jstring {
    entry(
        &mut env,
        "get a Terrace job's token",
        std::ptr::null_mut(),
        |env| {
            let master = MASTERS.get(handle)?;
            let job = job_id(env, &job)?;
            let token = master.agent.job_token(&job)?;
            Ok(env
                .new_string(token)
                .map_err(|e| NativeError::jni("allocate String", e))?
                .into_raw())
        },
    )
}

//! The job placer behind `NativeBridge.placer*` (an engine's task process,
//! e.g. a Spark executor): places partitions of one job presenting only the
//! job's token (see `terrace_master_agent::JobPlacer`).

use jni::JNIEnv;
use jni::objects::{JByteArray, JClass, JObjectArray, JString};
use jni::sys::{jint, jlong, jobjectArray};
use terrace_master_agent::JobPlacer;
use terrace_tier_api::{JobId, PartitionId};

use crate::boundary::entry;
use crate::config::parse_config;
use crate::error::NativeError;
use crate::handles::{HandleKind, HandleTable};
use crate::java;
use crate::library::init_logging;
use crate::master::descriptor_to_java;

static PLACERS: HandleTable<JobPlacer> = HandleTable::new(HandleKind::Placer);

/// Opens a placer for the job `job_hex` with its `token` (hex, or empty when
/// the cluster has no secret).
#[unsafe(no_mangle)]
pub extern "system" fn Java_dev_terrace_bridge_NativeBridge_placerOpen<'l>(
    mut env: JNIEnv<'l>,
    _class: JClass<'l>,
    conf: JObjectArray<'l>,
    job_hex: JString<'l>,
    token: JString<'l>,
) -> jlong {
    entry(&mut env, "open Terrace placer", 0, |env| {
        let pairs = java::pairs(env, &conf)?;
        let config = parse_config(pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())))?;
        init_logging(&config.log_filter);
        let job = JobId::from_hex(&java::string(env, "job", &job_hex)?)?;
        let token = java::string(env, "token", &token)?;
        Ok(PLACERS.insert(JobPlacer::new(&config.agent, job, token)?))
    })
}

/// Places a new partition of the placer's job with `num_subpartitions`
/// subpartitions. Returns the descriptor's fields `{jobHex, partitionHex,
/// workerId, workerAddress, token}`.
#[unsafe(no_mangle)]
pub extern "system" fn Java_dev_terrace_bridge_NativeBridge_placerPlace<'l>(
    mut env: JNIEnv<'l>,
    _class: JClass<'l>,
    handle: jlong,
    partition: JByteArray<'l>,
    num_subpartitions: jint,
) -> jobjectArray {
    entry(
        &mut env,
        "place partition on a Terrace worker",
        std::ptr::null_mut(),
        |env| {
            let placer = PLACERS.get(handle)?;
            let partition = PartitionId::new(java::bytes(env, "partition id", &partition)?)?;
            let num_subpartitions = u32::try_from(num_subpartitions)
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| {
                    NativeError::invalid(format!(
                        "{num_subpartitions} subpartitions: a partition needs at least one"
                    ))
                })?;
            let d = placer.place(&partition, num_subpartitions)?;
            Ok(descriptor_to_java(env, d)?.into_raw())
        },
    )
}

/// Closes the placer's connection and frees it.
#[unsafe(no_mangle)]
pub extern "system" fn Java_dev_terrace_bridge_NativeBridge_placerClose<'l>(
    mut env: JNIEnv<'l>,
    _class: JClass<'l>,
    handle: jlong,
) {
    entry(&mut env, "close Terrace placer", (), |_env| {
        PLACERS.remove(handle)?.close();
        Ok(())
    })
}

//! The producer agent behind `NativeBridge.producer*` (Flink TaskManager side,
//! one per result partition). A data buffer crosses once: from Flink's
//! off-heap segment, borrowed for the call, into the push batch.

use std::sync::{Mutex, MutexGuard};

use bytes::Bytes;
use jni::JNIEnv;
use jni::objects::{JByteArray, JByteBuffer, JClass, JObjectArray, JString};
use jni::sys::{jboolean, jint, jlong};
use terrace_producer_agent::{ProducerAgent, ProducerSpec};
use terrace_tier_api::{DataType, SegmentId, SubpartitionId, TierProducerAgent};

use crate::boundary::entry;
use crate::config::parse_config;
use crate::error::{NativeError, NativeResult};
use crate::handles::{HandleKind, HandleTable};
use crate::java;
use crate::library::init_logging;
use crate::master::descriptor_from;

/// `NativeBridge.WRITE_OK`: the buffer was copied; Java recycles it.
const WRITE_OK: jint = 0;
/// `NativeBridge.WRITE_SEGMENT_FULL`: END_OF_SEGMENT was appended; the buffer was not taken.
const WRITE_SEGMENT_FULL: jint = 1;

struct NativeProducer {
    agent: Mutex<ProducerAgent>,
}

impl NativeProducer {
    fn lock(&self) -> NativeResult<MutexGuard<'_, ProducerAgent>> {
        self.agent.lock().map_err(|_| {
            NativeError::internal("the producer failed in an earlier call (panic); release it")
        })
    }
}

static PRODUCERS: HandleTable<NativeProducer> = HandleTable::new(HandleKind::Producer);

fn non_negative(what: &str, value: jint) -> NativeResult<u32> {
    u32::try_from(value).map_err(|_| NativeError::invalid(format!("{what} is negative: {value}")))
}

fn data_type(code: jint) -> NativeResult<DataType> {
    u8::try_from(code).map(DataType::from_code).map_err(|_| {
        NativeError::invalid(format!(
            "data type {code} is not a Flink Buffer.DataType ordinal"
        ))
    })
}

/// Checks a write's Java arguments and copies the buffer into the
/// producer's push batch (the only copy).
fn write(
    agent: &mut ProducerAgent,
    subpartition: jint,
    data_type_code: jint,
    compressed: jboolean,
    payload: &[u8],
    num_remaining: jint,
) -> NativeResult<jint> {
    let written = agent.try_write_slice(
        SubpartitionId(non_negative("subpartition", subpartition)?),
        data_type(data_type_code)?,
        compressed != 0,
        payload,
        non_negative("numRemainingConsecutiveBuffers", num_remaining)?,
    )?;
    Ok(if written {
        WRITE_OK
    } else {
        WRITE_SEGMENT_FULL
    })
}

#[unsafe(no_mangle)]
#[allow(clippy::too_many_arguments)]
pub extern "system" fn Java_dev_terrace_bridge_NativeBridge_producerOpen<'l>(
    mut env: JNIEnv<'l>,
    _class: JClass<'l>,
    conf: JObjectArray<'l>,
    job_hex: JString<'l>,
    partition_hex: JString<'l>,
    worker_id: JString<'l>,
    worker_address: JString<'l>,
    token: JString<'l>,
    num_subpartitions: jint,
    broadcast_only: jboolean,
    end_of_segment_payload: JByteArray<'l>,
) -> jlong {
    entry(&mut env, "open Terrace producer", 0, |env| {
        let pairs = java::pairs(env, &conf)?;
        let config = parse_config(pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())))?;
        init_logging(&config.log_filter);
        let descriptor = descriptor_from(
            java::string(env, "job", &job_hex)?,
            java::string(env, "partition", &partition_hex)?,
            java::string(env, "worker id", &worker_id)?,
            java::string(env, "worker address", &worker_address)?,
            java::string(env, "job token", &token)?,
        )?;
        let spec = ProducerSpec {
            descriptor,
            num_subpartitions: non_negative("numSubpartitions", num_subpartitions)?,
            broadcast_only: broadcast_only != 0,
            end_of_segment_payload: Bytes::from(java::bytes(
                env,
                "END_OF_SEGMENT payload",
                &end_of_segment_payload,
            )?),
        };
        let agent = ProducerAgent::new(config.agent, spec)?;
        Ok(PRODUCERS.insert(NativeProducer {
            agent: Mutex::new(agent),
        }))
    })
}

#[unsafe(no_mangle)]
pub extern "system" fn Java_dev_terrace_bridge_NativeBridge_producerStartSegment<'l>(
    mut env: JNIEnv<'l>,
    _class: JClass<'l>,
    handle: jlong,
    subpartition: jint,
    segment: jint,
    min_num_buffers: jint,
) -> jboolean {
    entry(&mut env, "start segment on Terrace", 0, |_env| {
        let producer = PRODUCERS.get(handle)?;
        let accepted = producer.lock()?.try_start_new_segment(
            SubpartitionId(non_negative("subpartition", subpartition)?),
            SegmentId(non_negative("segment id", segment)?),
            non_negative("minNumBuffers", min_num_buffers)?,
        )?;
        Ok(jboolean::from(accepted))
    })
}

#[unsafe(no_mangle)]
#[allow(clippy::too_many_arguments)]
pub extern "system" fn Java_dev_terrace_bridge_NativeBridge_producerWrite<'l>(
    mut env: JNIEnv<'l>,
    _class: JClass<'l>,
    handle: jlong,
    subpartition: jint,
    data: JByteBuffer<'l>,
    offset: jint,
    length: jint,
    data_type_code: jint,
    compressed: jboolean,
    num_remaining: jint,
) -> jint {
    entry(&mut env, "write buffer to Terrace", 0, |env| {
        let producer = PRODUCERS.get(handle)?;
        let ptr = java::direct_region(env, "buffer", &data, offset, length)?;
        let len = non_negative("length", length)? as usize;
        // SAFETY: `direct_region` checked `ptr..ptr+len` lies in the direct
        // buffer, which Java keeps alive and unrecycled until this native call
        // returns (TerraceProducerAgent.tryWrite recycles only afterwards); the
        // slice does not outlive this call.
        let payload: &[u8] = if len == 0 {
            &[]
        } else {
            unsafe { std::slice::from_raw_parts(ptr, len) }
        };
        let mut agent = producer.lock()?;
        write(
            &mut agent,
            subpartition,
            data_type_code,
            compressed,
            payload,
            num_remaining,
        )
    })
}

/// As `producerWrite`, for heap segments (Flink's events: a few bytes each).
#[unsafe(no_mangle)]
#[allow(clippy::too_many_arguments)]
pub extern "system" fn Java_dev_terrace_bridge_NativeBridge_producerWriteArray<'l>(
    mut env: JNIEnv<'l>,
    _class: JClass<'l>,
    handle: jlong,
    subpartition: jint,
    data: JByteArray<'l>,
    offset: jint,
    length: jint,
    data_type_code: jint,
    compressed: jboolean,
    num_remaining: jint,
) -> jint {
    entry(&mut env, "write buffer to Terrace", 0, |env| {
        let producer = PRODUCERS.get(handle)?;
        let offset = non_negative("offset", offset)?;
        let len = non_negative("length", length)? as usize;
        if data.is_null() {
            return Err(NativeError::invalid("buffer array is null"));
        }
        let mut payload = vec![0u8; len];
        // SAFETY: i8 and u8 have the same size and alignment, and `payload`
        // is borrowed exclusively for the copy; JNI writes only `len` bytes.
        let region =
            unsafe { std::slice::from_raw_parts_mut(payload.as_mut_ptr().cast::<i8>(), len) };
        env.get_byte_array_region(&data, offset as i32, region)
            .map_err(|e| NativeError::invalid(format!("buffer range {offset}+{len}: {e}")))?;
        write(
            &mut *producer.lock()?,
            subpartition,
            data_type_code,
            compressed,
            &payload,
            num_remaining,
        )
    })
}

/// Flushes, ends every open segment and seals the partition on its worker.
#[unsafe(no_mangle)]
pub extern "system" fn Java_dev_terrace_bridge_NativeBridge_producerFinish<'l>(
    mut env: JNIEnv<'l>,
    _class: JClass<'l>,
    handle: jlong,
) {
    entry(&mut env, "finish Terrace partition", (), |_env| {
        let producer = PRODUCERS.get(handle)?;
        Ok(producer.lock()?.close()?)
    })
}

/// Frees the producer; a partition not finished is abandoned (its data is
/// deleted when Flink releases the partition or the job).
#[unsafe(no_mangle)]
pub extern "system" fn Java_dev_terrace_bridge_NativeBridge_producerRelease<'l>(
    mut env: JNIEnv<'l>,
    _class: JClass<'l>,
    handle: jlong,
) {
    entry(&mut env, "release Terrace producer", (), |_env| {
        drop(PRODUCERS.remove(handle)?);
        Ok(())
    })
}

//! The consumer agent behind `NativeBridge.consumer*` (Flink TaskManager side,
//! one per input gate; stream `i` is the gate's consumer spec `i`). A buffer
//! crosses once: from the agent's received batch into the Flink network
//! buffer Java passes in. Availability is queued per stream for the Java
//! thread blocked in `consumerWaitEvents`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use jni::JNIEnv;
use jni::objects::{JByteBuffer, JClass, JIntArray, JObjectArray, JString};
use jni::sys::{jboolean, jint, jlong};
use terrace_consumer_agent::ConsumerAgent;
use terrace_tier_api::{
    AvailabilityNotifier, Buffer, ConsumerSpec, InputChannelId, PartitionId, SegmentId,
    ShuffleDescriptor, SubpartitionId, TierConsumerAgent,
};

use crate::boundary::entry;
use crate::config::parse_config;
use crate::error::{NativeError, NativeResult};
use crate::events::{ReadySet, Waited};
use crate::handles::{HandleKind, HandleTable};
use crate::java;
use crate::library::init_logging;
use crate::master::{DESCRIPTOR_FIELDS, descriptor_from};

/// `NativeBridge.POLL_EMPTY`.
const POLL_EMPTY: jlong = -1;

/// The header `consumerPoll` returns for a buffer: `len | type << 32 | compressed << 40`.
pub fn pack_header(buffer: &Buffer) -> jlong {
    let len = buffer.len() as u64 & 0xFFFF_FFFF;
    let packed =
        len | (u64::from(buffer.data_type.code()) << 32) | (u64::from(buffer.compressed) << 40);
    packed as jlong
}

/// What `consumerPoll` returns when `dst` is smaller than the next buffer:
/// `-(2 + len)`. The buffer is kept for the next poll.
pub fn needs_larger(len: usize) -> jlong {
    -2 - len as jlong
}

struct Stream {
    partition: PartitionId,
    channel: InputChannelId,
}

struct NativeConsumer {
    agent: Mutex<ConsumerAgent>,
    streams: Vec<Stream>,
    ready: Arc<ReadySet>,
    /// A buffer too large for the `dst` of the poll that took it, per
    /// (stream, subpartition), with its segment.
    oversized: Mutex<HashMap<(usize, u32), (u32, Buffer)>>,
}

impl NativeConsumer {
    fn lock(&self) -> NativeResult<MutexGuard<'_, ConsumerAgent>> {
        self.agent.lock().map_err(|_| {
            NativeError::internal("the consumer failed in an earlier call (panic); close it")
        })
    }

    fn oversized(&self) -> MutexGuard<'_, HashMap<(usize, u32), (u32, Buffer)>> {
        // Single map operations only: a poisoned map is still consistent.
        self.oversized
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn stream(&self, stream: jint) -> NativeResult<(usize, &Stream)> {
        usize::try_from(stream)
            .ok()
            .and_then(|i| self.streams.get(i).map(|s| (i, s)))
            .ok_or_else(|| {
                NativeError::invalid(format!(
                    "no stream {stream} ({} streams)",
                    self.streams.len()
                ))
            })
    }
}

static CONSUMERS: HandleTable<NativeConsumer> = HandleTable::new(HandleKind::Consumer);

/// Routes the agent's "channel has data" to the stream's ready flag.
struct StreamNotifier {
    streams: HashMap<(PartitionId, InputChannelId), usize>,
    ready: Arc<ReadySet>,
}

impl AvailabilityNotifier for StreamNotifier {
    fn notify_available(&self, partition: &PartitionId, input_channel: InputChannelId) {
        if let Some(stream) = self.streams.get(&(partition.clone(), input_channel)) {
            self.ready.flag(*stream);
        }
    }
}

fn sub(what: &str, value: jint) -> NativeResult<u32> {
    u32::try_from(value).map_err(|_| NativeError::invalid(format!("{what} is negative: {value}")))
}

fn descriptor_at(
    env: &mut JNIEnv<'_>,
    fields: &JObjectArray<'_>,
    stream: usize,
) -> NativeResult<Option<ShuffleDescriptor>> {
    let mut values = Vec::with_capacity(DESCRIPTOR_FIELDS);
    for i in 0..DESCRIPTOR_FIELDS {
        values.push(java::string_element(
            env,
            "descriptor field",
            fields,
            stream * DESCRIPTOR_FIELDS + i,
        )?);
    }
    match (
        values[0].take(),
        values[1].take(),
        values[2].take(),
        values[3].take(),
        values[4].take(),
    ) {
        (Some(job), Some(partition), Some(worker_id), Some(address), Some(token)) => Ok(Some(
            descriptor_from(job, partition, worker_id, address, token)?,
        )),
        (None, None, None, None, None) => Ok(None),
        _ => Err(NativeError::invalid(format!(
            "descriptor of stream {stream} is partly null"
        ))),
    }
}

/// Opens a consumer for one input gate. Per stream: the partition id bytes,
/// the input channel, the subpartition range, and five descriptor fields
/// (`job, partition, workerId, workerAddress, token`, all null while unknown).
#[unsafe(no_mangle)]
#[allow(clippy::too_many_arguments)]
pub extern "system" fn Java_dev_terrace_bridge_NativeBridge_consumerOpen<'l>(
    mut env: JNIEnv<'l>,
    _class: JClass<'l>,
    conf: JObjectArray<'l>,
    partition_ids: JObjectArray<'l>,
    channels: JIntArray<'l>,
    first_subpartitions: JIntArray<'l>,
    last_subpartitions: JIntArray<'l>,
    descriptor_fields: JObjectArray<'l>,
) -> jlong {
    entry(&mut env, "open Terrace consumer", 0, |env| {
        let pairs = java::pairs(env, &conf)?;
        let config = parse_config(pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())))?;
        init_logging(&config.log_filter);
        let n = java::object_array_len(env, "partition ids", &partition_ids)?;
        let channels = java::ints(env, "channels", &channels)?;
        let firsts = java::ints(env, "first subpartitions", &first_subpartitions)?;
        let lasts = java::ints(env, "last subpartitions", &last_subpartitions)?;
        let fields = java::object_array_len(env, "descriptor fields", &descriptor_fields)?;
        if channels.len() != n
            || firsts.len() != n
            || lasts.len() != n
            || fields != DESCRIPTOR_FIELDS * n
        {
            return Err(NativeError::invalid(format!(
                "{n} partition ids but {} channels, {} ranges, {fields} descriptor fields",
                channels.len(),
                firsts.len()
            )));
        }
        let mut specs = Vec::with_capacity(n);
        let mut descriptors = Vec::with_capacity(n);
        let mut streams = Vec::with_capacity(n);
        for i in 0..n {
            let partition =
                PartitionId::new(java::bytes_element(env, "partition id", &partition_ids, i)?)?;
            let channel = InputChannelId(sub("input channel", channels[i])?);
            let (first, last) = (
                sub("first subpartition", firsts[i])?,
                sub("last subpartition", lasts[i])?,
            );
            if first > last {
                return Err(NativeError::invalid(format!(
                    "stream {i}: empty subpartition range {first}..={last}"
                )));
            }
            specs.push(ConsumerSpec {
                partition: partition.clone(),
                input_channel: channel,
                subpartitions: first..=last,
            });
            descriptors.push(descriptor_at(env, &descriptor_fields, i)?);
            streams.push(Stream { partition, channel });
        }
        let ready = Arc::new(ReadySet::new(n));
        let notifier = StreamNotifier {
            streams: streams
                .iter()
                .enumerate()
                .map(|(i, s)| ((s.partition.clone(), s.channel), i))
                .collect(),
            ready: Arc::clone(&ready),
        };
        let mut agent = ConsumerAgent::new(config.agent, specs, descriptors)?;
        agent.register_availability_notifier(Arc::new(notifier));
        Ok(CONSUMERS.insert(NativeConsumer {
            agent: Mutex::new(agent),
            streams,
            ready,
            oversized: Mutex::new(HashMap::new()),
        }))
    })
}

/// The descriptor of `stream` became known (Flink `updateTierShuffleDescriptor`).
#[unsafe(no_mangle)]
#[allow(clippy::too_many_arguments)]
pub extern "system" fn Java_dev_terrace_bridge_NativeBridge_consumerUpdateDescriptor<'l>(
    mut env: JNIEnv<'l>,
    _class: JClass<'l>,
    handle: jlong,
    stream: jint,
    job_hex: JString<'l>,
    partition_hex: JString<'l>,
    worker_id: JString<'l>,
    worker_address: JString<'l>,
    token: JString<'l>,
) {
    entry(&mut env, "update Terrace consumer descriptor", (), |env| {
        let consumer = CONSUMERS.get(handle)?;
        let (_, s) = consumer.stream(stream)?;
        let descriptor = descriptor_from(
            java::string(env, "job", &job_hex)?,
            java::string(env, "partition", &partition_hex)?,
            java::string(env, "worker id", &worker_id)?,
            java::string(env, "worker address", &worker_address)?,
            java::string(env, "job token", &token)?,
        )?;
        let first = SubpartitionId(0);
        Ok(consumer.lock()?.update_tier_shuffle_descriptor(
            &s.partition,
            s.channel,
            first,
            descriptor,
        )?)
    })
}

/// Opens the streams whose descriptors are known and asks for segment 0 of each subpartition.
#[unsafe(no_mangle)]
pub extern "system" fn Java_dev_terrace_bridge_NativeBridge_consumerStart<'l>(
    mut env: JNIEnv<'l>,
    _class: JClass<'l>,
    handle: jlong,
) {
    entry(&mut env, "start Terrace consumer", (), |_env| {
        let consumer = CONSUMERS.get(handle)?;
        Ok(consumer.lock()?.start()?)
    })
}

/// A subpartition of `stream` in `first..=last` with a buffer ready, else -1.
/// Throws the partition's failure, if it has one.
#[unsafe(no_mangle)]
pub extern "system" fn Java_dev_terrace_bridge_NativeBridge_consumerPeek<'l>(
    mut env: JNIEnv<'l>,
    _class: JClass<'l>,
    handle: jlong,
    stream: jint,
    first: jint,
    last: jint,
) -> jint {
    entry(&mut env, "peek Terrace consumer", -1, |_env| {
        let consumer = CONSUMERS.get(handle)?;
        let (index, s) = consumer.stream(stream)?;
        let (first, last) = (
            sub("first subpartition", first)?,
            sub("last subpartition", last)?,
        );
        if let Some(kept) =
            (first..=last).find(|sub| consumer.oversized().contains_key(&(index, *sub)))
        {
            return Ok(kept as jint);
        }
        let found = consumer
            .lock()?
            .peek_next_buffer_subpartition_id(&s.partition, &(first..=last))?;
        Ok(found.map_or(-1, |sub| sub.0 as jint))
    })
}

/// Copies the next buffer of `segment` of `subpartition` into `dst` (from
/// its position 0) and returns its packed header, [`POLL_EMPTY`], or
/// [`needs_larger`] when `dst` is too small.
#[unsafe(no_mangle)]
pub extern "system" fn Java_dev_terrace_bridge_NativeBridge_consumerPoll<'l>(
    mut env: JNIEnv<'l>,
    _class: JClass<'l>,
    handle: jlong,
    stream: jint,
    subpartition: jint,
    segment: jint,
    dst: JByteBuffer<'l>,
) -> jlong {
    entry(&mut env, "read buffer from Terrace", POLL_EMPTY, |env| {
        let consumer = CONSUMERS.get(handle)?;
        let (index, s) = consumer.stream(stream)?;
        let subpartition = sub("subpartition", subpartition)?;
        let segment = sub("segment id", segment)?;
        let (dst_ptr, capacity) = java::direct_buffer(env, "destination buffer", &dst)?;
        let kept = consumer.oversized().remove(&(index, subpartition));
        let buffer = match kept {
            Some((kept_segment, buffer)) if kept_segment == segment => Some(buffer),
            Some(other) => {
                consumer.oversized().insert((index, subpartition), other);
                None
            }
            None => consumer.lock()?.get_next_buffer(
                &s.partition,
                SubpartitionId(subpartition),
                SegmentId(segment),
            )?,
        };
        let Some(buffer) = buffer else {
            return Ok(POLL_EMPTY);
        };
        if buffer.len() > capacity {
            let header = needs_larger(buffer.len());
            consumer
                .oversized()
                .insert((index, subpartition), (segment, buffer));
            return Ok(header);
        }
        if !buffer.is_empty() {
            // SAFETY: `dst_ptr..dst_ptr+capacity` is the direct buffer's memory,
            // which Java keeps alive and does not touch during this call;
            // `buffer.len() <= capacity`, and Rust-owned `payload` cannot overlap it.
            unsafe {
                std::ptr::copy_nonoverlapping(buffer.payload.as_ptr(), dst_ptr, buffer.len())
            };
        }
        Ok(pack_header(&buffer))
    })
}

/// Blocks up to `timeout_millis` until streams have data or failed; writes
/// their indices to `out`; returns how many (0 on timeout, -1 once closed).
#[unsafe(no_mangle)]
pub extern "system" fn Java_dev_terrace_bridge_NativeBridge_consumerWaitEvents<'l>(
    mut env: JNIEnv<'l>,
    _class: JClass<'l>,
    handle: jlong,
    timeout_millis: jlong,
    out: JIntArray<'l>,
) -> jint {
    entry(&mut env, "wait for Terrace consumer events", -1, |env| {
        let consumer = match CONSUMERS.get(handle) {
            Ok(consumer) => consumer,
            Err(e) if e.kind == crate::error::NativeErrorKind::Closed => return Ok(-1),
            Err(e) => return Err(e),
        };
        if out.is_null() {
            return Err(NativeError::invalid("event array is null"));
        }
        let len = env
            .get_array_length(&out)
            .map_err(|e| NativeError::jni("read event array length", e))?;
        let mut ready = vec![0i32; len as usize];
        let timeout = Duration::from_millis(u64::try_from(timeout_millis).unwrap_or(0));
        match consumer.ready.wait(timeout, &mut ready) {
            Waited::TimedOut => Ok(0),
            Waited::Closed => Ok(-1),
            Waited::Events(n) => {
                env.set_int_array_region(&out, 0, &ready[..n])
                    .map_err(|e| NativeError::jni("write event array", e))?;
                Ok(n as jint)
            }
        }
    })
}

/// Closes every stream, wakes `consumerWaitEvents` and frees the consumer.
#[unsafe(no_mangle)]
pub extern "system" fn Java_dev_terrace_bridge_NativeBridge_consumerClose<'l>(
    mut env: JNIEnv<'l>,
    _class: JClass<'l>,
    handle: jlong,
) {
    entry(&mut env, "close Terrace consumer", (), |_env| {
        let consumer = CONSUMERS.remove(handle)?;
        consumer.ready.close();
        consumer.oversized().clear();
        Ok(consumer.lock()?.close()?)
    })
}

/// Whether `subpartition` of `stream` is read to its end: the partition is
/// sealed, the worker said no more segments of it exist, and every buffer
/// received was polled. Throws the partition's failure, as a peek would.
#[unsafe(no_mangle)]
pub extern "system" fn Java_dev_terrace_bridge_NativeBridge_consumerFinished<'l>(
    mut env: JNIEnv<'l>,
    _class: JClass<'l>,
    handle: jlong,
    stream: jint,
    subpartition: jint,
) -> jboolean {
    entry(&mut env, "check a Terrace subpartition's end", 0, |_env| {
        let consumer = CONSUMERS.get(handle)?;
        let (index, s) = consumer.stream(stream)?;
        let subpartition = sub("subpartition", subpartition)?;
        if consumer.oversized().contains_key(&(index, subpartition)) {
            return Ok(0);
        }
        let agent = consumer.lock()?;
        // A failed partition fails here too, so a reader that only asks
        // whether it is done still learns of the loss.
        agent.peek_next_buffer_subpartition_id(&s.partition, &(subpartition..=subpartition))?;
        Ok(u8::from(
            agent.is_finished(&s.partition, SubpartitionId(subpartition)),
        ))
    })
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use terrace_tier_api::DataType;

    use super::*;

    #[test]
    fn headers_pack_as_java_unpacks_them() {
        let b = Buffer {
            data_type: DataType::Other(10),
            compressed: true,
            payload: Bytes::from(vec![0u8; 32768]),
        };
        let h = pack_header(&b);
        assert!(h >= 0);
        assert_eq!(h & 0xFFFF_FFFF, 32768);
        assert_eq!((h >> 32) & 0xFF, 10);
        assert_eq!((h >> 40) & 1, 1);
        assert_eq!(pack_header(&Buffer::event(Bytes::new())), 2 << 32);
        assert_eq!(needs_larger(0), -2);
        assert_eq!(needs_larger(40000), -40002);
        assert!(needs_larger(0) < POLL_EMPTY);
    }
}

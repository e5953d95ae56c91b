//! `PushData`: a batch of buffers for one partition, checked (CRC32C),
//! decompressed, split into per-(subpartition, segment) runs and stored.

use std::sync::atomic::Ordering;

use bytes::Bytes;
use terrace_proto::{Message, pb};
use terrace_tier_api::{
    PartitionKey, TierError, TierResult, check_push_crc, decompress_batch_into,
};

use crate::server::Connection;
use crate::store::Reservation;

pub async fn handle(
    conn: &Connection,
    m: pb::PushData,
    body: Bytes,
    reservation: Reservation,
) -> TierResult<Message> {
    let key = PartitionKey::try_from(m.key)?;
    let store = &conn.shared.store;
    let partition = store.get(&key)?;
    // Never accept data that cannot be kept.
    store
        .check_room()
        .map_err(|e| e.context(format!("push to {key}")))?;
    let max_len = conn.shared.config.max_frame_size.as_usize();
    let context = |e: TierError| e.context(format!("push to {key}"));
    let (batch, reservation, expected_crc) = if m.compressed {
        check_push_crc(&body, m.crc32c).map_err(context)?;
        let len = m.uncompressed_length as usize;
        if len > max_len {
            return Err(context(TierError::bad_input(format!(
                "body claims {len} uncompressed bytes, more than the maximum {max_len}"
            ))));
        }
        // The decompressed copy needs its own memory while the compressed body is alive.
        let (extra, mut buffer) = store
            .reserve_buffer(len)
            .await
            .map_err(TierError::bad_input)?;
        decompress_batch_into(&body, buffer.as_mut()).map_err(context)?;
        drop(body);
        drop(reservation);
        (Bytes::from_owner(buffer), extra, None)
    } else {
        if body.len() != m.uncompressed_length as usize {
            return Err(context(TierError::bad_input(format!(
                "uncompressed body has {} bytes, header said {}",
                body.len(),
                m.uncompressed_length
            ))));
        }
        // The body's checksum is verified from the stored runs' checksums.
        (body, reservation, Some(m.crc32c))
    };
    let len = batch.len() as u64;
    partition
        .append(
            batch,
            reservation,
            expected_crc,
            conn.shared.config.limits.max_buffers_per_push,
        )
        .map_err(context)?;
    store
        .counters
        .bytes_pushed
        .fetch_add(len, Ordering::Relaxed);
    store.check_pressure();
    // Past the split size, when this worker's tiers are nearly full, or when
    // it is leaving the cluster, the producer is asked to go on elsewhere (at
    // a push boundary: every push is a region).
    let split = partition.stored_bytes() >= conn.shared.config.split_size.as_u64()
        || store.short_of_room()
        || conn.shared.decommission.is_started();
    Ok(Message::PushAck(pb::PushAck {
        request_id: m.request_id,
        split,
    }))
}

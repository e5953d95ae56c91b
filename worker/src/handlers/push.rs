//! `PushData`: a batch of buffers for one partition, checked (CRC32C),
//! decompressed, split into per-(subpartition, segment) runs and stored.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use terrace_proto::{Message, pb};
use terrace_tier_api::{PartitionKey, TierResult, decode_push_body};

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
    let max_len = conn.shared.config.max_frame_size.as_usize();
    let (batch, reservation) = if m.compressed {
        // The decompressed copy needs its own memory while the compressed body is alive.
        let extra = store
            .budget()
            .reserve(u64::from(m.uncompressed_length).min(max_len as u64))
            .await
            .map_err(terrace_tier_api::TierError::bad_input)?;
        let batch = decode_push_body(body, m.crc32c, true, m.uncompressed_length, max_len)
            .map_err(|e| e.context(format!("push to {key}")))?;
        drop(reservation);
        (batch, extra)
    } else {
        let batch = decode_push_body(body, m.crc32c, false, m.uncompressed_length, max_len)
            .map_err(|e| e.context(format!("push to {key}")))?;
        (batch, reservation)
    };
    let len = batch.len() as u64;
    let pending = partition.append(batch, reservation)?;
    store
        .counters
        .bytes_pushed
        .fetch_add(len, Ordering::Relaxed);
    if pending >= store.flush_size() {
        let partition = Arc::clone(&partition);
        tokio::spawn(async move {
            if let Err(e) = partition.flush().await {
                tracing::error!(partition = %partition.key(), error = %e, "flush failed");
            }
        });
    }
    Ok(Message::ack(m.request_id))
}

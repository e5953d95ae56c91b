//! `PushData`: a batch of buffers for one partition, split into
//! per-(subpartition, segment) runs and stored exactly as received (each run
//! checksummed; together they must match the push's CRC32C). Payloads the
//! producer agent compressed stay compressed: the worker never decompresses.

use std::sync::atomic::Ordering;

use bytes::Bytes;
use terrace_proto::{Message, pb};
use terrace_tier_api::{PartitionKey, TierResult};

use crate::context::Connection;
use crate::store::Reservation;

#[derive(Debug)]
pub(crate) struct PushData {
    pub key: PartitionKey,
    crc32c: u32,
    body: Bytes,
    /// The body's memory, held until it is flushed.
    reservation: Reservation,
}

impl PushData {
    pub(crate) fn parse(
        m: pb::PushData,
        body: Bytes,
        reservation: Reservation,
    ) -> TierResult<Self> {
        Ok(PushData {
            key: PartitionKey::try_from(m.key)?,
            crc32c: m.crc32c,
            body,
            reservation,
        })
    }

    pub(crate) async fn apply(self, request_id: u64, conn: &Connection) -> TierResult<Message> {
        let key = self.key;
        let store = &conn.shared.store;
        let partition = store.get(&key)?;
        // Never accept data that cannot be kept.
        store
            .check_room()
            .map_err(|e| e.context(format!("push to {key}")))?;
        let len = self.body.len() as u64;
        partition
            .append(
                self.body,
                self.reservation,
                Some(self.crc32c),
                conn.shared.config.limits.max_buffers_per_push,
            )
            .map_err(|e| e.context(format!("push to {key}")))?;
        store
            .counters
            .bytes_pushed
            .fetch_add(len, Ordering::Relaxed);
        if store.writes_on_push() {
            partition
                .write_pushed(store.tiers())
                .await
                .map_err(|e| e.context(format!("push to {key}")))?;
        }
        store.check_pressure();
        // Past the split size, when this worker's tiers are nearly full, or when
        // it is leaving the cluster, the producer is asked to go on elsewhere (at
        // a push boundary: every push is a region).
        let split = partition.stored_bytes() >= conn.shared.config.split_size.as_u64()
            || store.short_of_room()
            || conn.shared.decommission.is_started();
        Ok(Message::PushAck(pb::PushAck { request_id, split }))
    }
}

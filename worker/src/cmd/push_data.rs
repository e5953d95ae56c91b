//! `PushData`: a batch of buffers for one partition, split into
//! per-(subpartition, segment) runs and stored exactly as received (each run
//! checksummed; together they must match the push's CRC32C). Payloads the
//! producer agent compressed stay compressed: the worker never decompresses.

use std::sync::atomic::Ordering;

use terrace_rpc::clock;
use terrace_tier_api::TierResult;
use terrace_tier_api::protocol::{PushAck, PushData};

use crate::context::Connection;
use crate::store::Reservation;
use crate::store::counters::{Occupancy, Occupied};

pub(crate) async fn apply(
    request: PushData,
    conn: &Connection,
    reservation: Reservation,
) -> TierResult<PushAck> {
    let started = clock::now();
    let store = &conn.shared.store;
    let _in_flight = Occupied::new(&store.counters, Occupancy::Push);
    if conn.shared.pushes_frozen.load(Ordering::Acquire) {
        return Err(terrace_tier_api::TierError::unavailable(format!(
            "{}: worker {} is stopping for a restart and keeps what it holds; push again once it is back",
            request.key, conn.shared.worker_id
        )));
    }
    let ack = store_push(request, conn, reservation).await?;
    store
        .counters
        .push_seconds
        .observe(clock::now().saturating_duration_since(started));
    Ok(ack)
}

async fn store_push(
    request: PushData,
    conn: &Connection,
    reservation: Reservation,
) -> TierResult<PushAck> {
    let key = request.key;
    let store = &conn.shared.store;
    let partition = store.get(&key)?;
    // Never accept data that cannot be kept.
    store
        .check_room()
        .map_err(|e| e.context(format!("push to {key}")))?;
    let body = request.body.into_bytes();
    let len = body.len() as u64;
    let buffers = partition
        .append(
            body,
            reservation,
            Some(request.crc32c),
            conn.shared.config.limits.max_buffers_per_push,
        )
        .map_err(|e| e.context(format!("push to {key}")))?;
    store
        .counters
        .bytes_pushed
        .fetch_add(len, Ordering::Relaxed);
    store
        .counters
        .buffers_pushed
        .fetch_add(u64::from(buffers), Ordering::Relaxed);
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
        || conn.shared.draining();
    Ok(PushAck { split })
}

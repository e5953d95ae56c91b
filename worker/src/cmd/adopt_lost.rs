//! `AdoptLost`: a master asks this worker to adopt the durable partitions
//! of a lost worker (durability = "object-store"; see `crate::store`'s
//! `durable.rs`). First parts are then located here through the masters
//! (heartbeats name them relocated), later parts through the masters too
//! (heartbeats name them adopted, with the lost worker) and through the
//! forward pointers of the parts before them, which every worker is asked
//! to move here. The answer waits until every master has answered a
//! heartbeat naming them, so that a master which then stops listing the
//! lost worker already locates what was adopted.

use std::time::Duration;

use terrace_rpc::clock;
use terrace_tier_api::protocol::{AdoptLost, LostAdopted, WorkerAt};
use terrace_tier_api::{TierError, TierResult, WorkerId};

use crate::context::Connection;

/// How long the answer waits for the masters to hear of the adoptions.
const TELL_MASTERS: Duration = Duration::from_secs(10);

pub(crate) async fn apply(request: AdoptLost, conn: &Connection) -> TierResult<LostAdopted> {
    let shared = &conn.shared;
    if shared.draining() {
        return Err(TierError::unavailable(format!(
            "worker {} is decommissioning or restarting: it adopts no partition",
            shared.worker_id
        )));
    }
    // Two masters may ask at once: the second finds what the first left.
    let _one = shared.adopting_lost.lock().await;
    let max_index = shared.config.max_frame_size.as_u64();
    let scan = shared
        .store
        .adopt_lost(&request.store_id, max_index)
        .await
        .map_err(|e| {
            e.context(format!(
                "adopt the partitions of lost worker {}",
                request.lost
            ))
        })?;
    if scan.adopted.is_empty() {
        return Ok(LostAdopted {
            adopted: 0,
            skipped: scan.skipped,
        });
    }
    let this = WorkerAt::new(WorkerId::new(shared.worker_id.clone())?, &shared.address);
    for (key, continuation) in &scan.adopted {
        shared
            .adopted
            .lock()
            .expect("adopted lock poisoned")
            .insert(key.clone(), request.lost.clone());
        if !*continuation {
            shared
                .relocated
                .lock()
                .expect("relocated lock poisoned")
                .insert(key.clone());
        }
    }
    // Heartbeats sent from now on name them.
    let named_since = clock::now();
    tracing::warn!(lost = %request.lost, adopted = scan.adopted.len(), skipped = scan.skipped,
        "adopted a lost worker's durable partitions from the object store");
    for (key, continuation) in &scan.adopted {
        if *continuation {
            crate::decommission::move_forward_pointers(shared, key, &request.lost, &this).await;
        }
    }
    let told_by = clock::now() + TELL_MASTERS;
    while !crate::restart::masters_told(shared, named_since) && clock::now() < told_by {
        shared.heartbeat_now.notify_waiters();
        clock::sleep(Duration::from_millis(50)).await;
    }
    Ok(LostAdopted {
        adopted: u32::try_from(scan.adopted.len()).unwrap_or(u32::MAX),
        skipped: scan.skipped,
    })
}

//! `MoveForward`: the next part of a split partition moved from a
//! decommissioning worker to its adopter (see `crate::decommission`); the
//! forward pointer is pointed there.

use terrace_tier_api::TierResult;
use terrace_tier_api::protocol::{Ack, MoveForward};

use crate::context::Connection;
use crate::store::Forward;

pub(crate) async fn apply(request: MoveForward, conn: &Connection) -> TierResult<Ack> {
    let shared = &conn.shared;
    let (key, from) = (request.key, request.from);
    let next = Forward {
        worker_id: request.to.id.into_string(),
        address: request.to.address,
    };
    if let Ok(partition) = shared.store.get(&key) {
        let to = next.address.clone();
        if partition
            .move_forward(shared.store.tiers(), from.as_str(), next)
            .await?
        {
            tracing::info!(partition = %key, %from, %to, "the next part moved; forward pointer updated");
        }
    }
    Ok(Ack)
}

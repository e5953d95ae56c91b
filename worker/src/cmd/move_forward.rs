//! `MoveForward`: the next part of a split partition moved from a
//! decommissioning worker to its adopter (see `crate::decommission`); the
//! forward pointer is pointed there.

use terrace_proto::{Message, pb};
use terrace_tier_api::{PartitionKey, TierResult};

use crate::context::Connection;
use crate::store::Forward;

#[derive(Debug)]
pub(crate) struct MoveForward {
    key: PartitionKey,
    from: String,
    next: Forward,
}

impl MoveForward {
    pub(crate) fn parse(m: pb::MoveForward) -> TierResult<Self> {
        let key = PartitionKey::try_from(m.key)?;
        let from = super::bounded("from_worker_id", m.from_worker_id)?;
        let next = Forward {
            worker_id: super::bounded("to_worker_id", m.to_worker_id)?,
            address: super::bounded("to_address", m.to_address)?,
        };
        Ok(MoveForward { key, from, next })
    }

    pub(crate) async fn apply(self, request_id: u64, conn: &Connection) -> TierResult<Message> {
        let shared = &conn.shared;
        let (key, from, next) = (self.key, self.from, self.next);
        if let Ok(partition) = shared.store.get(&key) {
            let to = next.address.clone();
            if partition
                .move_forward(shared.store.tiers(), &from, next)
                .await?
            {
                tracing::info!(partition = %key, %from, %to, "the next part moved; forward pointer updated");
            }
        }
        Ok(Message::ack(request_id))
    }
}

//! `WorkerStats`: counters for operators and tests.

use std::sync::atomic::Ordering;

use terrace_proto::{Message, pb};

use crate::server::Connection;

pub fn handle(conn: &Connection, m: pb::WorkerStats) -> Message {
    let store = &conn.shared.store;
    Message::WorkerStatsReply(pb::WorkerStatsReply {
        request_id: m.request_id,
        load: Some(crate::heartbeat::load(&conn.shared)),
        bytes_pushed: store.counters.bytes_pushed.load(Ordering::Relaxed),
        bytes_read: store.counters.bytes_read.load(Ordering::Relaxed),
        memory_budget_bytes: store.budget().total(),
        memory_peak_bytes: store.budget().peak(),
        partitions: store.partitions().len() as u32,
    })
}

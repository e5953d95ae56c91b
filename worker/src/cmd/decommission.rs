//! `Decommission`: the worker leaves the cluster (see `crate::decommission`).

use terrace_proto::{Message, pb};

use crate::context::Connection;

#[derive(Debug)]
pub(crate) struct Decommission;

impl Decommission {
    pub(crate) fn parse(_: pb::Decommission) -> Self {
        Decommission
    }

    pub(crate) fn apply(self, request_id: u64, conn: &Connection) -> Message {
        crate::decommission::start(&conn.shared, &conn.peer);
        Message::ack(request_id)
    }
}

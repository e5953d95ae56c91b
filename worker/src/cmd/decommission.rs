//! `Decommission`: the worker leaves the cluster (see `crate::decommission`).

use terrace_tier_api::protocol::{Ack, Decommission};

use crate::context::Connection;

pub(crate) fn apply(_: Decommission, conn: &Connection) -> Ack {
    crate::decommission::start(&conn.shared, &conn.peer);
    Ack
}

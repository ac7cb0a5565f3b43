//! The durable `reply` run each customer message starts: created by the
//! store in the message's own transaction, so a stored customer message
//! always has its run, whatever crashes next.

use tandem_model::names::REPLY_WORKFLOW;
use tandem_model::{MessageStatus, NewMessage, ReplyRun, Role};

use crate::AppState;

/// The `reply` run `new` must start when it is stored: for a published
/// customer message, while this server routes replies. Leased to this
/// process when it has room, so it starts at once.
pub fn reply_run(state: &AppState, new: &NewMessage) -> Option<ReplyRun> {
    if !state.replies || new.role != Role::User || new.status != MessageStatus::Published {
        return None;
    }
    let engine = &state.workflows;
    Some(ReplyRun {
        version: engine.current_version(REPLY_WORKFLOW)?,
        ready_at: engine.now_micros(),
        lease: engine.lease_for(REPLY_WORKFLOW),
    })
}

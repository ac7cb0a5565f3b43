//! The hub's place on the store's change stream: what this process
//! commits goes to its own subscribers at once. (On PostgreSQL the store
//! also tells the other processes; their hubs hear it in
//! [`super::signals`].)

use std::sync::{Arc, Weak};

use tandem_store::{Change, ChangeSink, ThreadChange};

use super::{Hub, Inner};

/// Held by the store's change stream; holds the hub weakly, since the hub
/// holds the store.
pub(super) struct HubSink {
    pub(super) hub: Weak<Inner>,
}

impl ChangeSink for HubSink {
    fn apply(&self, changes: &[Change]) {
        let Some(inner) = self.hub.upgrade() else {
            return;
        };
        let hub = Hub { inner };
        for change in changes {
            match change {
                Change::Message(message) => hub.publish_message(message),
                // Nobody subscribes to a thread before it exists.
                Change::Thread { thread, kind } if *kind != ThreadChange::Created => {
                    hub.publish_thread(thread)
                }
                Change::Item(item) => hub.publish_inbox(item),
                Change::Run { run, .. } => hub.publish_workflow(run),
                Change::Thread { .. } | Change::Assignment(_) | Change::Agent(_) => {}
            }
        }
    }
}

impl Hub {
    /// Follows the store's change stream from now on.
    pub(super) fn follow_changes(&self) {
        self.inner.store.subscribe(Arc::new(HubSink {
            hub: Arc::downgrade(&self.inner),
        }));
    }
}

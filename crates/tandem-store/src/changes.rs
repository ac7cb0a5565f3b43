//! The change stream: every committed write announces itself.
//!
//! A write job records what it changes on its transaction
//! ([`Tx::emit`](crate::backend::Tx::emit)) where it writes the rows, so a
//! new write path cannot forget to: inserting a message announces the
//! message, updating a thread announces the thread, and so on. After the
//! commit, and only then, the write path hands the job's changes to the
//! stream, whether or not the caller is still waiting for its answer (an
//! HTTP client that hung up cannot leave a commit unannounced). A job that
//! fails or rolls back announces nothing.
//!
//! One task delivers the changes to every [`ChangeSink`], in commit order:
//! the push hub, the workflow engine, the desk, metrics. Other processes
//! sharing a PostgreSQL database hear of these changes through the hub's
//! signals, not through this stream: it carries this process's commits,
//! each once.

use std::sync::{Arc, Mutex};

use tandem_model::{Assignment, DeskAgent, InboxItem, Message, Thread, WorkflowRun};
use tokio::sync::{mpsc, oneshot};

/// One committed change.
#[derive(Debug, Clone)]
pub enum Change {
    /// A message was stored.
    Message(Arc<Message>),
    /// A thread was created or changed (status, assignment, title, metadata).
    Thread {
        thread: Arc<Thread>,
        kind: ThreadChange,
    },
    /// A thread was assigned: the new entry of its assignment history (the
    /// thread itself comes as a [`Change::Thread`]).
    Assignment(Arc<Assignment>),
    /// An inbox item was opened, or changed (claimed, released, answered,
    /// resolved, expired): its state after the commit.
    Item(Arc<InboxItem>),
    /// A workflow run was created, or its status or wake-up time changed.
    Run {
        run: Arc<WorkflowRun>,
        kind: RunChange,
    },
    /// A desk agent's presence, capacity or teams changed.
    Agent(Arc<DeskAgent>),
}

/// How a thread changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThreadChange {
    Created,
    /// A customer's message reopened a closed thread.
    Reopened,
    Updated,
}

/// How a run changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunChange {
    /// Created; leased to its creator when `held_by` says so.
    Created,
    /// Taken up by a dispatcher (a waiting run becomes running).
    Claimed,
    /// Its status or wake-up time changed otherwise (a step's commit, an
    /// event, pause, resume, cancel, a release with a retry time).
    Updated,
}

impl Change {
    pub(crate) fn message(message: &Message) -> Self {
        Change::Message(Arc::new(message.clone()))
    }

    pub(crate) fn thread(thread: &Thread, kind: ThreadChange) -> Self {
        Change::Thread {
            thread: Arc::new(thread.clone()),
            kind,
        }
    }

    pub(crate) fn item(item: &InboxItem) -> Self {
        Change::Item(Arc::new(item.clone()))
    }

    pub(crate) fn run(run: &WorkflowRun, kind: RunChange) -> Self {
        Change::Run {
            run: Arc::new(run.clone()),
            kind,
        }
    }

    /// What a later change of the same commit supersedes: a thread, an item,
    /// a run or an agent is announced once per commit, in its final state.
    fn identity(&self) -> Option<(u8, uuid::Uuid)> {
        match self {
            Change::Message(_) | Change::Assignment(_) => None,
            Change::Thread { thread, .. } => Some((0, thread.id.0)),
            Change::Item(item) => Some((1, item.id.0)),
            Change::Run { run, .. } => Some((2, run.id.0)),
            Change::Agent(_) => None,
        }
    }
}

/// A consumer of the change stream.
pub trait ChangeSink: Send + Sync + 'static {
    /// Committed changes, in commit order. Called from the stream's own
    /// task, one call per group of commits: must not block (queue or spawn
    /// what takes time).
    fn apply(&self, changes: &[Change]);
}

/// The changes one write job recorded, before its commit.
#[derive(Debug, Default)]
pub(crate) struct Pending {
    changes: Vec<Change>,
}

impl Pending {
    pub(crate) fn push(&mut self, change: Change) {
        let earlier = change.identity().and_then(|identity| {
            self.changes
                .iter()
                .position(|c| c.identity() == Some(identity))
        });
        match earlier {
            Some(at) => {
                let earlier = self.changes.remove(at);
                self.changes.push(merge(earlier, change));
            }
            None => self.changes.push(change),
        }
    }

    pub(crate) fn take(&mut self) -> Vec<Change> {
        std::mem::take(&mut self.changes)
    }

    pub(crate) fn clear(&mut self) {
        self.changes.clear();
    }
}

/// The later state under the earlier kind when the earlier one says more
/// (a thread created and then updated in one commit was created).
fn merge(earlier: Change, later: Change) -> Change {
    match (earlier, later) {
        (
            Change::Thread { kind, .. },
            Change::Thread {
                thread,
                kind: ThreadChange::Updated,
            },
        ) => Change::Thread { thread, kind },
        (
            Change::Run { kind, .. },
            Change::Run {
                run,
                kind: RunChange::Updated,
            },
        ) => Change::Run { run, kind },
        (_, later) => later,
    }
}

/// What travels to the delivering task.
enum Item {
    /// One commit's changes.
    Commit(Vec<Change>),
    /// Answered once every earlier item was delivered.
    Flush(oneshot::Sender<()>),
}

/// The stream's sending side, held by the write path.
#[derive(Clone)]
pub(crate) struct Announcer {
    sender: mpsc::UnboundedSender<Item>,
}

impl Announcer {
    /// Hands a commit's changes to the stream.
    pub(crate) fn committed(&self, changes: Vec<Change>) {
        if !changes.is_empty() {
            // Closed only when the store is gone: nobody is left to tell.
            let _ = self.sender.send(Item::Commit(changes));
        }
    }
}

/// The sinks, and the way to the task that feeds them.
pub(crate) struct ChangeStream {
    sinks: Arc<Mutex<Vec<Arc<dyn ChangeSink>>>>,
    sender: mpsc::UnboundedSender<Item>,
}

impl ChangeStream {
    /// The stream and its announcer; the delivering task runs on the
    /// current runtime until every announcer is dropped.
    pub(crate) fn start() -> (Self, Announcer) {
        let (sender, receiver) = mpsc::unbounded_channel();
        let sinks: Arc<Mutex<Vec<Arc<dyn ChangeSink>>>> = Arc::default();
        tokio::spawn(deliver(receiver, sinks.clone()));
        let announcer = Announcer {
            sender: sender.clone(),
        };
        (Self { sinks, sender }, announcer)
    }

    pub(crate) fn subscribe(&self, sink: Arc<dyn ChangeSink>) {
        lock(&self.sinks).push(sink);
    }

    /// Resolves once everything announced before the call was delivered.
    pub(crate) async fn delivered(&self) {
        let (done, flushed) = oneshot::channel();
        if self.sender.send(Item::Flush(done)).is_ok() {
            let _ = flushed.await;
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// Delivers every commit's changes, in order, until the store is gone.
/// Commits that queued up meanwhile go to the sinks in one call.
async fn deliver(
    mut receiver: mpsc::UnboundedReceiver<Item>,
    sinks: Arc<Mutex<Vec<Arc<dyn ChangeSink>>>>,
) {
    const BATCH: usize = 64;
    let mut items = Vec::with_capacity(BATCH);
    let mut changes = Vec::new();
    let mut flushed = Vec::new();
    while receiver.recv_many(&mut items, BATCH).await > 0 {
        for item in items.drain(..) {
            match item {
                Item::Commit(commit) => changes.extend(commit),
                Item::Flush(done) => flushed.push(done),
            }
        }
        if !changes.is_empty() {
            let sinks: Vec<Arc<dyn ChangeSink>> = lock(&sinks).clone();
            for sink in &sinks {
                sink.apply(&changes);
            }
            changes.clear();
        }
        for done in flushed.drain(..) {
            let _ = done.send(());
        }
    }
}

#[cfg(test)]
mod tests {
    use chrono::Utc;
    use serde_json::json;
    use tandem_model::{AssignedTo, ThreadId, ThreadStatus};

    use super::*;

    fn thread(id: ThreadId, status: ThreadStatus) -> Thread {
        Thread {
            id,
            customer_id: "c1".into(),
            title: None,
            status,
            assigned_to: AssignedTo::Unassigned,
            assignee: None,
            metadata: json!({}),
            last_seq: 0,
            created_at: Utc::now(),
            updated_at: Utc::now(),
        }
    }

    #[test]
    fn a_row_changed_twice_in_a_commit_is_announced_once_in_its_final_state() {
        let (a, b) = (ThreadId::new(), ThreadId::new());
        let mut pending = Pending::default();
        pending.push(Change::thread(
            &thread(a, ThreadStatus::Open),
            ThreadChange::Created,
        ));
        pending.push(Change::thread(
            &thread(b, ThreadStatus::Open),
            ThreadChange::Updated,
        ));
        pending.push(Change::thread(
            &thread(a, ThreadStatus::Closed),
            ThreadChange::Updated,
        ));
        let changes = pending.take();
        let seen: Vec<(ThreadId, ThreadStatus, ThreadChange)> = changes
            .iter()
            .map(|c| match c {
                Change::Thread { thread, kind } => (thread.id, thread.status, *kind),
                other => panic!("{other:?}"),
            })
            .collect();
        // Last in place of the earlier, with the later state; created stays
        // created.
        assert_eq!(
            seen,
            [
                (b, ThreadStatus::Open, ThreadChange::Updated),
                (a, ThreadStatus::Closed, ThreadChange::Created),
            ]
        );
        assert!(pending.take().is_empty());
    }
}

//! Change signals between processes sharing a PostgreSQL database.
//!
//! Every process tells the others what it committed: its change stream
//! feeds one task ([`CommitSignals`]) that sends a `commits` signal on the
//! `tandem_hub` channel for whatever committed while the previous signal
//! was on its way, after the commit (a `NOTIFY` inside each transaction
//! would make every commit of the database queue on PostgreSQL's
//! notification lock). [`Store::send_signal`] sends ephemeral signals
//! (typing, presence, streamed text). A signal names what changed, never
//! its contents: the receiver re-reads the rows, and a signal lost (a
//! process killed between its commit and its signal) costs only time, as
//! receivers also poll. On SQLite there is one process and no signal.
//!
//! Every signal is one JSON object: `{"kind", "id", "node", …}`, `node`
//! being the sender's `application_name`; a `commits` signal carries a
//! [`Commits`] under `commits`.

use std::collections::{HashMap, HashSet};

use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use crate::backend::Pool;
use crate::changes::{Change, ChangeSink};
use crate::{Store, StoreError};

/// The channel every signal travels on.
pub const SIGNAL_CHANNEL: &str = "tandem_hub";

/// A connection listening for signals.
pub struct SignalListener {
    listener: PgListener,
}

impl SignalListener {
    /// The next signal's payload; `None` when the connection was lost, after
    /// which signals may have been missed and this listener must be dropped
    /// for a new one.
    pub async fn recv(&mut self) -> Result<Option<String>, StoreError> {
        Ok(self
            .listener
            .try_recv()
            .await?
            .map(|n| n.payload().to_owned()))
    }
}

impl Store {
    /// A new listener on the signal channel, or `None` on SQLite. Once this
    /// returns, every later commit's signal reaches the listener.
    pub async fn listen_signals(&self) -> Result<Option<SignalListener>, StoreError> {
        let Pool::Postgres(pool) = self.pool() else {
            return Ok(None);
        };
        let mut listener = PgListener::connect_with(pool).await?;
        listener.ignore_pool_close_event(true);
        listener.listen(SIGNAL_CHANNEL).await?;
        Ok(Some(SignalListener { listener }))
    }

    /// Sends an ephemeral signal to every process (nothing on SQLite).
    pub async fn send_signal(&self, payload: &str) -> Result<(), StoreError> {
        if let Pool::Postgres(pool) = self.pool() {
            sqlx::query("SELECT pg_notify($1, $2)")
                .bind(SIGNAL_CHANNEL)
                .bind(payload)
                .execute(pool)
                .await?;
        }
        Ok(())
    }
}

/// What a process committed, for the others: the threads with new
/// messages (and the newest seq of each), and the threads, inbox items and
/// workflow runs that changed. Ids only: the receivers re-read the rows.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct Commits {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub messages: Vec<(Uuid, i64)>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub threads: Vec<Uuid>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub items: Vec<Uuid>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub runs: Vec<Uuid>,
}

/// The largest payload one signal carries. PostgreSQL refuses 8,000 bytes
/// and more; a batch larger than this is sent as several signals.
const MAX_PAYLOAD: usize = 7_000;

/// What one entry of [`Commits`] costs in a payload, at most: a quoted
/// UUID, a seq, brackets and commas.
const MAX_ENTRY: usize = 64;

/// Room in a payload for what is not an entry: kind, node, field names.
const PAYLOAD_OVERHEAD: usize = 200;

impl Commits {
    /// The ids of what `changes` changed; empty when nothing concerns
    /// another process.
    fn of(changes: &[Change]) -> Self {
        let mut commits = Self::default();
        for change in changes {
            match change {
                Change::Message(message) => {
                    commits.messages.push((message.thread_id.0, message.seq))
                }
                Change::Thread { thread, .. } => commits.threads.push(thread.id.0),
                Change::Item(item) => commits.items.push(item.id.0),
                Change::Run { run, .. } => commits.runs.push(run.id.0),
                Change::Assignment(_) | Change::Agent(_) => {}
            }
        }
        commits
    }

    /// Whether nothing in it concerns another process.
    pub fn is_empty(&self) -> bool {
        self.messages.is_empty()
            && self.threads.is_empty()
            && self.items.is_empty()
            && self.runs.is_empty()
    }

    fn len(&self) -> usize {
        self.messages.len() + self.threads.len() + self.items.len() + self.runs.len()
    }

    /// Several batches as one, each thread's messages as its newest seq and
    /// each id once, in the order first seen.
    fn merge(batches: Vec<Commits>) -> Self {
        let mut merged = Self::default();
        let mut newest: HashMap<Uuid, usize> = HashMap::new();
        let mut seen: HashSet<(u8, Uuid)> = HashSet::new();
        for batch in batches {
            for (thread, seq) in batch.messages {
                match newest.get(&thread) {
                    Some(&at) => merged.messages[at].1 = merged.messages[at].1.max(seq),
                    None => {
                        newest.insert(thread, merged.messages.len());
                        merged.messages.push((thread, seq));
                    }
                }
            }
            let lists = [
                (0, batch.threads, &mut merged.threads),
                (1, batch.items, &mut merged.items),
                (2, batch.runs, &mut merged.runs),
            ];
            for (kind, ids, into) in lists {
                into.extend(ids.into_iter().filter(|id| seen.insert((kind, *id))));
            }
        }
        merged
    }

    /// The batch cut into pieces that each fit one signal.
    fn split(self, per_signal: usize) -> Vec<Commits> {
        if self.len() <= per_signal {
            return vec![self];
        }
        let mut pieces = vec![Commits::default()];
        let mut push = |add: &dyn Fn(&mut Commits)| {
            if pieces.last().is_some_and(|last| last.len() >= per_signal) {
                pieces.push(Commits::default());
            }
            if let Some(last) = pieces.last_mut() {
                add(last);
            }
        };
        for entry in self.messages {
            push(&|c: &mut Commits| c.messages.push(entry));
        }
        for id in self.threads {
            push(&|c: &mut Commits| c.threads.push(id));
        }
        for id in self.items {
            push(&|c: &mut Commits| c.items.push(id));
        }
        for id in self.runs {
            push(&|c: &mut Commits| c.runs.push(id));
        }
        pieces
    }
}

/// What travels to the sending task.
enum Queued {
    Commits(Commits),
    /// Answered once everything queued before it was sent.
    Flush(oneshot::Sender<()>),
}

/// The sink that sends this process's commits to the others, and the way
/// to wait until it has.
#[derive(Clone)]
pub(crate) struct CommitSignals {
    queue: mpsc::UnboundedSender<Queued>,
}

impl CommitSignals {
    /// Starts the sending task on the current runtime.
    pub(crate) fn start(pool: PgPool, node: String) -> Self {
        let (queue, queued) = mpsc::unbounded_channel();
        tokio::spawn(send_commits(pool, node, queued));
        Self { queue }
    }

    /// Resolves once every commit queued before the call was signalled.
    pub(crate) async fn flushed(&self) {
        let (done, flushed) = oneshot::channel();
        if self.queue.send(Queued::Flush(done)).is_ok() {
            let _ = flushed.await;
        }
    }
}

impl ChangeSink for CommitSignals {
    fn apply(&self, changes: &[Change]) {
        let commits = Commits::of(changes);
        if !commits.is_empty() {
            let _ = self.queue.send(Queued::Commits(commits));
        }
    }
}

/// The `commits` signal's envelope.
#[derive(Serialize)]
struct Envelope<'a> {
    kind: &'static str,
    id: Uuid,
    node: &'a str,
    commits: &'a Commits,
}

/// Sends what was queued, each batch as few signals as fit, until every
/// sender is gone.
async fn send_commits(pool: PgPool, node: String, mut queued: mpsc::UnboundedReceiver<Queued>) {
    const BATCH: usize = 1_024;
    let per_signal = (MAX_PAYLOAD - PAYLOAD_OVERHEAD) / MAX_ENTRY;
    let mut items = Vec::with_capacity(BATCH);
    while queued.recv_many(&mut items, BATCH).await > 0 {
        let mut batches = Vec::new();
        let mut flushed = Vec::new();
        for item in items.drain(..) {
            match item {
                Queued::Commits(commits) => batches.push(commits),
                Queued::Flush(done) => flushed.push(done),
            }
        }
        if !batches.is_empty() {
            for piece in Commits::merge(batches).split(per_signal) {
                let envelope = Envelope {
                    kind: "commits",
                    id: Uuid::nil(),
                    node: &node,
                    commits: &piece,
                };
                let payload = serde_json::to_string(&envelope).unwrap_or_default();
                let sent = sqlx::query("SELECT pg_notify($1, $2)")
                    .bind(SIGNAL_CHANNEL)
                    .bind(&payload)
                    .execute(&pool)
                    .await;
                if let Err(error) = sent {
                    // The others' poll finds what this signal would have said.
                    tracing::warn!(%error, bytes = payload.len(), "store: signalling commits failed");
                }
            }
        }
        for done in flushed {
            let _ = done.send(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u128) -> Uuid {
        Uuid::from_u128(n)
    }

    #[test]
    fn batches_merge_to_each_threads_newest_seq_and_each_id_once() {
        let merged = Commits::merge(vec![
            Commits {
                messages: vec![(id(1), 3), (id(2), 1)],
                threads: vec![id(1)],
                items: vec![id(7)],
                runs: vec![],
            },
            Commits {
                messages: vec![(id(1), 5), (id(1), 4)],
                threads: vec![id(1), id(2)],
                items: vec![id(7)],
                runs: vec![id(9)],
            },
        ]);
        assert_eq!(merged.messages, vec![(id(1), 5), (id(2), 1)]);
        assert_eq!(merged.threads, vec![id(1), id(2)]);
        assert_eq!(merged.items, vec![id(7)]);
        assert_eq!(merged.runs, vec![id(9)]);
    }

    #[test]
    fn a_large_batch_is_split_into_signals_postgresql_accepts() {
        let per_signal = (MAX_PAYLOAD - PAYLOAD_OVERHEAD) / MAX_ENTRY;
        let big = Commits {
            messages: (0..1_000).map(|n| (id(u128::MAX - n), i64::MAX)).collect(),
            threads: (0..300).map(id).collect(),
            items: (0..300).map(|n| id(n + 1_000)).collect(),
            runs: (0..300).map(|n| id(n + 2_000)).collect(),
        };
        let total = big.len();
        let pieces = big.split(per_signal);
        assert!(pieces.len() > 1);
        assert_eq!(pieces.iter().map(Commits::len).sum::<usize>(), total);
        for piece in &pieces {
            let payload = serde_json::to_string(&Envelope {
                kind: "commits",
                id: Uuid::nil(),
                node: "tandem/0196f0a8c3e27c40a1b2c3d4e5f60718",
                commits: piece,
            })
            .expect("json");
            assert!(payload.len() < 8_000, "{} bytes", payload.len());
        }
    }
}

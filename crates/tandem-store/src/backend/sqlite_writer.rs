//! SQLite's single writer with group commit.
//!
//! SQLite allows one writer at a time, and with `synchronous=FULL` every commit
//! costs an fsync. Rather than have concurrent callers queue on the database
//! lock and pay one fsync each, one task owns the write connection, takes every
//! job that is waiting, runs them in one transaction, commits them all at once
//! and only then answers the callers. Nobody is answered before their write is
//! durable.
//!
//! - The writer runs on a thread and runtime of its own, so its round trips to
//!   SQLite are never queued behind HTTP work.
//! - A batch first runs without savepoints (two fewer round trips per job).
//!   If any job fails, the batch is rolled back and run again with each job in
//!   its own savepoint, so a failing job rolls back alone. Jobs are pure
//!   database work, so running one twice is safe; only the last run counts.
//! - The writer's connection never checkpoints the WAL (that would stall a
//!   commit); a second connection does it in the background, without taking
//!   the write lock.

use std::any::Any;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use sqlx::{Connection, SqliteConnection};
use tokio::sync::{mpsc, oneshot};

use super::{Conn, Job, Tx};
use crate::StoreError;
use crate::changes::{Announcer, Change, Pending};
use crate::clock::Clock;

type Erased = Box<dyn Any + Send>;
type Run = Box<
    dyn for<'c> Fn(
            &'c mut SqliteConnection,
            &'c mut Pending,
        ) -> BoxFuture<'c, Result<Erased, StoreError>>
        + Send
        + Sync,
>;
type Reply = Box<dyn FnOnce(Result<Erased, StoreError>) + Send + Sync>;

/// How often the background connection checkpoints the WAL.
const CHECKPOINT_INTERVAL: Duration = Duration::from_millis(250);
/// WAL size (in pages) above which a checkpoint waits for readers so the log
/// can restart from the beginning instead of growing.
const WAL_RESTART_PAGES: i64 = 64 * 1024;

enum Command {
    Write { run: Run, reply: Reply },
    Shutdown(oneshot::Sender<()>),
}

/// Handle to the writer thread.
pub(super) struct SqliteWriter {
    sender: mpsc::Sender<Command>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl SqliteWriter {
    /// Starts the writer on `writer` and the checkpointer on `checkpointer`.
    pub(super) fn spawn(
        mut writer: SqliteConnection,
        checkpointer: SqliteConnection,
        max_batch: usize,
        announcer: Announcer,
    ) -> Result<Self, StoreError> {
        // Bounded: when the disk cannot keep up, callers wait here instead of
        // piling up in memory.
        let (sender, receiver) = mpsc::channel(max_batch * 4);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| StoreError::Corrupt(format!("writer runtime: {e}")))?;
        let thread = std::thread::Builder::new()
            .name("tandem-sqlite-writer".into())
            .spawn(move || {
                runtime.block_on(async move {
                    let (stop, stopped) = oneshot::channel();
                    let checkpoints = tokio::spawn(run_checkpointer(checkpointer, stopped));
                    if exec(&mut writer, "PRAGMA wal_autocheckpoint = 0")
                        .await
                        .is_ok()
                    {
                        run_writer(writer, receiver, max_batch, announcer).await;
                    }
                    let _ = stop.send(());
                    let _ = checkpoints.await;
                });
            })
            .map_err(|e| StoreError::Corrupt(format!("writer thread: {e}")))?;
        Ok(Self {
            sender,
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Queues `job`, which stamps its rows with `clock`, and answers once
    /// its batch is committed.
    pub(super) async fn submit<T: Send + 'static>(
        &self,
        job: Job<T>,
        clock: Arc<dyn Clock>,
    ) -> Result<T, StoreError> {
        let (tx, rx) = oneshot::channel::<Result<T, StoreError>>();
        let run: Run = Box::new(move |conn, changes| {
            let outcome = job(Tx::new(Conn::Sqlite(conn), changes, &*clock));
            Box::pin(async move { outcome.await.map(|v| Box::new(v) as Erased) })
        });
        let reply: Reply = Box::new(move |result| {
            let typed = result.and_then(|erased| {
                erased
                    .downcast::<T>()
                    .map(|boxed| *boxed)
                    .map_err(|_| StoreError::Corrupt("writer returned a foreign type".into()))
            });
            // The caller may have gone away (request cancelled); its write stands.
            let _ = tx.send(typed);
        });
        self.sender
            .send(Command::Write { run, reply })
            .await
            .map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Lets the queued writes finish, then stops the thread and closes its connections.
    pub(super) async fn shutdown(&self) {
        let (ack, done) = oneshot::channel();
        if self.sender.send(Command::Shutdown(ack)).await.is_ok() {
            let _ = done.await;
        }
        let thread = self.thread.lock().ok().and_then(|mut slot| slot.take());
        if let Some(thread) = thread {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
    }
}

async fn run_writer(
    mut conn: SqliteConnection,
    mut receiver: mpsc::Receiver<Command>,
    max_batch: usize,
    announcer: Announcer,
) {
    let mut batch: Vec<(Run, Reply)> = Vec::with_capacity(max_batch);
    while let Some(first) = receiver.recv().await {
        let mut shutdown = None;
        let mut next = Some(first);
        while let Some(command) = next.take() {
            match command {
                Command::Write { run, reply } => batch.push((run, reply)),
                Command::Shutdown(ack) => {
                    shutdown = Some(ack);
                    break;
                }
            }
            if batch.len() < max_batch {
                next = receiver.try_recv().ok();
            }
        }
        if !batch.is_empty() {
            commit_batch(&mut conn, &mut batch, &announcer).await;
        }
        if let Some(ack) = shutdown {
            receiver.close();
            // Anything sent before close() is still answered.
            while let Ok(Command::Write { run, reply }) = receiver.try_recv() {
                batch.push((run, reply));
            }
            if !batch.is_empty() {
                commit_batch(&mut conn, &mut batch, &announcer).await;
            }
            let _ = conn.close().await;
            let _ = ack.send(());
            return;
        }
    }
    let _ = conn.close().await;
}

/// What running a batch's jobs came to, before the commit.
enum Attempt {
    /// Every job ran (each with its own outcome, and the changes of those
    /// that succeeded); the transaction is open.
    Ran(Vec<Result<Erased, StoreError>>, Vec<Change>),
    /// A job failed without savepoints; the transaction was rolled back.
    JobFailed,
}

fn commit_batch<'a>(
    conn: &'a mut SqliteConnection,
    batch: &'a mut Vec<(Run, Reply)>,
    announcer: &'a Announcer,
) -> BoxFuture<'a, ()> {
    Box::pin(async move {
        let attempt = match run_batch(conn, batch, false).await {
            Ok(Attempt::JobFailed) => run_batch(conn, batch, true).await,
            other => other,
        };
        let committed = match attempt {
            Ok(Attempt::Ran(outcomes, changes)) => {
                exec(conn, "COMMIT").await.map(|()| (outcomes, changes))
            }
            Ok(Attempt::JobFailed) => Err(sqlx::Error::Protocol(
                "a batch with savepoints reported a failed job".into(),
            )),
            Err(e) => Err(e),
        };
        match committed {
            Ok((outcomes, changes)) => {
                // Announced before anyone is answered: whoever hears back
                // about a write may count on its changes being on their way.
                announcer.committed(changes);
                for ((_, reply), outcome) in batch.drain(..).zip(outcomes) {
                    reply(outcome);
                }
            }
            Err(e) => {
                let _ = exec(conn, "ROLLBACK").await;
                let e = Arc::new(e);
                for (_, reply) in batch.drain(..) {
                    reply(Err(StoreError::Commit(e.clone())));
                }
            }
        }
    })
}

/// Runs every job of the batch in one transaction; with `isolate`, each in a
/// savepoint of its own.
fn run_batch<'a>(
    conn: &'a mut SqliteConnection,
    batch: &'a [(Run, Reply)],
    isolate: bool,
) -> BoxFuture<'a, Result<Attempt, sqlx::Error>> {
    Box::pin(async move {
        exec(conn, "BEGIN IMMEDIATE").await?;
        let mut outcomes = Vec::with_capacity(batch.len());
        let mut changes = Vec::new();
        let mut pending = Pending::default();
        for (run, _) in batch {
            pending.clear();
            if !isolate {
                let outcome = run(&mut *conn, &mut pending).await;
                if outcome.is_err() {
                    exec(conn, "ROLLBACK").await?;
                    return Ok(Attempt::JobFailed);
                }
                outcomes.push(outcome);
                changes.extend(pending.take());
                continue;
            }
            exec(conn, "SAVEPOINT job").await?;
            let outcome = run(&mut *conn, &mut pending).await;
            if outcome.is_err() {
                // Rolled back alone, so its changes never happened.
                exec(conn, "ROLLBACK TO job").await?;
            } else {
                changes.extend(pending.take());
            }
            exec(conn, "RELEASE job").await?;
            outcomes.push(outcome);
        }
        Ok(Attempt::Ran(outcomes, changes))
    })
}

/// Moves committed pages from the WAL into the database file, off the
/// writer's path. PASSIVE never blocks the writer; only a WAL that has grown
/// very large gets a RESTART checkpoint, which waits for readers.
async fn run_checkpointer(mut conn: SqliteConnection, mut stop: oneshot::Receiver<()>) {
    let mut mode = "PRAGMA wal_checkpoint(PASSIVE)";
    loop {
        tokio::select! {
            _ = &mut stop => break,
            () = tokio::time::sleep(CHECKPOINT_INTERVAL) => {}
        }
        let result: Result<(i64, i64, i64), _> = checkpoint(&mut conn, mode).await;
        mode = match result {
            Ok((_, wal_pages, _)) if wal_pages > WAL_RESTART_PAGES => {
                "PRAGMA wal_checkpoint(RESTART)"
            }
            Ok(_) => "PRAGMA wal_checkpoint(PASSIVE)",
            Err(e) => {
                tracing::warn!(error = %e, "WAL checkpoint failed");
                "PRAGMA wal_checkpoint(PASSIVE)"
            }
        };
    }
    let _ = checkpoint(&mut conn, "PRAGMA wal_checkpoint(PASSIVE)").await;
    let _ = conn.close().await;
}

/// `(busy, pages in the WAL, pages checkpointed)`.
fn checkpoint<'a>(
    conn: &'a mut SqliteConnection,
    pragma: &'static str,
) -> BoxFuture<'a, Result<(i64, i64, i64), sqlx::Error>> {
    Box::pin(async move { sqlx::query_as(pragma).fetch_one(conn).await })
}

/// One statement on a writer-side connection. Boxed so the future's `Send`
/// bound is checked at this concrete lifetime (sqlx's `Executor` is
/// implemented per lifetime, which trips the compiler inside a spawned loop).
fn exec<'a>(
    conn: &'a mut SqliteConnection,
    sql: &'static str,
) -> BoxFuture<'a, Result<(), sqlx::Error>> {
    Box::pin(async move { sqlx::query(sql).execute(conn).await.map(|_| ()) })
}

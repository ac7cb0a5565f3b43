//! SQLite's single writer with group commit.
//!
//! SQLite allows one writer at a time, and with `synchronous=FULL` every commit
//! costs an fsync. Rather than have concurrent callers queue on the database
//! lock and pay one fsync each, one task owns the write connection, takes every
//! job that is waiting, runs each in its own savepoint (a failing job rolls
//! back alone), commits them all at once and only then answers the callers.
//! Nobody is answered before their write is durable.

use std::any::Any;
use std::sync::Arc;

use futures::future::BoxFuture;
use sqlx::{Connection, SqliteConnection};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use super::{Job, Tx};
use crate::StoreError;

type Erased = Box<dyn Any + Send>;
type Run = Box<
    dyn for<'c> FnOnce(&'c mut SqliteConnection) -> BoxFuture<'c, Result<Erased, StoreError>>
        + Send,
>;
type Reply = Box<dyn FnOnce(Result<Erased, StoreError>) + Send>;

enum Command {
    Write { run: Run, reply: Reply },
    Shutdown(oneshot::Sender<()>),
}

/// Handle to the writer task.
pub(super) struct SqliteWriter {
    sender: mpsc::Sender<Command>,
    task: std::sync::Mutex<Option<JoinHandle<()>>>,
}

impl SqliteWriter {
    pub(super) fn spawn(conn: SqliteConnection, max_batch: usize) -> Self {
        // Bounded: when the disk cannot keep up, callers wait here instead of
        // piling up in memory.
        let (sender, receiver) = mpsc::channel(max_batch * 4);
        let task = tokio::spawn(run_writer(conn, receiver, max_batch));
        Self {
            sender,
            task: std::sync::Mutex::new(Some(task)),
        }
    }

    pub(super) async fn submit<T: Send + 'static>(&self, job: Job<T>) -> Result<T, StoreError> {
        let (tx, rx) = oneshot::channel::<Result<T, StoreError>>();
        let run: Run = Box::new(move |conn| {
            Box::pin(async move { job(Tx::Sqlite(conn)).await.map(|v| Box::new(v) as Erased) })
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

    /// Lets the queued writes finish, then stops the task and closes the connection.
    pub(super) async fn shutdown(&self) {
        let (ack, done) = oneshot::channel();
        if self.sender.send(Command::Shutdown(ack)).await.is_ok() {
            let _ = done.await;
        }
        let task = self.task.lock().ok().and_then(|mut slot| slot.take());
        if let Some(task) = task {
            let _ = task.await;
        }
    }
}

async fn run_writer(
    mut conn: SqliteConnection,
    mut receiver: mpsc::Receiver<Command>,
    max_batch: usize,
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
            commit_batch(&mut conn, &mut batch).await;
        }
        if let Some(ack) = shutdown {
            receiver.close();
            // Anything sent before close() is still answered.
            while let Ok(Command::Write { run, reply }) = receiver.try_recv() {
                batch.push((run, reply));
            }
            if !batch.is_empty() {
                commit_batch(&mut conn, &mut batch).await;
            }
            let _ = conn.close().await;
            let _ = ack.send(());
            return;
        }
    }
    let _ = conn.close().await;
}

fn commit_batch<'a>(
    conn: &'a mut SqliteConnection,
    batch: &'a mut Vec<(Run, Reply)>,
) -> BoxFuture<'a, ()> {
    Box::pin(async move {
        if let Err(e) = exec(conn, "BEGIN IMMEDIATE").await {
            let e = Arc::new(e);
            for (_, reply) in batch.drain(..) {
                reply(Err(StoreError::Commit(e.clone())));
            }
            return;
        }
        let mut outcomes = Vec::with_capacity(batch.len());
        for (run, reply) in batch.drain(..) {
            if let Err(e) = exec(conn, "SAVEPOINT job").await {
                outcomes.push((reply, Err(StoreError::from(e))));
                continue;
            }
            let outcome = run(&mut *conn).await;
            let end = match outcome {
                Ok(_) => exec(conn, "RELEASE job").await,
                Err(_) => match exec(conn, "ROLLBACK TO job").await {
                    Ok(()) => exec(conn, "RELEASE job").await,
                    Err(e) => Err(e),
                },
            };
            let outcome = match end {
                Ok(()) => outcome,
                Err(e) => Err(StoreError::from(e)),
            };
            outcomes.push((reply, outcome));
        }
        match exec(conn, "COMMIT").await {
            Ok(_) => {
                for (reply, outcome) in outcomes {
                    reply(outcome);
                }
            }
            Err(e) => {
                let _ = exec(conn, "ROLLBACK").await;
                let e = Arc::new(e);
                for (reply, _) in outcomes {
                    reply(Err(StoreError::Commit(e.clone())));
                }
            }
        }
    })
}

/// One statement on the writer's connection. Boxed so the future's `Send`
/// bound is checked at this concrete lifetime (sqlx's `Executor` is
/// implemented per lifetime, which trips the compiler inside a spawned loop).
fn exec<'a>(
    conn: &'a mut SqliteConnection,
    sql: &'static str,
) -> BoxFuture<'a, Result<(), sqlx::Error>> {
    Box::pin(async move { sqlx::query(sql).execute(conn).await.map(|_| ()) })
}

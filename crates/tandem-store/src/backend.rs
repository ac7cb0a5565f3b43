//! Connecting to either backend, migrating it, and the one write path.
//!
//! Every change goes through [`Store::write`] as a *job*: an async function of a
//! [`Tx`] that may run its statements and return a value. On PostgreSQL a job
//! is one transaction, retried in one place on serialization failures. On
//! SQLite, jobs are handed to a single writer thread that commits the jobs of
//! concurrent callers together (group commit) and answers each caller only
//! after the commit is durable; a failing job rolls back alone.

mod sqlite_writer;

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{Connection, PgConnection, SqliteConnection};

use crate::StoreError;
use crate::changes::{Announcer, Change, ChangeSink, ChangeStream, Pending};
use crate::clock::{Clock, SystemClock};
use crate::queries::signals::CommitSignals;
use crate::queries::stamp;
use sqlite_writer::SqliteWriter;

static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations/sqlite");
static POSTGRES_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations/postgres");

/// How SQLite makes a commit durable.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Synchronous {
    /// Every commit is fsync'd before it is acknowledged: an acknowledged
    /// write survives a power loss. The default.
    #[default]
    Full,
    /// Commits survive a crash of the process, but the last few may be lost
    /// on a power loss or an OS crash.
    Normal,
}

/// Where the store lives and how it is sized.
#[derive(Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DatabaseOptions {
    /// `sqlite://path` (or a bare path) or `postgres://…`.
    pub url: String,
    /// Connections in the pool (readers on SQLite; all queries on PostgreSQL).
    pub max_connections: u32,
    /// PostgreSQL only: the schema to use instead of `public`.
    pub schema: Option<String>,
    /// SQLite only.
    pub synchronous: Synchronous,
    /// SQLite only: the most writes committed together in one transaction.
    pub max_batch: usize,
}

impl Default for DatabaseOptions {
    fn default() -> Self {
        Self {
            url: "sqlite://tandem.db".to_owned(),
            max_connections: 16,
            schema: None,
            synchronous: Synchronous::Full,
            max_batch: 256,
        }
    }
}

impl std::fmt::Debug for DatabaseOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DatabaseOptions")
            .field("url", &redact_url(&self.url))
            .field("max_connections", &self.max_connections)
            .field("schema", &self.schema)
            .field("synchronous", &self.synchronous)
            .field("max_batch", &self.max_batch)
            .finish()
    }
}

/// The URL with any password replaced, for logs.
pub fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some("redacted"));
            parsed.to_string()
        }
        _ => url.to_owned(),
    }
}

/// Which backend a store runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendKind {
    Sqlite,
    Postgres,
}

/// How long a token lookup is remembered. A revocation (signing out,
/// disabling an account) evicts it in its own process at once; other
/// processes sharing a PostgreSQL database honour it within this time.
const TOKEN_CACHE_TTL: Duration = Duration::from_secs(60);
const TOKEN_CACHE_CAPACITY: u64 = 100_000;

/// The store: one `Arc`, cheap to clone, shared by every request.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    backend: Backend,
    /// Live tokens by secret hash, so authenticating a request usually costs
    /// no query.
    token_cache: moka::sync::Cache<String, tandem_model::Token>,
    /// This process's name on the database (PostgreSQL's
    /// `application_name`), unique per `Store`: change signals name the
    /// process that made the change.
    node: String,
    /// Where committed changes go (see [`crate::changes`]).
    changes: ChangeStream,
    /// What the store stamps rows with (see [`crate::clock`]).
    clock: Arc<dyn Clock>,
}

enum Backend {
    Sqlite {
        readers: SqlitePool,
        writer: SqliteWriter,
    },
    Postgres {
        pool: PgPool,
        announcer: Announcer,
        /// Tells the other processes what this one committed.
        signals: CommitSignals,
    },
}

/// A connection inside a write transaction, on either backend, the
/// changes the job has made so far (see [`crate::changes`]), and the one
/// instant it stamps rows with.
pub(crate) struct Tx<'c> {
    pub(crate) conn: Conn<'c>,
    changes: &'c mut Pending,
    now: DateTime<Utc>,
}

/// The connection of a [`Tx`].
pub(crate) enum Conn<'c> {
    Sqlite(&'c mut SqliteConnection),
    Postgres(&'c mut PgConnection),
}

impl<'c> Tx<'c> {
    /// A job's transaction, stamping with `clock`'s now: read as the job
    /// starts, so each run of a job that is run again (a PostgreSQL retry,
    /// a SQLite batch rerun with savepoints) has the instant it ran at.
    pub(crate) fn new(conn: Conn<'c>, changes: &'c mut Pending, clock: &dyn Clock) -> Self {
        Self {
            conn,
            changes,
            now: stamp(clock.now()),
        }
    }

    /// Now, as this job stamps every row it writes: one instant per run of
    /// the job, on the store's clock, at the microsecond precision both
    /// backends store.
    pub(crate) fn now(&self) -> DateTime<Utc> {
        self.now
    }

    /// A shorter-lived handle on the same transaction, to lend to a callee.
    pub(crate) fn reborrow(&mut self) -> Tx<'_> {
        let conn = match &mut self.conn {
            Conn::Sqlite(conn) => Conn::Sqlite(conn),
            Conn::Postgres(conn) => Conn::Postgres(conn),
        };
        Tx {
            conn,
            changes: self.changes,
            now: self.now,
        }
    }

    /// Records a change this transaction makes, announced once it commits.
    /// Every statement that changes what subscribers see emits its change
    /// where it runs, so no caller has to remember to.
    pub(crate) fn emit(&mut self, change: Change) {
        self.changes.push(change);
    }

    /// Records several changes, in order.
    pub(crate) fn emit_all(&mut self, changes: impl IntoIterator<Item = Change>) {
        for change in changes {
            self.changes.push(change);
        }
    }

    pub(crate) fn is_postgres(&self) -> bool {
        matches!(self.conn, Conn::Postgres(_))
    }
}

/// A unit of work run inside one transaction. It may be run more than once
/// (PostgreSQL retries), so it owns or clones what it needs.
pub(crate) type Job<T> =
    Box<dyn for<'c> Fn(Tx<'c>) -> BoxFuture<'c, Result<T, StoreError>> + Send + Sync + 'static>;

/// Runs the same statement code on whichever connection a [`Tx`] holds.
/// Inside `$body`, `$c` is `&mut SqliteConnection` or `&mut PgConnection`.
macro_rules! on_conn {
    ($tx:expr, $c:ident => $body:expr) => {
        match &mut ($tx).conn {
            $crate::backend::Conn::Sqlite(conn) => {
                let $c: &mut ::sqlx::SqliteConnection = &mut **conn;
                $body
            }
            $crate::backend::Conn::Postgres(conn) => {
                let $c: &mut ::sqlx::PgConnection = &mut **conn;
                $body
            }
        }
    };
}

/// Runs the same read code on whichever pool a [`Store`] holds.
macro_rules! on_pool {
    ($store:expr, $p:ident => $body:expr) => {
        match $store.pool() {
            $crate::backend::Pool::Sqlite($p) => $body,
            $crate::backend::Pool::Postgres($p) => $body,
        }
    };
}
pub(crate) use {on_conn, on_pool};

/// The read pool of either backend.
pub(crate) enum Pool<'a> {
    Sqlite(&'a SqlitePool),
    Postgres(&'a PgPool),
}

impl Store {
    /// Connects to the database the options name, on the system clock.
    /// Does not migrate.
    pub async fn connect(options: &DatabaseOptions) -> Result<Self, StoreError> {
        Self::connect_with_clock(options, Arc::new(SystemClock)).await
    }

    /// Connects to the database the options name, stamping every row with
    /// `clock`, which the workflow engine and the desk built on this store
    /// read too (tests pass a [`ManualClock`](crate::ManualClock) they
    /// move). Does not migrate.
    pub async fn connect_with_clock(
        options: &DatabaseOptions,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, StoreError> {
        let url = options.url.trim();
        let node = format!("tandem/{}", uuid::Uuid::now_v7().simple());
        let (changes, announcer) = ChangeStream::start();
        let backend = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let mut connect = PgConnectOptions::from_str(url)?.application_name(&node);
            if let Some(schema) = &options.schema {
                connect = connect.options([("search_path", schema.as_str())]);
            }
            let pool = PgPoolOptions::new()
                .max_connections(options.max_connections.max(1))
                .acquire_timeout(Duration::from_secs(10))
                .connect_with(connect)
                .await?;
            let signals = CommitSignals::start(pool.clone(), node.clone());
            changes.subscribe(Arc::new(signals.clone()));
            Backend::Postgres {
                pool,
                announcer,
                signals,
            }
        } else {
            let path = url
                .strip_prefix("sqlite://")
                .or_else(|| url.strip_prefix("sqlite:"))
                .unwrap_or(url);
            let synchronous = match options.synchronous {
                Synchronous::Full => SqliteSynchronous::Full,
                Synchronous::Normal => SqliteSynchronous::Normal,
            };
            let connect = SqliteConnectOptions::new()
                .filename(path)
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(synchronous)
                .foreign_keys(true)
                .busy_timeout(Duration::from_secs(10));
            let readers = SqlitePoolOptions::new()
                .max_connections(options.max_connections.max(1))
                .connect_with(connect.clone())
                .await?;
            let writer_conn = SqliteConnection::connect_with(&connect).await?;
            let checkpoint_conn = SqliteConnection::connect_with(&connect).await?;
            let writer = SqliteWriter::spawn(
                writer_conn,
                checkpoint_conn,
                options.max_batch.max(1),
                announcer,
            )?;
            Backend::Sqlite { readers, writer }
        };
        Ok(Self {
            inner: Arc::new(Inner {
                backend,
                token_cache: moka::sync::Cache::builder()
                    .max_capacity(TOKEN_CACHE_CAPACITY)
                    .time_to_live(TOKEN_CACHE_TTL)
                    .build(),
                node,
                changes,
                clock,
            }),
        })
    }

    /// Applies any migrations not yet applied.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        match &self.inner.backend {
            Backend::Sqlite { readers, .. } => SQLITE_MIGRATIONS.run(readers).await?,
            Backend::Postgres { pool, .. } => POSTGRES_MIGRATIONS.run(pool).await?,
        }
        Ok(())
    }

    pub fn kind(&self) -> BackendKind {
        match &self.inner.backend {
            Backend::Sqlite { .. } => BackendKind::Sqlite,
            Backend::Postgres { .. } => BackendKind::Postgres,
        }
    }

    /// Whether the database answers a trivial query.
    pub async fn ping(&self) -> Result<(), StoreError> {
        on_pool!(self, p => sqlx::query("SELECT 1").execute(p).await.map(|_| ()))?;
        Ok(())
    }

    /// Connections open and idle in the read pool.
    pub fn pool_stats(&self) -> PoolStats {
        let (size, idle) = on_pool!(self, p => (p.size(), p.num_idle()));
        PoolStats {
            size,
            idle: idle as u32,
        }
    }

    /// Finishes the writes already queued and announces their changes,
    /// then closes every connection.
    pub async fn close(&self) {
        match &self.inner.backend {
            Backend::Sqlite { readers, writer } => {
                writer.shutdown().await;
                readers.close().await;
                self.changes_delivered().await;
            }
            Backend::Postgres { pool, signals, .. } => {
                // The last commits reach the sinks and the other processes
                // while the pool can still send their signal.
                self.changes_delivered().await;
                signals.flushed().await;
                pool.close().await;
            }
        }
    }

    /// This process's name on the database, as change signals carry it.
    pub fn node(&self) -> &str {
        &self.inner.node
    }

    /// The clock this store stamps rows with; the engine and the desk
    /// built on it read the same one.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.inner.clock
    }

    /// Now on the store's clock, at the microsecond precision both backends
    /// store: for reads that compare with what the store wrote (a window of
    /// metrics, items changed lately, idle claims, stale presence).
    pub fn now(&self) -> DateTime<Utc> {
        stamp(self.inner.clock.now())
    }

    pub(crate) fn token_cache(&self) -> &moka::sync::Cache<String, tandem_model::Token> {
        &self.inner.token_cache
    }

    pub(crate) fn pool(&self) -> Pool<'_> {
        match &self.inner.backend {
            Backend::Sqlite { readers, .. } => Pool::Sqlite(readers),
            Backend::Postgres { pool, .. } => Pool::Postgres(pool),
        }
    }

    /// Adds a consumer of the change stream: it gets every change of this
    /// process delivered from now on (commits not yet delivered included;
    /// [`Store::changes_delivered`] first to leave them out), in commit
    /// order. The store holds the
    /// sink for as long as it lives, so a sink that holds the store (the
    /// hub, the engine) should hold its owner weakly.
    pub fn subscribe(&self, sink: Arc<dyn ChangeSink>) {
        self.inner.changes.subscribe(sink);
    }

    /// Resolves once every change committed before the call has been
    /// handed to every sink.
    pub async fn changes_delivered(&self) {
        self.inner.changes.delivered().await;
    }

    /// Runs `job` in a write transaction and returns its value once
    /// committed; the changes the job emitted are announced after the
    /// commit, whatever becomes of the caller.
    pub(crate) async fn write<T: Send + 'static>(&self, job: Job<T>) -> Result<T, StoreError> {
        match &self.inner.backend {
            Backend::Sqlite { writer, .. } => writer.submit(job, self.inner.clock.clone()).await,
            Backend::Postgres {
                pool, announcer, ..
            } => {
                // A task of its own, so that a caller that goes away after
                // the commit cannot keep its changes from being announced.
                let task = tokio::spawn(write_postgres(
                    pool.clone(),
                    announcer.clone(),
                    self.inner.clock.clone(),
                    job,
                ));
                match task.await {
                    Ok(result) => result,
                    Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                    Err(_) => Err(StoreError::Closed),
                }
            }
        }
    }
}

/// One write on PostgreSQL: a transaction, retried on serialization
/// failures and deadlocks, whose changes are announced once it commits.
async fn write_postgres<T>(
    pool: PgPool,
    announcer: Announcer,
    clock: Arc<dyn Clock>,
    job: Job<T>,
) -> Result<T, StoreError> {
    const ATTEMPTS: u32 = 5;
    let mut attempt = 1;
    let mut changes = Pending::default();
    loop {
        changes.clear();
        let mut tx = pool.begin().await?;
        match job(Tx::new(Conn::Postgres(&mut tx), &mut changes, &*clock)).await {
            Ok(value) => match tx.commit().await {
                Ok(()) => {
                    announcer.committed(changes.take());
                    return Ok(value);
                }
                Err(e) => {
                    let e = StoreError::from(e);
                    if !(e.is_retryable() && attempt < ATTEMPTS) {
                        return Err(e);
                    }
                }
            },
            Err(e) => {
                tx.rollback().await?;
                if !(e.is_retryable() && attempt < ATTEMPTS) {
                    return Err(e);
                }
            }
        }
        attempt += 1;
    }
}

/// Wraps a closure as a [`Job`], fixing its higher-ranked signature.
pub(crate) fn job<T, F>(f: F) -> Job<T>
where
    F: for<'c> Fn(Tx<'c>) -> BoxFuture<'c, Result<T, StoreError>> + Send + Sync + 'static,
{
    Box::new(f)
}

/// Read-pool occupancy, for metrics.
#[derive(Debug, Clone, Copy)]
pub struct PoolStats {
    pub size: u32,
    pub idle: u32,
}

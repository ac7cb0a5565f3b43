//! A fresh database per test, on the backend the test run is pointed at
//! (feature `test-support`; for test code only).
//!
//! [`DATABASE_ENV`] unset or empty: a SQLite file in a temporary directory.
//! Set to a `postgres://` URL: a schema of its own on that server,
//! `tandem_test_{unix_seconds}_{uuid}`. When the variable is set and the
//! server cannot be reached, [`TestDatabase::fresh`] panics: a test never
//! falls back to SQLite or skips, or a broken PostgreSQL run would pass.

use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

use sqlx::{Connection, Row};

use crate::DatabaseOptions;

/// The environment variable that selects PostgreSQL.
pub const DATABASE_ENV: &str = "TANDEM_TEST_DATABASE_URL";

/// Schemas older than this are from killed runs, and are dropped.
const STALE_AFTER_SECS: u64 = 3600;

/// Where one test's data lives. The variants are public so that a test can
/// reach the database beside the store (`tests/src/reply.rs` does).
pub enum TestDatabase {
    /// `tandem.db` in `dir`, removed with it.
    Sqlite { dir: tempfile::TempDir },
    /// `schema` on the server at `url`, removed by [`TestDatabase::drop`].
    Postgres { url: String, schema: String },
}

impl TestDatabase {
    /// A fresh, empty database for one test. Panics when [`DATABASE_ENV`]
    /// is set and the server cannot be reached.
    pub async fn fresh() -> Self {
        match std::env::var(DATABASE_ENV) {
            Ok(url) if !url.is_empty() => {
                // v7 is the uuid flavour the store enables; its random bits
                // keep parallel tests apart within one second.
                let schema = format!(
                    "tandem_test_{}_{}",
                    unix_seconds(),
                    uuid::Uuid::now_v7().simple()
                );
                let mut conn = sqlx::PgConnection::connect(&url).await.unwrap_or_else(|e| {
                    panic!("{DATABASE_ENV} is set but PostgreSQL is unreachable: {e}")
                });
                drop_stale_schemas(&mut conn).await;
                sqlx::query(&format!("CREATE SCHEMA {schema}"))
                    .execute(&mut conn)
                    .await
                    .unwrap_or_else(|e| panic!("create the test schema {schema}: {e}"));
                TestDatabase::Postgres { url, schema }
            }
            _ => TestDatabase::Sqlite {
                dir: tempfile::tempdir().expect("a temporary directory for SQLite"),
            },
        }
    }

    /// Store options pointing at this database: a small pool, the rest the
    /// defaults (callers override what they need, such as `synchronous`).
    pub fn options(&self) -> DatabaseOptions {
        match self {
            TestDatabase::Sqlite { dir } => DatabaseOptions {
                url: sqlite_url(dir),
                max_connections: 4,
                ..DatabaseOptions::default()
            },
            TestDatabase::Postgres { url, schema } => DatabaseOptions {
                url: url.clone(),
                schema: Some(schema.clone()),
                max_connections: 8,
                ..DatabaseOptions::default()
            },
        }
    }

    pub fn is_postgres(&self) -> bool {
        matches!(self, TestDatabase::Postgres { .. })
    }

    /// Runs a query that returns one text column, on a connection of its
    /// own (outside any store's pool).
    pub async fn query_strings(&self, sql: &str) -> Vec<String> {
        match self {
            TestDatabase::Sqlite { dir } => {
                let mut conn = sqlx::SqliteConnection::connect(&sqlite_url(dir))
                    .await
                    .expect("connect to the test SQLite file");
                let rows = sqlx::query(sql).fetch_all(&mut conn).await.expect("query");
                rows.iter().map(|r| r.get::<String, _>(0)).collect()
            }
            TestDatabase::Postgres { url, schema } => {
                let mut conn = sqlx::PgConnection::connect(url)
                    .await
                    .expect("connect to the test PostgreSQL server");
                sqlx::query(&format!("SET search_path TO {schema}"))
                    .execute(&mut conn)
                    .await
                    .expect("set the search path to the test schema");
                let rows = sqlx::query(sql).fetch_all(&mut conn).await.expect("query");
                rows.iter().map(|r| r.get::<String, _>(0)).collect()
            }
        }
    }

    /// Removes the database: the PostgreSQL schema now; a SQLite file goes
    /// with its temporary directory. Close the store first.
    pub async fn drop(self) {
        if let TestDatabase::Postgres { url, schema } = &self
            && let Ok(mut conn) = sqlx::PgConnection::connect(url).await
        {
            let _ = sqlx::query(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
                .execute(&mut conn)
                .await;
        }
    }
}

fn sqlite_url(dir: &tempfile::TempDir) -> String {
    format!("sqlite://{}", dir.path().join("tandem.db").display())
}

fn unix_seconds() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Drops the schemas test runs that were killed left behind, older than
/// [`STALE_AFTER_SECS`]; once per process, on the first fresh database.
async fn drop_stale_schemas(conn: &mut sqlx::PgConnection) {
    static ONCE: OnceLock<()> = OnceLock::new();
    if ONCE.set(()).is_err() {
        return;
    }
    let names: Vec<String> = sqlx::query_scalar(
        "SELECT nspname::text FROM pg_namespace WHERE nspname LIKE 'tandem\\_test\\_%'",
    )
    .fetch_all(&mut *conn)
    .await
    .unwrap_or_default();
    let cutoff = unix_seconds().saturating_sub(STALE_AFTER_SECS);
    for name in names {
        // `tandem_test_{unix_seconds}_{uuid}`; a name without a time is
        // not ours to judge, and stays.
        let created = name
            .split('_')
            .nth(2)
            .and_then(|s| s.parse::<u64>().ok())
            .unwrap_or(u64::MAX);
        if created < cutoff {
            let _ = sqlx::query(&format!("DROP SCHEMA IF EXISTS {name} CASCADE"))
                .execute(&mut *conn)
                .await;
        }
    }
}

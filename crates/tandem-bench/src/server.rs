//! The real server in the benchmark's process, on a fresh store: a SQLite
//! file in a new temporary directory, or a new PostgreSQL schema that is
//! dropped at the end.

use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};

use anyhow::{Context, Result};
use clap::{Args, ValueEnum};
use tandem_model::TokenSubject;
use tandem_server::config::Quota;
use tandem_server::{AppState, Config};
use tandem_store::{Store, Synchronous};
use tandem_workflows::Registry;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Where the in-process server keeps its data; flattened into each
/// benchmark's arguments.
#[derive(Debug, Clone, Args)]
pub struct StoreArgs {
    /// The store the in-process server runs on.
    #[arg(long, value_enum, default_value_t = Backend::Sqlite)]
    pub backend: Backend,
    /// PostgreSQL to use with `--backend postgres`; the benchmark works in a
    /// fresh schema that it drops at the end.
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432/test")]
    pub database_url: String,
    /// SQLite only: how commits are made durable.
    #[arg(long, value_enum, default_value_t = SqliteSync::Full)]
    pub sqlite_synchronous: SqliteSync,
    /// SQLite only: where the database file goes (a fresh temporary directory
    /// is made inside it). The system temporary directory when absent.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Database connections of the in-process server (its default when absent).
    #[arg(long)]
    pub db_connections: Option<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Backend {
    Sqlite,
    Postgres,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SqliteSync {
    Full,
    Normal,
}

/// The real server, running in this process until [`InProcessServer::stop`].
pub struct InProcessServer {
    pub base_url: String,
    /// An admin token.
    pub token: String,
    /// What the result block names as the backend.
    pub label: String,
    shutdown: oneshot::Sender<()>,
    task: JoinHandle<std::io::Result<()>>,
    /// Removed (with the SQLite file) on drop.
    _data_dir: Option<tempfile::TempDir>,
    /// The PostgreSQL schema to drop at the end: (database URL, schema).
    pg_schema: Option<(String, String)>,
}

impl InProcessServer {
    /// Starts the server with its default configuration, the admin rate
    /// limit raised out of reach (the limiter stays in the path), then
    /// `configure`'s changes; `build` makes the app state from the migrated
    /// store. `purpose` labels the admin token.
    pub async fn start<B, F>(
        args: &StoreArgs,
        purpose: &str,
        configure: impl FnOnce(&mut Config),
        build: B,
    ) -> Result<Self>
    where
        B: FnOnce(Store, Config) -> F,
        F: Future<Output = Result<AppState>>,
    {
        let mut config = Config::default();
        config.rate_limits.admin = Quota {
            per_second: 100_000_000,
            burst: 100_000_000,
        };
        // The load comes from loopback, every client from one address.
        config.connections.unlimited_addresses =
            vec!["127.0.0.0/8".parse().map_err(anyhow::Error::msg)?];
        if let Some(connections) = args.db_connections {
            config.database.max_connections = connections;
        }
        configure(&mut config);
        let mut data_dir = None;
        let mut pg_schema = None;
        let label = match args.backend {
            Backend::Sqlite => {
                let dir = match &args.data_dir {
                    Some(parent) => tempfile::Builder::new()
                        .prefix("tandem-bench-")
                        .tempdir_in(parent),
                    None => tempfile::Builder::new().prefix("tandem-bench-").tempdir(),
                }
                .context("creating a temporary directory for the SQLite database")?;
                let file = dir.path().join("bench.db");
                config.database.url = format!("sqlite://{}", file.display());
                let (synchronous, name) = match args.sqlite_synchronous {
                    SqliteSync::Full => (Synchronous::Full, "full"),
                    SqliteSync::Normal => (Synchronous::Normal, "normal"),
                };
                config.database.synchronous = synchronous;
                data_dir = Some(dir);
                format!("sqlite (synchronous={name}, file {})", file.display())
            }
            Backend::Postgres => {
                let schema = format!("bench_{}", uuid::Uuid::now_v7().simple());
                crate::create_schema(&args.database_url, &schema).await?;
                config.database.url = args.database_url.clone();
                config.database.schema = Some(schema.clone());
                pg_schema = Some((args.database_url.clone(), schema.clone()));
                format!(
                    "postgres ({}, schema {schema})",
                    tandem_store::backend::redact_url(&args.database_url)
                )
            }
        };
        match serve(config, purpose, build).await {
            Ok((base_url, token, shutdown, task)) => Ok(Self {
                base_url,
                token,
                label,
                shutdown,
                task,
                _data_dir: data_dir,
                pg_schema,
            }),
            Err(e) => {
                if let Some((url, schema)) = &pg_schema {
                    // Best effort: the error being reported is the one above.
                    let _ = crate::drop_schema(url, schema).await;
                }
                Err(e)
            }
        }
    }

    /// [`InProcessServer::start`] running the server's own workflows only
    /// (as `configure` leaves the reply path) on the system clock; also
    /// returns the server's store, to prepare data and read it back.
    pub async fn start_with_store(
        args: &StoreArgs,
        purpose: &str,
        configure: impl FnOnce(&mut Config),
    ) -> Result<(Self, Store)> {
        let slot: Arc<Mutex<Option<Store>>> = Arc::default();
        let kept = slot.clone();
        let server = Self::start(args, purpose, configure, move |store, config| async move {
            *kept.lock().unwrap_or_else(PoisonError::into_inner) = Some(store.clone());
            AppState::build(store, config, Registry::new())
                .await
                .context("building the server")
        })
        .await?;
        let store = slot.lock().unwrap_or_else(PoisonError::into_inner).take();
        match store {
            Some(store) => Ok((server, store)),
            None => {
                server.stop().await?;
                anyhow::bail!("the server started without its store")
            }
        }
    }

    /// Stops the server (letting requests in flight finish and closing the
    /// store), then drops the PostgreSQL schema or the SQLite directory.
    pub async fn stop(self) -> Result<()> {
        let _ = self.shutdown.send(());
        let served = self.task.await.context("the server task panicked");
        let dropped = match &self.pg_schema {
            Some((url, schema)) => crate::drop_schema(url, schema).await,
            None => Ok(()),
        };
        served?.context("serving")?;
        dropped
    }
}

/// Opens and migrates the store, mints an admin token and serves on an
/// ephemeral port. Returns the base URL, the token, the shutdown trigger
/// and the server task.
async fn serve<B, F>(
    config: Config,
    purpose: &str,
    build: B,
) -> Result<(
    String,
    String,
    oneshot::Sender<()>,
    JoinHandle<std::io::Result<()>>,
)>
where
    B: FnOnce(Store, Config) -> F,
    F: Future<Output = Result<AppState>>,
{
    let store = Store::connect(&config.database)
        .await
        .context("connecting the store")?;
    store.migrate().await.context("migrating the store")?;
    let minted = store
        .create_token(TokenSubject::Admin, Some(format!("{purpose} benchmark")))
        .await
        .context("minting an admin token")?;
    let listener =
        tandem_server::net::bind(([127, 0, 0, 1], 0).into()).context("binding 127.0.0.1:0")?;
    let addr = listener.local_addr().context("reading the bound address")?;
    let state = build(store, config).await?;
    let (shutdown, stop) = oneshot::channel::<()>();
    let task = tokio::spawn(tandem_server::serve(listener, state, async move {
        // A dropped sender stops the server too.
        let _ = stop.await;
    }));
    Ok((format!("http://{addr}"), minted.secret, shutdown, task))
}

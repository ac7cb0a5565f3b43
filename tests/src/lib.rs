//! The integration harness: the real server on a loopback port, with a fresh
//! database per test.
//!
//! The backend comes from `TANDEM_TEST_DATABASE_URL`: unset, each test gets
//! its own SQLite file; set to a `postgres://` URL, each test gets its own
//! schema on that server. When the variable is set and the server cannot be
//! reached, tests fail: they never fall back or skip.

pub mod ws;

use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

use reqwest::{Method, StatusCode};
use serde_json::Value;
use sqlx::{Connection, Row};
use tandem_server::{AppState, Config};
use tandem_store::{Store, TokenSubject};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// The environment variable that selects PostgreSQL.
pub const DATABASE_ENV: &str = "TANDEM_TEST_DATABASE_URL";

/// Where a test's data lives.
pub enum TestDb {
    Sqlite { dir: tempfile::TempDir },
    Postgres { url: String, schema: String },
}

impl TestDb {
    /// A fresh, empty database for one test.
    pub async fn fresh() -> Self {
        match std::env::var(DATABASE_ENV) {
            Ok(url) if !url.is_empty() => {
                let schema = format!(
                    "tandem_test_{}_{}",
                    unix_seconds(),
                    uuid::Uuid::new_v4().simple()
                );
                let mut conn = sqlx::PgConnection::connect(&url).await.unwrap_or_else(|e| {
                    panic!("{DATABASE_ENV} is set but PostgreSQL is unreachable: {e}")
                });
                drop_stale_schemas(&mut conn).await;
                sqlx::query(&format!("CREATE SCHEMA {schema}"))
                    .execute(&mut conn)
                    .await
                    .expect("create test schema");
                TestDb::Postgres { url, schema }
            }
            _ => TestDb::Sqlite {
                dir: tempfile::tempdir().expect("temp dir"),
            },
        }
    }

    /// Store options pointing at this database.
    pub fn options(&self) -> tandem_store::DatabaseOptions {
        let mut options = tandem_store::DatabaseOptions::default();
        match self {
            TestDb::Sqlite { dir } => {
                options.url = format!("sqlite://{}", dir.path().join("tandem.db").display());
                options.max_connections = 4;
            }
            TestDb::Postgres { url, schema } => {
                options.url = url.clone();
                options.schema = Some(schema.clone());
                options.max_connections = 8;
            }
        }
        options
    }

    pub fn is_postgres(&self) -> bool {
        matches!(self, TestDb::Postgres { .. })
    }

    /// Runs a query that returns one text column, on a connection of its own.
    pub async fn query_strings(&self, sql: &str) -> Vec<String> {
        match self {
            TestDb::Sqlite { dir } => {
                let url = format!("sqlite://{}", dir.path().join("tandem.db").display());
                let mut conn = sqlx::SqliteConnection::connect(&url).await.expect("sqlite");
                let rows = sqlx::query(sql).fetch_all(&mut conn).await.expect("query");
                rows.iter().map(|r| r.get::<String, _>(0)).collect()
            }
            TestDb::Postgres { url, schema } => {
                let mut conn = sqlx::PgConnection::connect(url).await.expect("postgres");
                sqlx::query(&format!("SET search_path TO {schema}"))
                    .execute(&mut conn)
                    .await
                    .expect("search_path");
                let rows = sqlx::query(sql).fetch_all(&mut conn).await.expect("query");
                rows.iter().map(|r| r.get::<String, _>(0)).collect()
            }
        }
    }

    /// Removes the database (PostgreSQL schemas; SQLite files go with their
    /// temporary directory).
    pub async fn drop(self) {
        if let TestDb::Postgres { url, schema } = &self
            && let Ok(mut conn) = sqlx::PgConnection::connect(url).await
        {
            let _ = sqlx::query(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
                .execute(&mut conn)
                .await;
        }
    }
}

fn unix_seconds() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Schemas left behind by test runs that were killed, older than an hour.
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
    let cutoff = unix_seconds().saturating_sub(3600);
    for name in names {
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

/// A running server and an HTTP client for it.
pub struct TestServer {
    /// `http://127.0.0.1:PORT`
    pub url: String,
    /// An admin token's secret.
    pub admin: String,
    pub store: Store,
    pub db: TestDb,
    pub client: reqwest::Client,
    /// The running server's hub, for tests that publish what no route
    /// writes yet (inbox items).
    pub hub: tandem_server::hub::Hub,
    config: Config,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<std::io::Result<()>>>,
}

impl TestServer {
    /// A server with the default configuration on a fresh database.
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    /// A server whose configuration `configure` adjusts.
    pub async fn start_with(configure: impl FnOnce(&mut Config)) -> Self {
        let db = TestDb::fresh().await;
        let mut config = Config {
            database: db.options(),
            ..Config::default()
        };
        // Tests are fast clients; the rate-limit tests set their own quotas.
        config.rate_limits.admin.per_second = 0;
        config.rate_limits.agent.per_second = 0;
        config.rate_limits.customer.per_second = 0;
        config.rate_limits.anonymous.per_second = 0;
        configure(&mut config);
        let store = Store::connect(&config.database).await.expect("connect");
        store.migrate().await.expect("migrate");
        let admin = store
            .create_token(TokenSubject::Admin, None)
            .await
            .expect("admin token")
            .secret;
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let (hub, shutdown, task) = serve(listener, &store, &config);
        TestServer {
            url,
            admin,
            store,
            db,
            client: reqwest::Client::new(),
            hub,
            config,
            shutdown: Some(shutdown),
            task: Some(task),
        }
    }

    /// Stops the server as a deploy would (requests in flight finish,
    /// WebSockets are closed with 1001) and starts a new one on the same
    /// database and address.
    pub async fn restart(&mut self) {
        self.shutdown_server().await;
        self.store = Store::connect(&self.config.database)
            .await
            .expect("reconnect");
        let address = self.url.trim_start_matches("http://").to_owned();
        let listener = TcpListener::bind(&address).await.expect("rebind");
        let (hub, shutdown, task) = serve(listener, &self.store, &self.config);
        self.hub = hub;
        self.shutdown = Some(shutdown);
        self.task = Some(task);
    }

    /// `ws://127.0.0.1:PORT/v1/ws`
    pub fn ws_url(&self) -> String {
        format!("{}/v1/ws", self.url.replacen("http://", "ws://", 1))
    }

    /// A WebSocket to the hub, authenticated with a Bearer token.
    pub async fn ws(&self, token: &str) -> ws::WsClient {
        ws::WsClient::connect(&self.ws_url(), Some(token), None)
            .await
            .expect("WebSocket upgrade")
    }

    /// A single-use ticket for `GET /v1/ws?ticket=…`.
    pub async fn ws_ticket(&self, token: &str) -> String {
        let response = self.post("/v1/ws/tickets", token, Value::Null).await;
        assert_eq!(response.status, StatusCode::CREATED, "{}", response.body);
        response.body["ticket"].as_str().expect("ticket").to_owned()
    }

    /// Posts a text message as admin (role `user`) and returns its seq.
    pub async fn post_text(&self, thread: &str, text: &str) -> i64 {
        let response = self
            .post(
                &format!("/v1/threads/{thread}/messages"),
                &self.admin,
                serde_json::json!({"content": text}),
            )
            .await;
        assert_eq!(response.status, StatusCode::CREATED, "{}", response.body);
        response.body["seq"].as_i64().expect("seq")
    }

    /// Mints a token and returns its secret.
    pub async fn token(&self, subject: TokenSubject) -> String {
        self.store
            .create_token(subject, None)
            .await
            .expect("token")
            .secret
    }

    pub async fn customer(&self, customer_id: &str) -> String {
        self.token(TokenSubject::Customer {
            customer_id: customer_id.into(),
        })
        .await
    }

    pub async fn agent(&self, name: &str) -> String {
        self.token(TokenSubject::Agent { name: name.into() }).await
    }

    /// Sends a request with an optional bearer token and JSON body.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Response {
        let mut request = self.client.request(method, format!("{}{path}", self.url));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        Response::read(request.send().await.expect("request")).await
    }

    pub async fn get(&self, path: &str, token: &str) -> Response {
        self.call(Method::GET, path, Some(token), None).await
    }

    pub async fn post(&self, path: &str, token: &str, body: Value) -> Response {
        self.call(Method::POST, path, Some(token), Some(body)).await
    }

    pub async fn patch(&self, path: &str, token: &str, body: Value) -> Response {
        self.call(Method::PATCH, path, Some(token), Some(body))
            .await
    }

    /// Creates a thread for `customer_id` as admin and returns its id.
    pub async fn thread_for(&self, customer_id: &str) -> String {
        let response = self
            .post(
                "/v1/threads",
                &self.admin,
                serde_json::json!({"customer_id": customer_id}),
            )
            .await;
        assert_eq!(response.status, StatusCode::CREATED, "{}", response.body);
        response.body["id"].as_str().expect("thread id").to_owned()
    }

    /// All messages of a thread as the given token sees them.
    pub async fn messages(&self, thread: &str, token: &str) -> Vec<Value> {
        let mut all = Vec::new();
        let mut after = 0;
        loop {
            let page = self
                .get(
                    &format!("/v1/threads/{thread}/messages?after_seq={after}&limit=500"),
                    token,
                )
                .await;
            assert_eq!(page.status, StatusCode::OK, "{}", page.body);
            let messages = page.body["messages"].as_array().expect("messages").clone();
            after = page.body["next_after_seq"]
                .as_i64()
                .expect("next_after_seq");
            all.extend(messages);
            if !page.body["has_more"].as_bool().expect("has_more") {
                return all;
            }
        }
    }

    /// Stops the server (letting requests in flight finish) and removes its database.
    pub async fn stop(mut self) {
        self.shutdown_server().await;
        let db = std::mem::replace(
            &mut self.db,
            TestDb::Sqlite {
                dir: tempfile::tempdir().expect("temp dir"),
            },
        );
        db.drop().await;
    }

    /// Signals shutdown and waits for the server task to end.
    pub async fn shutdown_server(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.expect("server task").expect("server result");
        }
    }

    /// Signals shutdown without waiting.
    pub fn begin_shutdown(&mut self) -> Option<JoinHandle<std::io::Result<()>>> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        self.task.take()
    }
}

/// Starts the server on `listener`: its hub, the sender that stops it, and
/// its task.
fn serve(
    listener: TcpListener,
    store: &Store,
    config: &Config,
) -> (
    tandem_server::hub::Hub,
    oneshot::Sender<()>,
    JoinHandle<std::io::Result<()>>,
) {
    let (tx, rx) = oneshot::channel::<()>();
    let state = AppState::new(store.clone(), config.clone());
    let hub = state.hub.clone();
    let task = tokio::spawn(tandem_server::serve(listener, state, async {
        let _ = rx.await;
    }));
    (hub, tx, task)
}

/// A response's status, headers and JSON body (`Value::Null` when the body
/// is not JSON; `text` keeps it as sent).
#[derive(Debug)]
pub struct Response {
    pub status: StatusCode,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
    pub text: String,
}

impl Response {
    pub async fn read(response: reqwest::Response) -> Self {
        let status = response.status();
        let headers = response.headers().clone();
        let text = response.text().await.unwrap_or_default();
        let body = serde_json::from_str(&text).unwrap_or(Value::Null);
        Response {
            status,
            headers,
            body,
            text,
        }
    }

    /// Asserts the status and the error code of an error response.
    #[track_caller]
    pub fn assert_error(&self, status: StatusCode, code: &str) {
        assert_eq!(self.status, status, "body: {}", self.text);
        assert_eq!(self.body["error"]["code"], code, "body: {}", self.text);
        assert!(
            self.body["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "error without a message: {}",
            self.text
        );
    }
}

//! The integration harness: the real server on a loopback port, with a fresh
//! database per test.
//!
//! A server runs no workflows of its own unless started with a registry
//! ([`TestServer::with_workflows`]); then its store, engine and desk run on
//! a [`ManualClock`] the test moves, which survives restarts. A server
//! without workflows may run on one too ([`TestServer::on_manual_clock`]):
//! the desk's sweeps and the inbox's deadlines then happen when the test
//! moves the clock, not after real time.
//!
//! The backend comes from `TANDEM_TEST_DATABASE_URL`: unset, each test gets
//! its own SQLite file; set to a `postgres://` URL, each test gets its own
//! schema on that server. When the variable is set and the server cannot be
//! reached, tests fail: they never fall back or skip.

pub mod nginx;
pub mod raw;
pub mod reply;
pub mod ws;

use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tandem_model::{RunId, TokenSubject};
use tandem_server::{AppState, Config};
use tandem_store::{Clock, ManualClock, Store, SystemClock};
use tandem_workflows::{Engine, Registry};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Where a test's data lives: the store's [`TestDatabase`], under the name
/// this suite and its users have always called it.
///
/// [`TestDatabase`]: tandem_store::testing::TestDatabase
pub use tandem_store::testing::{DATABASE_ENV, TestDatabase as TestDb};

/// Points `config` at a scripted model endpoint, with the reply path on and
/// quick retries. The start-up check of the models is off (it would take
/// scripted replies); the tests of the check turn it on.
pub fn ai_config(config: &mut Config, base_url: &str) {
    config.reply.enabled = true;
    config.ai.base_url = Some(base_url.to_owned());
    config.ai.api_key = Some("test-key".into());
    config.ai.reply_model = "reply-model".into();
    config.ai.classifier_model = Some("classifier-model".into());
    config.ai.embedding_model = Some("embedding-model".into());
    config.ai.request_timeout_secs = 5;
    config.ai.first_token_timeout_secs = 5;
    config.ai.idle_timeout_secs = 5;
    config.ai.total_timeout_secs = 30;
    config.ai.max_retries = 2;
    config.ai.initial_backoff_ms = 20;
    config.ai.max_backoff_secs = 2;
    config.ai.check_models_on_start = false;
}

/// What an integrator's backend puts in `data-user-hash`: the hex
/// HMAC-SHA256 of the user's id with the widget key's identity secret.
pub fn identity_hash(secret: &str, user_id: &str) -> String {
    use hmac::Mac;
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).expect("key");
    mac.update(user_id.as_bytes());
    mac.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Builds the workflows a test server runs; called at every (re)start, so a
/// test can change the code between restarts.
pub type RegistryFn = Arc<dyn Fn() -> Registry + Send + Sync>;

/// How long [`TestServer::wait_for_status`] waits for a run.
pub const RUN_TIMEOUT: Duration = Duration::from_secs(20);

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
    /// The running server's workflow engine (its signer signs test hooks).
    pub engine: Engine,
    /// The running server's desk (see [`TestServer::desk_pass`]).
    pub desk: tandem_server::desk::Desk,
    config: Config,
    registry: RegistryFn,
    /// The server's clock (its store's, engine's and desk's), when the
    /// test moves it.
    clock: Option<Arc<ManualClock>>,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<std::io::Result<()>>>,
}

/// A test that ends without [`TestServer::stop`] drops its runtime with
/// the server running: the hub lets go of the engine, so that both, and
/// their database connections, are freed.
impl Drop for TestServer {
    fn drop(&mut self) {
        self.hub.detach();
    }
}

impl TestServer {
    /// A server with the default configuration on a fresh database.
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    /// A server whose configuration `configure` adjusts.
    pub async fn start_with(configure: impl FnOnce(&mut Config)) -> Self {
        Self::launch(configure, Arc::new(Registry::new), None).await
    }

    /// [`TestServer::start_with`] on a [`ManualClock`] (see
    /// [`TestServer::clock`]): rows are stamped, deadlines fall due and the
    /// desk sweeps as the test moves it.
    pub async fn on_manual_clock(configure: impl FnOnce(&mut Config)) -> Self {
        Self::launch(configure, Arc::new(Registry::new), Some(manual_clock())).await
    }

    /// A server whose reply path answers every customer message with the
    /// scripted model at `llm` (an OpenAI-compatible server on loopback);
    /// `configure` adjusts the rest. Retries are quick, so failure paths do
    /// not slow the suite.
    pub async fn with_ai(
        llm: &tandem_scripted_llm::ScriptedLlm,
        configure: impl FnOnce(&mut Config),
    ) -> Self {
        let base_url = llm.base_url();
        Self::start_with(move |config| {
            ai_config(config, &base_url);
            configure(config);
        })
        .await
    }

    /// A server with the reply path on and no model endpoint: every
    /// customer message goes to humans.
    pub async fn with_ai_off() -> Self {
        Self::start_with(|config| config.reply.enabled = true).await
    }

    /// A server running the workflows `registry` builds, on a
    /// [`ManualClock`] (see [`TestServer::clock`]).
    pub async fn with_workflows(registry: impl Fn() -> Registry + Send + Sync + 'static) -> Self {
        Self::with_workflows_and(|_| {}, registry).await
    }

    /// [`TestServer::with_workflows`] with a configuration `configure` adjusts.
    pub async fn with_workflows_and(
        configure: impl FnOnce(&mut Config),
        registry: impl Fn() -> Registry + Send + Sync + 'static,
    ) -> Self {
        Self::launch(configure, Arc::new(registry), Some(manual_clock())).await
    }

    async fn launch(
        configure: impl FnOnce(&mut Config),
        registry: RegistryFn,
        clock: Option<Arc<ManualClock>>,
    ) -> Self {
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
        // Every test client is on loopback, many at once; the connection
        // tests set their own cap.
        config.connections.max_per_address = 0;
        // The built-in reply path answers every customer message (with a
        // handoff while the AI is off): tests of other parts keep their
        // threads and inbox to themselves; the reply tests turn it on
        // ([`TestServer::with_ai`]).
        config.reply.enabled = false;
        // Runs another process would take are looked for often.
        config.workflows.engine.poll_interval_ms = 100;
        config.workflows.engine.shutdown_grace_secs = 2;
        configure(&mut config);
        let store = connect(&config, clock.as_ref()).await;
        store.migrate().await.expect("migrate");
        let admin = store
            .create_token(TokenSubject::Admin, None)
            .await
            .expect("admin token")
            .secret;
        // As `tandem serve` binds: a backlog a flood does not fill at once.
        let listener = tandem_server::net::bind(([127, 0, 0, 1], 0).into()).expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        // Resume URLs point at the port actually bound.
        config
            .workflows
            .public_url
            .get_or_insert_with(|| url.clone());
        let running = serve(listener, &store, &config, &registry).await;
        TestServer {
            url,
            admin,
            store,
            db,
            client: reqwest::Client::new(),
            hub: running.hub,
            engine: running.engine,
            desk: running.desk,
            config,
            registry,
            clock,
            shutdown: Some(running.shutdown),
            task: Some(running.task),
        }
    }

    /// Stops the server as a deploy would (requests in flight finish, runs
    /// are handed back, WebSockets are closed with 1001) and starts a new
    /// one on the same database, address and clock, with the workflows the
    /// registry closure builds now.
    pub async fn restart(&mut self) {
        self.shutdown_server().await;
        self.store = connect(&self.config, self.clock.as_ref()).await;
        let address = self.url.trim_start_matches("http://").to_owned();
        let listener = tandem_server::net::bind(address.parse().expect("address")).expect("rebind");
        let running = serve(listener, &self.store, &self.config, &self.registry).await;
        self.hub = running.hub;
        self.engine = running.engine;
        self.desk = running.desk;
        self.shutdown = Some(running.shutdown);
        self.task = Some(running.task);
    }

    /// Changes the workflows the next [`TestServer::restart`] runs (a
    /// deploy of new code).
    pub fn set_workflows(&mut self, registry: impl Fn() -> Registry + Send + Sync + 'static) {
        self.registry = Arc::new(registry);
    }

    /// The server's clock: its store stamps rows with it, and its engine
    /// and desk read it. Panics for a server on the system clock (start it
    /// with [`TestServer::with_workflows`] or [`TestServer::on_manual_clock`]).
    pub fn clock(&self) -> &Arc<ManualClock> {
        self.clock.as_ref().expect(
            "the server runs on the system clock: start it with TestServer::with_workflows \
             or TestServer::on_manual_clock",
        )
    }

    /// Waits (within [`RUN_TIMEOUT`]) for a desk pass that began after the
    /// call to end: it assigned what it could, and swept if a sweep was due
    /// on the clock.
    pub async fn desk_pass(&self) {
        tokio::time::timeout(RUN_TIMEOUT, self.desk.pass())
            .await
            .expect("a desk pass within the timeout");
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

    /// Creates an inbox account that signs in with `name` and `password`.
    pub async fn agent_account(&self, name: &str, password: &str) {
        tandem_server::accounts::save_agent(&self.store, name, password)
            .await
            .expect("agent account");
    }

    /// Makes a chat widget key for `origins`; with `identity_required`,
    /// only users the integrator vouches for may start a session.
    pub async fn widget_key(
        &self,
        origins: &[&str],
        identity_required: bool,
    ) -> tandem_model::WidgetKey {
        self.store
            .create_widget_key(tandem_model::NewWidgetKey {
                name: "test widget".into(),
                allowed_origins: origins.iter().map(|o| (*o).to_owned()).collect(),
                identity_required,
            })
            .await
            .expect("widget key")
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

    /// Starts a run as admin; returns the 201 body (the run state).
    pub async fn start_workflow(&self, name: &str, args: Value) -> Value {
        let response = self
            .post(
                "/v1/workflows",
                &self.admin,
                json!({"name": name, "args": args}),
            )
            .await;
        assert_eq!(response.status, StatusCode::CREATED, "{}", response.text);
        response.body
    }

    /// `GET /v1/workflows/{id}` as admin: the run, its journal and events.
    pub async fn workflow_state(&self, id: &str) -> Value {
        let response = self.get(&format!("/v1/workflows/{id}"), &self.admin).await;
        assert_eq!(response.status, StatusCode::OK, "{}", response.text);
        response.body
    }

    /// Polls the run until it has `status` (within [`RUN_TIMEOUT`]) and
    /// returns its state. Fails at once if the run ends in another status.
    pub async fn wait_for_status(&self, id: &str, status: &str) -> Value {
        let deadline = Instant::now() + RUN_TIMEOUT;
        loop {
            let state = self.workflow_state(id).await;
            let now = state["status"].as_str().unwrap_or_default();
            if now == status {
                return state;
            }
            let ended = matches!(now, "completed" | "failed" | "cancelled");
            assert!(
                !ended && Instant::now() < deadline,
                "run {id} did not become {status}: {state:#}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// `POST /v1/workflows/{id}/events/{name}` as admin.
    pub async fn send_event(&self, id: &str, name: &str, payload: Value) -> Response {
        self.post(
            &format!("/v1/workflows/{id}/events/{name}"),
            &self.admin,
            json!({"payload": payload}),
        )
        .await
    }

    /// The `Tandem-Timestamp` and `Tandem-Signature` headers of a hook
    /// signed now with the server's secret.
    pub fn hook_headers(&self, id: &str, event: &str, body: &[u8]) -> Vec<(String, String)> {
        let run: RunId = id.parse().expect("run id");
        let timestamp = chrono::Utc::now().timestamp();
        let signature = self
            .engine
            .signer()
            .hook_signature(timestamp, run, event, body);
        vec![
            ("tandem-timestamp".to_owned(), timestamp.to_string()),
            ("tandem-signature".to_owned(), signature),
        ]
    }

    /// An unauthenticated POST of `body` (JSON) to `url` (a path or a full
    /// URL, such as a resume URL) with the given headers.
    pub async fn post_unsigned(
        &self,
        url: &str,
        headers: &[(String, String)],
        body: &[u8],
    ) -> Response {
        let url = if url.starts_with("http") {
            url.to_owned()
        } else {
            format!("{}{url}", self.url)
        };
        let mut request = self
            .client
            .post(url)
            .header("content-type", "application/json")
            .body(body.to_vec());
        for (name, value) in headers {
            request = request.header(name, value);
        }
        Response::read(request.send().await.expect("request")).await
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

/// A server started by [`serve`].
struct Running {
    hub: tandem_server::hub::Hub,
    engine: Engine,
    desk: tandem_server::desk::Desk,
    shutdown: oneshot::Sender<()>,
    task: JoinHandle<std::io::Result<()>>,
}

/// A manual clock at the real now, so that rows stamped with it read as
/// recent.
fn manual_clock() -> Arc<ManualClock> {
    Arc::new(ManualClock::new(chrono::Utc::now()))
}

/// The store of a (re)started server, on `clock` or else the system clock.
async fn connect(config: &Config, clock: Option<&Arc<ManualClock>>) -> Store {
    let clock: Arc<dyn Clock> = match clock {
        Some(clock) => clock.clone(),
        None => Arc::new(SystemClock),
    };
    Store::connect_with_clock(&config.database, clock)
        .await
        .expect("connect")
}

/// Starts the server on `listener` with the workflows `registry` builds,
/// on the store's clock.
async fn serve(
    listener: TcpListener,
    store: &Store,
    config: &Config,
    registry: &RegistryFn,
) -> Running {
    let (tx, rx) = oneshot::channel::<()>();
    let state = AppState::build(store.clone(), config.clone(), registry())
        .await
        .expect("build the server state");
    let (hub, engine, desk) = (
        state.hub.clone(),
        state.workflows.clone(),
        state.desk.clone(),
    );
    let task = tokio::spawn(tandem_server::serve(listener, state, async {
        let _ = rx.await;
    }));
    Running {
        hub,
        engine,
        desk,
        shutdown: tx,
        task,
    }
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

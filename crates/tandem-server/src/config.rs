//! The server's configuration: defaults, then an optional TOML file, then the
//! environment (`TANDEM_…` with `__` between levels, and `DATABASE_URL`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};
use tandem_llm::LlmConfig;
use tandem_router::AgentConfig;
use tandem_store::DatabaseOptions;
use tandem_workflows::EngineConfig;

use crate::net::AddressRange;

/// Everything the server can be told. `Debug` never shows a secret.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Where to listen.
    pub listen: SocketAddr,
    pub database: DatabaseOptions,
    pub connections: ConnectionsConfig,
    pub limits: Limits,
    pub rate_limits: RateLimitConfig,
    pub hub: HubConfig,
    pub workflows: WorkflowsConfig,
    /// The model endpoint (`[ai]`; `OPENAI_API_KEY`, `OPENAI_BASE_URL`).
    /// The AI is off until an endpoint is set.
    pub ai: LlmConfig,
    /// The AI agent's name and system prompt (`[agent]`).
    pub agent: AgentConfig,
    pub reply: ReplyConfig,
    pub desk: DeskConfig,
    pub web: WebConfig,
    pub log: LogConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            database: DatabaseOptions::default(),
            connections: ConnectionsConfig::default(),
            limits: Limits::default(),
            rate_limits: RateLimitConfig::default(),
            hub: HubConfig::default(),
            workflows: WorkflowsConfig::default(),
            ai: LlmConfig::default(),
            agent: AgentConfig::default(),
            reply: ReplyConfig::default(),
            desk: DeskConfig::default(),
            web: WebConfig::default(),
            log: LogConfig::default(),
        }
    }
}

/// The connections the server accepts: how long a client may take to
/// speak, how many sockets one address may hold, and whose word on the
/// client's address counts. `0` turns a timeout or a cap off.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConnectionsConfig {
    /// Seconds a client has to send a whole request head: from the accept
    /// for the first request, from its first byte for the next ones.
    pub header_timeout_secs: u64,
    /// Seconds a keep-alive connection may wait, idle, for its next
    /// request. An upgraded WebSocket is not idle: it has its own pings.
    pub idle_timeout_secs: u64,
    /// Seconds a request body has to arrive in full, from the end of its
    /// head (408 after it).
    pub body_timeout_secs: u64,
    /// Sockets one client address may hold open at once (an IPv6 client:
    /// its /64), WebSockets included; over it a new one is refused (503,
    /// closed). Trusted proxies are not counted.
    pub max_per_address: usize,
    /// Addresses never held to `max_per_address` (CIDRs or addresses, e.g.
    /// `["127.0.0.0/8"]`).
    pub unlimited_addresses: Vec<AddressRange>,
    /// Sockets open at once, over all clients; over it a new one is
    /// refused (503, closed) while the open ones go on. `0`: from the
    /// open-file limit, keeping a tenth of it (at least 256) for the
    /// database, files and outgoing calls.
    pub max_open: usize,
    /// Reverse proxies whose `X-Forwarded-For` (or `Forwarded`) and
    /// `X-Forwarded-Proto` are believed (CIDRs or addresses). Empty: no
    /// header is, and the client is the TCP peer.
    pub trusted_proxies: Vec<AddressRange>,
    /// The header the trusted proxies write the client's address in:
    /// `x-forwarded-for` or `forwarded` (RFC 7239). Only that one is read,
    /// so a client cannot slip the other one past a proxy that passes it on.
    pub client_address_header: ClientAddressHeader,
}

impl Default for ConnectionsConfig {
    fn default() -> Self {
        Self {
            header_timeout_secs: 5,
            idle_timeout_secs: 60,
            body_timeout_secs: 30,
            max_per_address: 64,
            unlimited_addresses: Vec::new(),
            max_open: 0,
            trusted_proxies: Vec::new(),
            client_address_header: ClientAddressHeader::XForwardedFor,
        }
    }
}

impl ConnectionsConfig {
    pub fn header_timeout(&self) -> Option<Duration> {
        secs(self.header_timeout_secs)
    }

    pub fn idle_timeout(&self) -> Option<Duration> {
        secs(self.idle_timeout_secs)
    }

    pub fn body_timeout(&self) -> Option<Duration> {
        secs(self.body_timeout_secs)
    }
}

fn secs(secs: u64) -> Option<Duration> {
    (secs > 0).then(|| Duration::from_secs(secs))
}

/// Where trusted proxies put the client's address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClientAddressHeader {
    /// `X-Forwarded-For: client, proxy1, …` (nginx, HAProxy, most load
    /// balancers).
    #[serde(rename = "x-forwarded-for")]
    XForwardedFor,
    /// `Forwarded: for=client, for=proxy1` (RFC 7239).
    #[serde(rename = "forwarded")]
    Forwarded,
}

/// Sizes the API accepts.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Largest request head (request line and headers), in bytes. A larger
    /// head, or one of more than 100 headers, is answered 431 and the
    /// connection closed.
    pub max_head_bytes: usize,
    /// Largest request body, in bytes (413 above it).
    pub max_body_bytes: usize,
    /// Most characters of text in one message.
    pub max_message_chars: usize,
    /// Most content parts in one message.
    pub max_message_parts: usize,
    /// Largest `metadata` object, in bytes of JSON.
    pub max_metadata_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_head_bytes: 16 * 1024,
            max_body_bytes: 64 * 1024,
            max_message_chars: 32_000,
            max_message_parts: 64,
            max_metadata_bytes: 16 * 1024,
        }
    }
}

/// Requests allowed per token kind; `per_second = 0` turns a limit off.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimitConfig {
    pub admin: Quota,
    pub agent: Quota,
    pub customer: Quota,
    /// Requests without a valid token, per client address.
    pub anonymous: Quota,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        Self {
            admin: Quota {
                per_second: 2_000,
                burst: 4_000,
            },
            agent: Quota {
                per_second: 50,
                burst: 200,
            },
            customer: Quota {
                per_second: 10,
                burst: 40,
            },
            anonymous: Quota {
                per_second: 5,
                burst: 20,
            },
        }
    }
}

/// A token bucket: `burst` requests at once, refilled at `per_second`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Quota {
    pub per_second: u32,
    pub burst: u32,
}

/// The WebSocket hub: who may connect, and how much each connection may cost.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HubConfig {
    /// Browser origins allowed besides the server's own, exactly as browsers
    /// send them (`https://shop.example.com`, `http://localhost:3000`).
    pub allowed_origins: Vec<String>,
    /// Largest frame or message a client may send, in bytes (closed with
    /// 1009 above it).
    pub max_message_bytes: usize,
    /// Bytes read from a socket at a time; the buffer every connection keeps.
    pub read_buffer_bytes: usize,
    /// Frames waiting to be sent to one connection before it is closed as
    /// too slow (4008).
    pub queue_frames: usize,
    /// Bytes waiting to be sent to one connection before it is closed as too
    /// slow (4008).
    pub queue_bytes: usize,
    /// Most stored messages replayed on `subscribe`; a larger gap is answered
    /// `recovered: false` for the client to page over REST.
    pub replay_limit: u32,
    /// Topics one connection may subscribe to at once.
    pub max_subscriptions: usize,
    /// Sockets one token may hold open at once.
    pub max_connections_per_token: usize,
    /// Seconds between server pings; a connection that has said nothing
    /// since the previous ping is closed (4010), so a dead peer goes within
    /// two intervals.
    pub ping_interval_secs: u64,
    /// Frames a client may send per second, on average.
    pub frames_per_second: u32,
    /// Frames a client may send at once.
    pub frames_burst: u32,
    /// Seconds a ticket from `POST /v1/ws/tickets` stays valid.
    pub ticket_ttl_secs: u64,
    /// On PostgreSQL, seconds between checks of every subscribed thread
    /// against the table: the safety net under the change signals.
    pub poll_interval_secs: u64,
}

impl Default for HubConfig {
    fn default() -> Self {
        Self {
            allowed_origins: Vec::new(),
            max_message_bytes: 64 * 1024,
            read_buffer_bytes: 2 * 1024,
            queue_frames: 4_096,
            queue_bytes: 4 * 1024 * 1024,
            replay_limit: 1_000,
            max_subscriptions: 100,
            max_connections_per_token: 100,
            ping_interval_secs: 20,
            frames_per_second: 20,
            frames_burst: 100,
            ticket_ttl_secs: 60,
            poll_interval_secs: 5,
        }
    }
}

/// The durable workflow engine and the signed requests that reach it.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WorkflowsConfig {
    /// Pools, leases, polling and shutdown (`[workflows.engine]`).
    pub engine: EngineConfig,
    /// A directory of declarative workflow files loaded at start.
    pub definitions_dir: Option<PathBuf>,
    /// The server's address as outside callers reach it: resume URLs start
    /// with it. `http://{listen}` when unset.
    pub public_url: Option<String>,
    /// How far a hook's `Tandem-Timestamp` may be from now, in seconds.
    pub hook_tolerance_secs: u64,
    /// The HMAC key of hooks and resume URLs. When unset, one is generated
    /// on first start and kept in the database, so every process and
    /// restart agrees on it.
    pub signing_secret: Option<String>,
}

impl Default for WorkflowsConfig {
    fn default() -> Self {
        Self {
            engine: EngineConfig::default(),
            definitions_dir: None,
            public_url: None,
            hook_tolerance_secs: 300,
            signing_secret: None,
        }
    }
}

impl std::fmt::Debug for WorkflowsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkflowsConfig")
            .field("engine", &self.engine)
            .field("definitions_dir", &self.definitions_dir)
            .field("public_url", &self.public_url)
            .field("hook_tolerance_secs", &self.hook_tolerance_secs)
            .field(
                "signing_secret",
                &self.signing_secret.as_ref().map(|_| "[redacted]"),
            )
            .finish()
    }
}

/// The built-in reply path.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReplyConfig {
    /// Every customer message starts a durable `reply` run that routes it
    /// (to the AI or to humans). Off for an integrator that routes messages
    /// itself, through the API and its own workflows.
    pub enabled: bool,
}

impl Default for ReplyConfig {
    fn default() -> Self {
        Self { enabled: true }
    }
}

/// The human desk: inbox claims and agents' presence. Assignment modes,
/// capacities and deadlines are in the policy (`GET`/`PUT /v1/policy`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DeskConfig {
    /// Seconds a claim may go without activity (a claim, or a claim again by
    /// its holder) before the item goes back to the queue.
    pub claim_idle_secs: u64,
    /// Milliseconds between the desk's sweeps: idle claims, stale presence,
    /// and assigning what waits (also done at once when an item opens or an
    /// agent comes online).
    pub claim_sweep_interval_ms: u64,
    /// Seconds an agent stays `online` or `away` without refreshing its
    /// presence; then it is offline and its items go back to the queue.
    pub presence_ttl_secs: u64,
}

impl Default for DeskConfig {
    fn default() -> Self {
        Self {
            claim_idle_secs: 600,
            claim_sweep_interval_ms: 5_000,
            presence_ttl_secs: 120,
        }
    }
}

impl DeskConfig {
    pub fn presence_ttl(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.presence_ttl_secs)
    }
}

/// The web pages and their sessions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebConfig {
    /// Serve the pages from this directory instead of the copy built into
    /// the binary (for working on them: edit, reload, no rebuild).
    pub dir: Option<PathBuf>,
    /// Seconds an inbox sign-in lasts.
    pub agent_session_secs: u64,
    /// Seconds a chat visitor's session lasts; the chat starts a new one
    /// after that (a verified user gets their history back).
    pub customer_session_secs: u64,
    /// Mark the sign-in cookie `Secure`. Unset: when `workflows.public_url`
    /// is `https://…` or the request came through a trusted proxy
    /// (`connections.trusted_proxies`) that says `X-Forwarded-Proto: https`.
    pub secure_cookies: Option<bool>,
}

impl Default for WebConfig {
    fn default() -> Self {
        Self {
            dir: None,
            agent_session_secs: 12 * 3600,
            customer_session_secs: 30 * 24 * 3600,
            secure_cookies: None,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// `text` or `json`.
    pub format: LogFormat,
    /// A `tracing` filter, e.g. `info` or `tandem_server=debug,info`.
    pub filter: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::Text,
            filter: "info".to_owned(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

impl Config {
    /// Defaults, then `file` (when given), then the environment.
    pub fn load(file: Option<&Path>) -> Result<Self, Box<figment::Error>> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(file) = file {
            if !file.exists() {
                return Err(Box::new(figment::Error::from(format!(
                    "config file {} does not exist",
                    file.display()
                ))));
            }
            figment = figment.merge(Toml::file(file));
        }
        figment = figment
            .merge(
                Env::prefixed("TANDEM_")
                    .ignore(&["config", "test_database_url", "token", "url"])
                    .split("__"),
            )
            .merge(
                Env::raw()
                    .only(&["DATABASE_URL"])
                    .map(|_| "database.url".into()),
            )
            .merge(
                Env::raw()
                    .only(&["OPENAI_API_KEY", "OPENAI_BASE_URL"])
                    .map(|key| {
                        if key.as_str().eq_ignore_ascii_case("OPENAI_API_KEY") {
                            "ai.api_key".into()
                        } else {
                            "ai.base_url".into()
                        }
                    }),
            );
        figment.extract().map_err(Box::new)
    }
}

#[cfg(test)]
// figment's `Jail` closures return its (large) error type.
#[allow(clippy::result_large_err)]
mod tests {
    use super::*;
    use figment::Jail;

    #[test]
    fn environment_overrides_file_overrides_defaults() {
        Jail::expect_with(|jail| {
            jail.create_file(
                "tandem.toml",
                r#"
                listen = "0.0.0.0:9000"
                [limits]
                max_body_bytes = 1000
                [rate_limits.customer]
                per_second = 3
                burst = 6
                [workflows]
                public_url = "https://support.example.com"
                [workflows.engine.concurrency]
                reply = 4
                "#,
            )?;
            jail.set_env("TANDEM_LIMITS__MAX_BODY_BYTES", "2000");
            jail.set_env("TANDEM_WORKFLOWS__SIGNING_SECRET", "sw0rdfish");
            jail.set_env("TANDEM_WORKFLOWS__ENGINE__DEFAULT_CONCURRENCY", "8");
            jail.set_env("DATABASE_URL", "postgres://tandem:hunter2@db/tandem");
            jail.set_env("OPENAI_API_KEY", "sk-s3cret");
            jail.set_env("OPENAI_BASE_URL", "http://127.0.0.1:9/v1");
            jail.set_env("TANDEM_AI__REPLY_MODEL", "small-model");
            let config = Config::load(Some(Path::new("tandem.toml"))).map_err(|e| *e)?;
            assert_eq!(config.listen, "0.0.0.0:9000".parse().unwrap());
            assert_eq!(config.limits.max_body_bytes, 2000, "environment wins");
            assert_eq!(
                config.limits.max_message_chars, 32_000,
                "defaults fill the rest"
            );
            assert_eq!(config.rate_limits.customer.per_second, 3);
            assert_eq!(
                config.workflows.public_url.as_deref(),
                Some("https://support.example.com")
            );
            assert_eq!(config.workflows.engine.concurrency.get("reply"), Some(&4));
            assert_eq!(config.database.url, "postgres://tandem:hunter2@db/tandem");
            let shown = format!("{config:?}");
            assert_eq!(config.workflows.engine.default_concurrency, 8);
            assert_eq!(
                config.workflows.signing_secret.as_deref(),
                Some("sw0rdfish")
            );
            assert_eq!(config.workflows.hook_tolerance_secs, 300);
            assert!(!shown.contains("hunter2"), "secrets are redacted: {shown}");
            assert!(
                !shown.contains("sw0rdfish"),
                "secrets are redacted: {shown}"
            );
            assert!(shown.contains("redacted"));
            assert_eq!(config.ai.api_key.as_deref(), Some("sk-s3cret"));
            assert_eq!(config.ai.base_url.as_deref(), Some("http://127.0.0.1:9/v1"));
            assert_eq!(config.ai.reply_model, "small-model");
            assert!(config.ai.enabled());
            assert!(
                !shown.contains("sk-s3cret"),
                "secrets are redacted: {shown}"
            );
            Ok(())
        });
    }

    #[test]
    fn the_example_file_loads_and_states_the_defaults() {
        Jail::expect_with(|jail| {
            jail.create_file("tandem.toml", include_str!("../../../tandem.example.toml"))?;
            let config = Config::load(Some(Path::new("tandem.toml"))).map_err(|e| *e)?;
            let defaults = Config::default();
            assert_eq!(config.listen, defaults.listen);
            assert_eq!(config.workflows, defaults.workflows);
            assert_eq!(config.ai, defaults.ai);
            assert_eq!(config.agent, defaults.agent);
            assert_eq!(config.reply, defaults.reply);
            assert_eq!(config.desk, defaults.desk);
            assert_eq!(config.hub.queue_bytes, defaults.hub.queue_bytes);
            assert_eq!(config.connections, defaults.connections);
            assert_eq!(config.limits.max_head_bytes, defaults.limits.max_head_bytes);
            Ok(())
        });
    }

    #[test]
    fn trusted_proxies_and_address_ranges_load_from_file_and_environment() {
        Jail::expect_with(|jail| {
            jail.create_file(
                "tandem.toml",
                r#"
                [connections]
                trusted_proxies = ["10.0.0.0/8", "192.0.2.7"]
                client_address_header = "forwarded"
                "#,
            )?;
            jail.set_env(
                "TANDEM_CONNECTIONS__UNLIMITED_ADDRESSES",
                r#"["127.0.0.0/8", "::1"]"#,
            );
            jail.set_env("TANDEM_CONNECTIONS__IDLE_TIMEOUT_SECS", "90");
            let config = Config::load(Some(Path::new("tandem.toml"))).map_err(|e| *e)?;
            let connections = &config.connections;
            let shown: Vec<String> = connections
                .trusted_proxies
                .iter()
                .map(ToString::to_string)
                .collect();
            assert_eq!(shown, ["10.0.0.0/8", "192.0.2.7"]);
            assert_eq!(
                connections.client_address_header,
                ClientAddressHeader::Forwarded
            );
            assert_eq!(connections.unlimited_addresses.len(), 2);
            assert!(crate::net::in_ranges(
                &connections.unlimited_addresses,
                "127.1.2.3".parse().unwrap()
            ));
            assert_eq!(connections.idle_timeout(), Some(Duration::from_secs(90)));
            assert_eq!(connections.header_timeout(), Some(Duration::from_secs(5)));

            jail.create_file(
                "bad.toml",
                "[connections]\ntrusted_proxies = [\"proxy.internal\"]\n",
            )?;
            let error = Config::load(Some(Path::new("bad.toml"))).expect_err("not an address");
            assert!(error.to_string().contains("proxy.internal"), "{error}");
            Ok(())
        });
    }

    #[test]
    fn unknown_keys_and_missing_files_are_errors() {
        Jail::expect_with(|jail| {
            jail.create_file("typo.toml", "[limits]\nmax_body = 5\n")?;
            assert!(Config::load(Some(Path::new("typo.toml"))).is_err());
            assert!(Config::load(Some(Path::new("missing.toml"))).is_err());
            // The suite's own variable does not trip the server's config.
            jail.set_env("TANDEM_TEST_DATABASE_URL", "postgres://x");
            assert!(Config::load(None).is_ok());
            Ok(())
        });
    }
}

//! Tandem's HTTP server.
//!
//! - [`accounts`]: inbox sign-in accounts and their Argon2id passwords.
//! - [`config`]: the one typed configuration (defaults, a TOML file, the environment).
//! - [`app`]: builds the router from its parts and serves it on a listener until
//!   a shutdown signal, finishing the requests in flight.
//! - [`desk`]: the human desk's background work: idle inbox claims go back
//!   to the queue.
//! - [`api`]: one module per resource (threads, messages, workflows, hooks,
//!   inbox, routing) plus operations (health, readiness, metrics, the
//!   OpenAPI document).
//! - [`http`]: what every route shares: the error type and its one mapping to
//!   HTTP, extractors that keep bad input in that format, authentication, who
//!   may call a route (the access extractors), rate limits and request metrics.
//! - [`net`]: sockets: the accept loop and its caps (per client address,
//!   and from the open-file limit), each connection's header, idle and body
//!   timeouts, the client's address behind trusted proxies.
//! - [`hub`]: the WebSocket push hub: subscriptions, fan-out in `seq` order,
//!   backpressure, and the signals that keep several processes in step.
//! - [`models`]: the start-up check that each configured model answers,
//!   said loudly when one does not, and shown in `/readyz`.
//! - [`replies`]: the `reply` run a customer message starts, created with
//!   the message.
//! - [`state`]: the small bundle of handles each request gets.
//! - [`web`]: the web pages (`/chat`, `/inbox`, `/widget.js`), built into
//!   the binary, with their security headers.
//! - [`workflows`]: the workflow engine's signing secret, its declarative
//!   definitions, and the AI's streamed text on its way to the hub.

pub mod accounts;
pub mod api;
pub mod app;
pub mod config;
pub mod desk;
pub mod http;
pub mod hub;
pub mod models;
pub mod net;
pub mod replies;
pub mod state;
pub mod web;
pub mod workflows;

pub use app::{build_app, serve};
pub use config::Config;
pub use state::AppState;

//! Tandem's store: the record of every thread, message and token.
//!
//! One [`Store`] serves both backends, chosen once from the database URL:
//! SQLite (an embedded file in WAL mode, the default) and PostgreSQL (for
//! several server processes on one database). SQL that serves both is written
//! once and run on either connection type through the `on_conn!` and
//! `on_pool!` macros.
//!
//! The types it reads and writes are the domain's, in `tandem-model` (with
//! its `sqlx` feature); what stays here is the store's own: its row structs,
//! its inputs for writes only the store makes (idempotency keys, journal
//! commits, run claims, events), tickets and signals.
//!
//! - [`backend`]: connecting, migrating, and the write path that every change
//!   takes: a transaction on PostgreSQL, a group commit on SQLite.
//! - [`clock`]: the one clock: the store stamps rows with it, and the
//!   workflow engine and the desk read it; tests move a [`ManualClock`].
//! - [`changes`]: the change stream: each write emits a typed [`Change`] for
//!   every row it changes that someone may need to hear of, and after the
//!   commit the write path hands them to every [`ChangeSink`] (the hub, the
//!   engine, the desk, metrics), in commit order.
//! - [`queries`]: `impl Store` split by topic (threads, messages, tokens,
//!   idempotency records, assignments and their history, inbox items and
//!   their resolutions, WebSocket tickets, workflow runs and their journal,
//!   routing settings (the policy, [`Store::policy`]) and examples, LLM
//!   usage, server secrets, and the change signals server processes send
//!   each other on PostgreSQL).
//! - [`error`]: [`StoreError`], whose variants the server maps to HTTP.
//! - `testing` (feature `test-support`, for test code): a fresh database per
//!   test on the backend `TANDEM_TEST_DATABASE_URL` selects, shared by every
//!   suite so that each runs on SQLite and PostgreSQL alike.

pub mod backend;
pub mod changes;
pub mod clock;
pub mod error;
pub mod queries;
#[cfg(feature = "test-support")]
pub mod testing;

pub use backend::{DatabaseOptions, Store, Synchronous};
pub use changes::{Change, ChangeSink, RunChange, ThreadChange};
pub use clock::{Clock, ManualClock, SystemClock};
pub use error::StoreError;
pub use queries::idempotency::{IdempotencyKey, Written};
pub use queries::signals::{Commits, SIGNAL_CHANNEL, SignalListener};
pub use queries::tickets::WsTicket;
pub use queries::workflows::{ClaimRequest, NewEvent, StepCommit, micros};

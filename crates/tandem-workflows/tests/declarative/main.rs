//! Declarative workflows on a real engine, on the backend
//! `TANDEM_TEST_DATABASE_URL` selects (SQLite by default), on a manual
//! clock, with the systems they call faked on loopback:
//!
//! - [`refund`]: the refund example and its payments system; `http` steps,
//!   events, timeouts, loops, versions, loading.
//! - [`ai`]: `llm`, `ask_human` and `approval` steps and the scripted model.
//! - [`support`]: the store, definitions and engine the two share.

mod ai;
mod refund;
mod support;

//! Tandem's durable workflow engine.
//!
//! A workflow is Rust code (or a declarative file) that takes *steps*
//! through a [`Context`]: actions whose results are journaled, durable
//! sleeps, waits for events with deadlines, recorded clock readings and
//! random values, and writes to Tandem's own tables that commit with their
//! journal entry. A run survives crashes and restarts by replaying its
//! journal: journaled steps return their recorded outcome, and the run goes
//! on at its first unfinished step.
//!
//! - [`context`]: the step API a workflow's code calls.
//! - [`registry`]: workflows by name and version; runs stay on the version
//!   they started on.
//! - [`engine`]: starting, pausing, resuming, cancelling, delivering
//!   events, and the dispatcher that leases due runs to executors within
//!   each workflow's pool.
//! - [`executor`]: one execution of one run, and how it ended.
//! - [`retry`]: retry policies (exponential backoff with jitter).
//! - [`signing`]: HMAC signatures of hooks, resume URLs and outbound calls.
//! - [`error`]: step, action and engine errors.
//! - [`declarative`]: workflows defined in JSON or TOML files: their format,
//!   validation, content-hash versions, the interpreter that runs them, and
//!   loading a directory of them at startup.
//!
//! Time is the store's clock ([`tandem_store::Clock`]): the engine reads
//! `now` from it and waits on it, so tests move a `ManualClock` instead of
//! sleeping.

pub mod context;
pub mod declarative;
pub mod engine;
pub mod error;
mod executor;
pub mod registry;
pub mod retry;
pub mod signing;

pub use context::{Context, StepInfo, Wakeup};
pub use declarative::{DefinitionError, LoadedDefinition, load_definitions};
pub use engine::{Engine, EngineConfig, RunState};
pub use error::{ActionError, EngineError, StepError};
pub use registry::{End, Outcome, Registry, WorkflowDef};
pub use retry::RetryPolicy;
pub use signing::{SignatureError, Signer};

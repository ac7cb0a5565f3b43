//! Tandem's domain: the data model every crate speaks, and the names they
//! share. Names and JSON shapes here are public: they are what the REST API,
//! the WebSocket hub and the clients see.
//!
//! The store persists these types (with the `sqlx` feature they carry their
//! column and row mappings); the LLM client, the router, the workflow engine
//! and the server use them without depending on the store.
//!
//! - [`ids`]: newtype ids, UUID v7 so they sort by creation time.
//! - [`enums`]: the closed sets of names (statuses, roles, kinds), stored as
//!   text on both backends.
//! - [`thread`]: threads, how to list and change them, and their assignment
//!   history.
//! - [`message`]: messages, their authors and content parts, a customer's
//!   view of them, and what posting one changed.
//! - [`metadata`]: the message metadata keys the server writes, which of
//!   them customers may not set and which they never see: one table.
//! - [`inbox`]: inbox items (work waiting for a human), how to list,
//!   resolve and release them.
//! - [`desk`]: the desk's view of agents (presence, teams, capacity) and of
//!   deadlines passing.
//! - [`desk_metrics`]: how fast humans respond and resolve.
//! - [`policy`]: the routing policy (`GET`/`PUT /v1/policy`): strategies in
//!   order, thresholds, the approval gate, the desk's deadlines and
//!   fallbacks.
//! - [`routing`]: labelled examples the embeddings strategy learns from.
//! - [`usage`]: tokens spent on the LLM.
//! - [`token`]: API tokens (never their secrets).
//! - [`web_access`]: the chat widget's keys and the inbox's agent accounts.
//! - [`workflow`]: workflow runs, their journal and events, and the store
//!   effects a step makes exactly once.
//! - [`names`]: names more than one crate must spell alike (the policy
//!   setting, the AI's tools, workflow names).

pub mod desk;
pub mod desk_metrics;
pub mod enums;
pub mod ids;
pub mod inbox;
pub mod message;
pub mod metadata;
pub mod names;
pub mod policy;
pub mod routing;
pub mod thread;
pub mod token;
pub mod usage;
pub mod web_access;
pub mod workflow;

pub use desk::*;
pub use desk_metrics::*;
pub use enums::*;
pub use ids::*;
pub use inbox::*;
pub use message::*;
pub use policy::Policy;
pub use routing::*;
pub use thread::*;
pub use token::*;
pub use usage::*;
pub use web_access::*;
pub use workflow::*;

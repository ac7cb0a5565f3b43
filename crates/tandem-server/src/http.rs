//! What every route shares.

pub mod access;
pub mod auth;
pub mod error;
pub mod extract;
pub mod metrics;
pub mod origin;
pub mod rate_limit;

pub use access::{Admin, Agent, Customer, Staff, StaffOnThread};
pub use auth::Principal;
pub use error::ApiError;
pub use extract::{Accepted, ApiJson, ApiQuery, Created, IdempotencyHeader, RawBody};

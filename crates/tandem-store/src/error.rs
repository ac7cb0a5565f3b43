//! Errors of the store layer.

use std::sync::Arc;

/// What can go wrong in the store. The server maps each variant to one HTTP status.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The thing asked for does not exist, or is not visible to the caller.
    #[error("{0} not found")]
    NotFound(&'static str),
    /// The request is well-formed but contradicts what is stored.
    #[error("{message}")]
    Conflict { code: &'static str, message: String },
    /// The request refers to something it may not (e.g. an unknown tool call).
    #[error("{message}")]
    Invalid { code: &'static str, message: String },
    /// An `Idempotency-Key` was reused with a different request.
    #[error("this Idempotency-Key was already used with a different request")]
    IdempotencyMismatch,
    /// The store is shutting down and takes no more writes.
    #[error("the store is closed")]
    Closed,
    /// A batch of writes failed to commit; every write in it was rolled back.
    #[error("commit failed: {0}")]
    Commit(Arc<sqlx::Error>),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    #[error(transparent)]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("stored data is inconsistent: {0}")]
    Corrupt(String),
}

impl StoreError {
    pub(crate) fn conflict(code: &'static str, message: impl Into<String>) -> Self {
        Self::Conflict {
            code,
            message: message.into(),
        }
    }

    pub(crate) fn invalid(code: &'static str, message: impl Into<String>) -> Self {
        Self::Invalid {
            code,
            message: message.into(),
        }
    }

    /// Whether the whole transaction may be retried (PostgreSQL serialization
    /// failures and deadlocks).
    pub(crate) fn is_retryable(&self) -> bool {
        match self {
            Self::Database(sqlx::Error::Database(e)) => {
                matches!(e.code().as_deref(), Some("40001") | Some("40P01"))
            }
            _ => false,
        }
    }
}

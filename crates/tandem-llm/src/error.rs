//! [`LlmError`]: why a model call failed, after the retries it deserved.

/// Why a model call failed.
#[derive(thiserror::Error, Debug)]
pub enum LlmError {
    /// The provider answered with an error status after all retries (or a
    /// non-retryable one).
    #[error("the model provider answered {status}: {message}")]
    Status { status: u16, message: String },
    /// No complete answer within the per-attempt timeout, on every attempt.
    #[error("the model provider did not answer in time")]
    Timeout,
    /// The provider could not be reached, or the connection broke.
    #[error("could not reach the model provider: {0}")]
    Transport(String),
    /// The answer does not have the shape asked for. Never retried: the same
    /// prompt would likely get the same answer, and the caller decides.
    #[error("the model's answer is malformed: {0}")]
    Malformed(String),
    /// The client is configured in a way that cannot work.
    #[error("the LLM client is misconfigured: {0}")]
    Config(String),
}

impl LlmError {
    /// A short machine name for records and metrics.
    pub fn code(&self) -> &'static str {
        match self {
            LlmError::Status { status: 429, .. } => "rate_limited",
            LlmError::Status { status, .. } if *status >= 500 => "server_error",
            LlmError::Status {
                status: 401 | 403, ..
            } => "unauthorized",
            LlmError::Status { status: 404, .. } => "not_found",
            LlmError::Status { .. } => "rejected",
            LlmError::Timeout => "timeout",
            LlmError::Transport(_) => "unreachable",
            LlmError::Malformed(_) => "malformed_output",
            LlmError::Config(_) => "misconfigured",
        }
    }

    /// Whether another attempt could succeed: rate limits, server errors,
    /// timeouts and broken connections. Other 4xx, malformed answers and
    /// configuration errors would fail the same way again.
    pub fn is_retryable(&self) -> bool {
        match self {
            LlmError::Status { status, .. } => *status == 429 || *status >= 500,
            LlmError::Timeout | LlmError::Transport(_) => true,
            LlmError::Malformed(_) | LlmError::Config(_) => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(status: u16) -> LlmError {
        LlmError::Status {
            status,
            message: String::new(),
        }
    }

    #[test]
    fn codes_and_retryability() {
        assert_eq!(status(429).code(), "rate_limited");
        assert_eq!(status(503).code(), "server_error");
        assert_eq!(status(401).code(), "unauthorized");
        assert_eq!(status(400).code(), "rejected");
        assert_eq!(LlmError::Timeout.code(), "timeout");
        assert_eq!(
            LlmError::Malformed(String::new()).code(),
            "malformed_output"
        );
        assert!(status(429).is_retryable());
        assert!(status(500).is_retryable());
        assert!(!status(400).is_retryable());
        assert!(!status(404).is_retryable());
        assert!(LlmError::Timeout.is_retryable());
        assert!(LlmError::Transport(String::new()).is_retryable());
        assert!(!LlmError::Malformed(String::new()).is_retryable());
    }
}

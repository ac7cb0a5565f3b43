//! [`LlmError`]: why a model call failed, after the retries it deserved.

/// Why a model call failed.
#[derive(thiserror::Error, Debug)]
pub enum LlmError {
    /// The provider answered with an error status after all retries (or a
    /// non-retryable one), before or in the middle of a streamed answer.
    #[error("the model provider answered {status}: {message}")]
    Status { status: u16, message: String },
    /// The provider refused the request for what it contains: a 4xx other
    /// than the transient ones, or a 5xx whose message says the request
    /// could not be parsed or rendered (llama.cpp answers 500 for a chat
    /// template that rejects the conversation). The same bytes would be
    /// refused again, so it is never retried.
    #[error("the model provider refused the request ({status}): {message}")]
    Rejected { status: u16, message: String },
    /// No answer in time: which limit ran out is in the text (the first
    /// token, a silence inside a stream, a whole unstreamed answer, or the
    /// call's total budget).
    #[error("the model provider did not answer in time: {0}")]
    Timeout(String),
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
            LlmError::Status { status: 501, .. } => "unsupported",
            LlmError::Status { status, .. } if *status >= 500 => "server_error",
            LlmError::Status {
                status: 401 | 403, ..
            } => "unauthorized",
            LlmError::Status { status: 404, .. } => "not_found",
            LlmError::Status { .. } | LlmError::Rejected { .. } => "rejected",
            LlmError::Timeout(_) => "timeout",
            LlmError::Transport(_) => "unreachable",
            LlmError::Malformed(_) => "malformed_output",
            LlmError::Config(_) => "misconfigured",
        }
    }

    /// Whether another attempt could succeed: rate limits, server errors,
    /// timeouts and broken connections. Other 4xx, a 501 (the server does
    /// not do this at all), requests refused for their content, malformed
    /// answers and configuration errors would fail the same way again.
    pub fn is_retryable(&self) -> bool {
        match self {
            LlmError::Status { status, .. } => *status == 429 || (*status >= 500 && *status != 501),
            LlmError::Timeout(_) | LlmError::Transport(_) => true,
            LlmError::Rejected { .. } | LlmError::Malformed(_) | LlmError::Config(_) => false,
        }
    }

    /// Whether the failure says the model cannot be used now (what
    /// `/readyz` reports): the endpoint is unreachable, silent, refuses the
    /// key, does not know the model or does not offer the call. A refused
    /// request, a rate limit or a malformed answer came from a model that
    /// answered.
    pub fn means_unavailable(&self) -> bool {
        match self {
            LlmError::Status { status, .. } => matches!(status, 401 | 403 | 404) || *status >= 500,
            LlmError::Timeout(_) | LlmError::Transport(_) | LlmError::Config(_) => true,
            LlmError::Rejected { .. } | LlmError::Malformed(_) => false,
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
        assert_eq!(status(501).code(), "unsupported");
        assert_eq!(status(401).code(), "unauthorized");
        assert_eq!(status(400).code(), "rejected");
        let rejected = LlmError::Rejected {
            status: 500,
            message: "Failed to parse tool call arguments as JSON".to_owned(),
        };
        assert_eq!(rejected.code(), "rejected");
        assert_eq!(LlmError::Timeout(String::new()).code(), "timeout");
        assert_eq!(
            LlmError::Malformed(String::new()).code(),
            "malformed_output"
        );
        assert!(status(429).is_retryable());
        assert!(status(500).is_retryable());
        assert!(!status(501).is_retryable());
        assert!(!status(400).is_retryable());
        assert!(!status(404).is_retryable());
        assert!(!rejected.is_retryable());
        assert!(LlmError::Timeout(String::new()).is_retryable());
        assert!(LlmError::Transport(String::new()).is_retryable());
        assert!(!LlmError::Malformed(String::new()).is_retryable());
    }

    #[test]
    fn what_says_a_model_is_unavailable() {
        assert!(status(404).means_unavailable());
        assert!(status(501).means_unavailable());
        assert!(status(503).means_unavailable());
        assert!(LlmError::Transport(String::new()).means_unavailable());
        assert!(!status(429).means_unavailable());
        assert!(!status(400).means_unavailable());
        assert!(!LlmError::Malformed(String::new()).means_unavailable());
    }
}

//! The agent's request errors and their mapping onto ttrpc (gRPC) codes.

use ttrpc::Code;

/// An error answering one Task API request.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    Unimplemented(String),
    #[error("{0}")]
    DeadlineExceeded(String),
    #[error("{0}")]
    Internal(String),
}

impl AgentError {
    /// The gRPC code containerd expects for this error.
    pub fn code(&self) -> Code {
        match self {
            Self::NotFound(_) => Code::NOT_FOUND,
            Self::AlreadyExists(_) => Code::ALREADY_EXISTS,
            Self::InvalidArgument(_) => Code::INVALID_ARGUMENT,
            Self::FailedPrecondition(_) => Code::FAILED_PRECONDITION,
            Self::Unimplemented(_) => Code::UNIMPLEMENTED,
            Self::DeadlineExceeded(_) => Code::DEADLINE_EXCEEDED,
            Self::Internal(_) => Code::INTERNAL,
        }
    }

    /// Wraps an error of an internal step with what the agent was doing.
    pub fn internal(context: &str, err: impl std::fmt::Display) -> Self {
        Self::Internal(format!("{context}: {err}"))
    }
}

impl From<AgentError> for ttrpc::Error {
    fn from(e: AgentError) -> Self {
        ttrpc::Error::RpcStatus(ttrpc::get_status(e.code(), e.to_string()))
    }
}

pub type AgentResult<T> = Result<T, AgentError>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_map_to_grpc() {
        let cases = [
            (AgentError::NotFound("x".into()), Code::NOT_FOUND),
            (AgentError::AlreadyExists("x".into()), Code::ALREADY_EXISTS),
            (
                AgentError::InvalidArgument("x".into()),
                Code::INVALID_ARGUMENT,
            ),
            (
                AgentError::FailedPrecondition("x".into()),
                Code::FAILED_PRECONDITION,
            ),
            (AgentError::Unimplemented("x".into()), Code::UNIMPLEMENTED),
            (AgentError::internal("doing", "broke"), Code::INTERNAL),
        ];
        for (err, code) in cases {
            let msg = err.to_string();
            match ttrpc::Error::from(err) {
                ttrpc::Error::RpcStatus(s) => {
                    assert_eq!(s.code(), code);
                    assert_eq!(s.message(), msg);
                }
                other => panic!("unexpected {other:?}"),
            }
        }
    }
}

//! The library's one error type. Its variants sort failures the way clients
//! and histories need: retryable and definite (`NotLeader`, `Unavailable`),
//! definite and final (`InvalidArgument`), and indeterminate (`Indeterminate`:
//! the operation may or may not have happened).

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// This node does not lead; nothing was proposed. `leader` is the KV
    /// address of the leader it knows of.
    #[error("not the leader (leader: {})", leader.as_deref().unwrap_or("unknown"))]
    NotLeader { leader: Option<String> },
    /// The request is malformed or over a limit; nothing was proposed.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The node cannot take the request now (overloaded, no leader yet, just
    /// elected); nothing was proposed. Retry.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// The request was proposed but its fate is unknown (timeout, leadership
    /// lost): it may have been applied, or may be applied later.
    #[error("outcome unknown: {0}")]
    Indeterminate(String),
    /// The data directory holds something it should not. Names the file and,
    /// where known, the byte offset.
    #[error("storage: {path}{}: {reason}", offset.map(|o| format!(" at offset {o}")).unwrap_or_default())]
    Storage {
        path: String,
        offset: Option<u64>,
        reason: String,
    },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("configuration: {0}")]
    Config(String),
    #[error("transport: {0}")]
    Transport(String),
}

/// `text` followed by each source of `error` it does not already say
/// ("transport error" alone hides a refused certificate, say).
pub(crate) fn with_sources(error: &dyn std::error::Error, mut text: String) -> String {
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

impl Error {
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }
}

//! The error kinds the exit code tells apart.

/// A mistake in what the user asked for (an option, a path, a config): exit code 2, like
/// clap's own usage errors. Anything else that fails exits with 1.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

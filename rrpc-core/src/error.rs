//! Errors: [`RemoteError`] crosses the wire; [`Error`] is what a local caller sees.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::value::ValueError;

/// What kind of failure a [`RemoteError`] reports. Peers may send kinds this
/// version does not know; they arrive as [`ErrorKind::Custom`].
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The object has no method of that name.
    NoSuchMethod,
    /// The object has no attribute of that name.
    NoSuchAttribute,
    /// The object id is unknown (released, or never exported).
    NoSuchObject,
    /// An argument had the wrong type or value, or the count was wrong.
    BadArgument,
    /// The object cannot be called.
    NotCallable,
    /// The attribute cannot be set.
    ReadOnly,
    /// The call ran past its deadline on the server.
    Timeout,
    /// The call was cancelled.
    Cancelled,
    /// The server refused the call (shutting down, serving stopped, limit hit).
    Refused,
    /// A connection the handler itself used was lost.
    ConnectionLost,
    /// The service is not exposed by this server.
    NotExposed,
    /// A file or other named thing does not exist.
    NotFound,
    /// The operating system refused the operation.
    PermissionDenied,
    /// Another I/O error.
    Io,
    /// The peer broke the protocol.
    Protocol,
    /// A bug or an unexpected state on the remote side.
    Internal,
    /// An application-defined kind.
    Custom(String),
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ErrorKind::Custom(kind) => f.write_str(kind),
            other => write!(f, "{other:?}"),
        }
    }
}

/// An error raised by the peer while serving a request: its kind, a message,
/// and the context it passed through (innermost first).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct RemoteError {
    /// What went wrong, in a form a program can match on.
    pub kind: ErrorKind,
    /// What went wrong, for a person.
    pub message: String,
    /// Where it happened: one entry per layer the error passed through.
    pub context: Vec<String>,
}

impl std::error::Error for RemoteError {}

impl fmt::Display for RemoteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind, self.message)?;
        for ctx in &self.context {
            write!(f, "\n    {ctx}")?;
        }
        Ok(())
    }
}

impl RemoteError {
    /// A new error of `kind` with `message` and no context.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        RemoteError {
            kind,
            message: message.into(),
            context: Vec::new(),
        }
    }

    /// Adds a line of context (where the error passed through).
    pub fn context(mut self, ctx: impl Into<String>) -> Self {
        self.context.push(ctx.into());
        self
    }

    /// The object has no method `method`.
    pub fn no_such_method(type_name: &str, method: &str) -> Self {
        Self::new(
            ErrorKind::NoSuchMethod,
            format!("{type_name} has no method `{method}`"),
        )
    }

    /// The object has no attribute `name`.
    pub fn no_such_attribute(type_name: &str, name: &str) -> Self {
        Self::new(
            ErrorKind::NoSuchAttribute,
            format!("{type_name} has no attribute `{name}`"),
        )
    }

    /// An argument was missing, extra, or of the wrong type.
    pub fn bad_argument(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::BadArgument, message)
    }

    /// An application error with a custom kind.
    pub fn custom(kind: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Custom(kind.into()), message)
    }

    /// An internal error on the serving side.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Internal, message)
    }
}

impl From<std::io::Error> for RemoteError {
    fn from(err: std::io::Error) -> Self {
        let kind = match err.kind() {
            std::io::ErrorKind::NotFound => ErrorKind::NotFound,
            std::io::ErrorKind::PermissionDenied => ErrorKind::PermissionDenied,
            _ => ErrorKind::Io,
        };
        RemoteError::new(kind, err.to_string())
    }
}

impl From<ValueError> for RemoteError {
    fn from(err: ValueError) -> Self {
        RemoteError::bad_argument(err.0)
    }
}

/// A nested call made by a handler failed: keep the remote kind, say where.
impl From<Error> for RemoteError {
    fn from(err: Error) -> Self {
        match err {
            Error::Remote(remote) => remote.context("in a nested call to the peer"),
            Error::Timeout(_) => RemoteError::new(ErrorKind::Timeout, err.to_string()),
            Error::ConnectionLost(_) | Error::Closed => {
                RemoteError::new(ErrorKind::ConnectionLost, err.to_string())
            }
            Error::Value(v) => RemoteError::bad_argument(v.0),
            other => RemoteError::internal(other.to_string()),
        }
    }
}

/// What a local caller sees when a call, connect or close fails.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The peer served the request and reported an error.
    #[error("remote error: {0}")]
    Remote(RemoteError),
    /// No reply came before the call's deadline; the peer was told to cancel.
    #[error("call timed out after {0:?}")]
    Timeout(Duration),
    /// The connection died; every pending call fails with this at once.
    #[error("connection lost: {0}")]
    ConnectionLost(Arc<str>),
    /// The connection was closed locally.
    #[error("connection closed")]
    Closed,
    /// Authentication failed: wrong, missing or unexpected shared secret.
    #[error("authentication failed: {0}")]
    AuthFailed(String),
    /// TLS failed: a bad certificate, a name mismatch, or a broken session.
    #[error("tls: {0}")]
    Tls(String),
    /// The server refused the connection (a limit was hit), saying why.
    #[error("connection refused by the server: {0}")]
    Refused(String),
    /// The peer is not an rrpc peer, speaks another version, or said nothing.
    #[error("handshake failed: {0}")]
    Handshake(String),
    /// The peer sent something this side cannot accept.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// A value could not be converted to or from a Rust type.
    #[error("value error: {0}")]
    Value(#[from] ValueError),
    /// A message is larger than the peer accepts.
    #[error("message of {size} bytes exceeds the frame limit of {limit} bytes")]
    FrameTooLarge {
        /// Size of the encoded message.
        size: usize,
        /// The limit it exceeds.
        limit: usize,
    },
    /// An I/O error while connecting or accepting.
    #[error("i/o error: {0}")]
    Io(Arc<std::io::Error>),
}

impl From<RemoteError> for Error {
    fn from(err: RemoteError) -> Self {
        Error::Remote(err)
    }
}

impl From<std::io::Error> for Error {
    fn from(err: std::io::Error) -> Self {
        Error::Io(Arc::new(err))
    }
}

impl Error {
    /// The remote error, if the peer reported one.
    pub fn remote(&self) -> Option<&RemoteError> {
        match self {
            Error::Remote(r) => Some(r),
            _ => None,
        }
    }

    /// The remote error kind, if the peer reported one.
    pub fn remote_kind(&self) -> Option<&ErrorKind> {
        self.remote().map(|r| &r.kind)
    }

    /// Whether the call ran past its deadline.
    pub fn is_timeout(&self) -> bool {
        matches!(self, Error::Timeout(_))
    }

    /// Whether the connection is gone (lost or closed).
    pub fn is_connection_lost(&self) -> bool {
        matches!(self, Error::ConnectionLost(_) | Error::Closed)
    }
}

/// Result alias for local operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

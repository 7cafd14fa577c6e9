//! [`ServiceError`]: the error type of a typed method's `Result`.

use crate::error::{Error, RemoteError};

/// An error type a service method may return in `Result<T, E>`.
///
/// On the server, [`to_remote`](ServiceError::to_remote) turns the error
/// into the wire's kind and message (use
/// [`ErrorKind::Custom`](crate::ErrorKind::Custom) for your own kinds). On
/// the client, [`from_remote`](ServiceError::from_remote) rebuilds it, and
/// transport failures (timeout, connection lost, a reply of the wrong type)
/// arrive through `From<Error>` — so one `Result` carries both, as in remoc.
///
/// Provided: [`Error`] (every remote error stays [`Error::Remote`]) and
/// [`RemoteError`] (transport failures become remote errors of kind
/// `Timeout`, `ConnectionLost`…).
///
/// ```
/// use rrpc_core::typed::ServiceError;
/// use rrpc_core::{Error, ErrorKind, RemoteError};
///
/// #[derive(Debug)]
/// enum CalcError {
///     DivisionByZero,
///     Rpc(Error),
/// }
///
/// impl From<Error> for CalcError {
///     fn from(e: Error) -> Self { CalcError::Rpc(e) }
/// }
///
/// impl ServiceError for CalcError {
///     fn to_remote(&self) -> RemoteError {
///         match self {
///             CalcError::DivisionByZero => RemoteError::custom("DivisionByZero", "division by zero"),
///             CalcError::Rpc(e) => RemoteError::from(e.clone()),
///         }
///     }
///     fn from_remote(remote: RemoteError) -> Self {
///         match &remote.kind {
///             ErrorKind::Custom(k) if k == "DivisionByZero" => CalcError::DivisionByZero,
///             _ => CalcError::Rpc(Error::Remote(remote)),
///         }
///     }
/// }
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be the error type of an rrpc service method",
    label = "not a `ServiceError`",
    note = "implement `rrpc_core::ServiceError` for it (its kind and message on the wire, `From<rrpc_core::Error>` for transport errors), or return `Result<T, rrpc_core::Error>`"
)]
pub trait ServiceError: From<Error> + Send + 'static {
    /// What the server sends for this error.
    fn to_remote(&self) -> RemoteError;

    /// What the client makes of a remote error; by default it wraps it in
    /// [`Error::Remote`] and converts that with `From<Error>`.
    fn from_remote(remote: RemoteError) -> Self {
        Self::from(Error::Remote(remote))
    }

    /// What the client makes of any failure of the call.
    fn from_error(err: Error) -> Self {
        match err {
            Error::Remote(remote) => Self::from_remote(remote),
            other => Self::from(other),
        }
    }
}

impl ServiceError for Error {
    fn to_remote(&self) -> RemoteError {
        RemoteError::from(self.clone())
    }
}

impl ServiceError for RemoteError {
    fn to_remote(&self) -> RemoteError {
        self.clone()
    }

    fn from_remote(remote: RemoteError) -> Self {
        remote
    }
}

//! A call in preparation: awaited, waited for, or started as an [`AsyncResult`].

use std::fmt;
use std::future::{Future, IntoFuture};
use std::pin::Pin;
use std::time::Duration;

use compact_str::CompactString;

use crate::async_result::AsyncResult;
use crate::connection::{Connection, Settle};
use crate::error::Error;
use crate::value::Value;

/// An operation with its values, before encoding. (Names of up to 24
/// bytes, nearly all, are held without an allocation.)
#[derive(Debug)]
pub(crate) enum OutOp {
    Call {
        method: CompactString,
        args: Vec<Value>,
    },
    Invoke {
        args: Vec<Value>,
    },
    GetAttr {
        name: CompactString,
    },
    SetAttr {
        name: CompactString,
        value: Value,
    },
    Dir,
}

/// A remote operation ready to go. Nothing is sent until it is awaited,
/// waited for ([`Call::wait`]) or started ([`Call::start`]).
#[must_use = "a Call does nothing until it is awaited, waited for or started"]
pub struct Call {
    conn: Connection,
    target: u64,
    op: OutOp,
    timeout: Option<Duration>,
}

impl Call {
    pub(crate) fn new(conn: Connection, target: u64, op: OutOp) -> Call {
        Call {
            conn,
            target,
            op,
            timeout: None,
        }
    }

    /// Overrides the connection's default deadline for this call.
    pub fn timeout(mut self, timeout: Duration) -> Call {
        self.timeout = Some(timeout);
        self
    }

    /// Starts the call and returns at once; the reply is collected by the
    /// connection's background task.
    ///
    /// The request is sent from here (calls started one after another are
    /// written together, from the calling thread once a few KiB are
    /// queued), and the reply goes straight into the [`AsyncResult`]: no
    /// task per call. Only when the peer is not reading and the connection's
    /// send buffer is full does a task wait for room; calls started
    /// meanwhile may then leave before it. (Calls run concurrently on the
    /// peer anyway: order between calls in flight is never guaranteed.)
    /// Dropping the `AsyncResult` does not cancel the call.
    pub fn start(self) -> AsyncResult {
        let result = AsyncResult::new(self.conn.runtime().clone());
        let shared = self.conn.shared.clone();
        if shared.has_room() {
            let settle = Settle::Async(result.clone(), self.conn.clone());
            // Started calls come in bursts: written once 8 KiB are queued.
            let sent = shared.send_call(
                self.target,
                &self.op,
                self.timeout,
                settle,
                crate::connection::INLINE_MIN,
            );
            if let Err(e) = sent {
                result.complete(Err(e));
            }
            return result;
        }
        let slot = result.clone();
        let handle = self.conn.runtime().clone();
        handle.spawn(async move {
            let outcome = self.await;
            slot.complete(outcome);
        });
        result
    }

    /// Makes the call and blocks the current thread until it completes.
    ///
    /// For blocking code (driver scripts, handlers on the blocking pool). In
    /// async code, `.await` the call instead: blocking an async worker thread
    /// stalls every task on it.
    pub fn wait(self) -> Result<Value, Error> {
        self.start().value()
    }
}

impl IntoFuture for Call {
    type Output = Result<Value, Error>;
    type IntoFuture = Pin<Box<dyn Future<Output = Result<Value, Error>> + Send>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(async move {
            let shared = self.conn.shared.clone();
            shared.call(self.target, self.op, self.timeout).await
        })
    }
}

impl fmt::Debug for Call {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Call")
            .field("target", &self.target)
            .field("op", &self.op)
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// Things that can be passed as a call's positional arguments: `()`, tuples
/// of values, a `Vec<Value>`, or [`Args`](crate::Args).
pub trait IntoArgs {
    /// The arguments as values.
    fn into_args(self) -> Vec<Value>;
}

impl IntoArgs for Vec<Value> {
    fn into_args(self) -> Vec<Value> {
        self
    }
}

impl IntoArgs for crate::remote::Args {
    fn into_args(self) -> Vec<Value> {
        self.into_vec()
    }
}

impl IntoArgs for () {
    fn into_args(self) -> Vec<Value> {
        Vec::new()
    }
}

macro_rules! tuple_args {
    ($($name:ident),+) => {
        impl<$($name: Into<Value>),+> IntoArgs for ($($name,)+) {
            #[allow(non_snake_case)]
            fn into_args(self) -> Vec<Value> {
                let ($($name,)+) = self;
                vec![$($name.into()),+]
            }
        }
    };
}
tuple_args!(A);
tuple_args!(A, B);
tuple_args!(A, B, C);
tuple_args!(A, B, C, D);
tuple_args!(A, B, C, D, E);
tuple_args!(A, B, C, D, E, F);
tuple_args!(A, B, C, D, E, F, G);
tuple_args!(A, B, C, D, E, F, G, H);

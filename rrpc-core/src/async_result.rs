//! [`AsyncResult`]: the result of a call that is still running (RPyC's
//! `rpyc.async_`): poll it, block on it, give it callbacks, or await it.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio::runtime::Handle;

use crate::error::Error;
use crate::value::Value;

type Callback = Box<dyn FnOnce(&AsyncResult) + Send>;

/// The eventual result of a call started with [`Call::start`](crate::Call::start)
/// or [`Proxy::call_async`](crate::Proxy::call_async). Clones share the result.
#[derive(Clone)]
pub struct AsyncResult {
    state: Arc<State>,
}

struct State {
    slot: Mutex<Slot>,
    ready: Condvar,
    runtime: Handle,
}

#[derive(Default)]
struct Slot {
    result: Option<Result<Value, Error>>,
    /// The task awaiting the result (there is rarely more than one: the
    /// others go to `more_wakers`).
    waker: Option<Waker>,
    more_wakers: Vec<Waker>,
    callbacks: Vec<Callback>,
    /// Threads blocked on the condition variable (it is signalled only
    /// when there are some: a signal is a system call).
    blocked: usize,
}

impl AsyncResult {
    pub(crate) fn new(runtime: Handle) -> AsyncResult {
        AsyncResult {
            state: Arc::new(State {
                slot: Mutex::new(Slot::default()),
                ready: Condvar::new(),
                runtime,
            }),
        }
    }

    fn slot(&self) -> MutexGuard<'_, Slot> {
        // Callbacks run outside the lock, so it is never poisoned by user code.
        self.state.slot.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Stores the outcome, wakes every waiter and runs the callbacks on the
    /// blocking pool (they may block, or make blocking calls themselves).
    pub(crate) fn complete(&self, outcome: Result<Value, Error>) {
        let (waker, more_wakers, callbacks, blocked) = {
            let mut slot = self.slot();
            if slot.result.is_some() {
                return;
            }
            slot.result = Some(outcome);
            (
                slot.waker.take(),
                std::mem::take(&mut slot.more_wakers),
                std::mem::take(&mut slot.callbacks),
                slot.blocked > 0,
            )
        };
        if blocked {
            self.state.ready.notify_all();
        }
        waker.into_iter().chain(more_wakers).for_each(Waker::wake);
        for callback in callbacks {
            self.run_callback(callback);
        }
    }

    fn run_callback(&self, callback: Callback) {
        let me = self.clone();
        // The JoinHandle is not kept: a callback runs to its end on its own.
        drop(self.state.runtime.spawn_blocking(move || callback(&me)));
    }

    /// Whether the result has arrived (RPyC's `ready`).
    pub fn ready(&self) -> bool {
        self.slot().result.is_some()
    }

    /// The result, blocking the thread until it arrives (RPyC's `value`).
    /// In async code, `.await` the `AsyncResult` instead.
    pub fn value(&self) -> Result<Value, Error> {
        let mut slot = self.slot();
        loop {
            if let Some(result) = &slot.result {
                return result.clone();
            }
            slot.blocked += 1;
            slot = self
                .state
                .ready
                .wait(slot)
                .unwrap_or_else(|p| p.into_inner());
            slot.blocked -= 1;
        }
    }

    /// Waits at most `timeout` for the result; returns whether it arrived.
    pub fn wait(&self, timeout: Duration) -> bool {
        let mut slot = self.slot();
        if slot.result.is_some() {
            return true;
        }
        slot.blocked += 1;
        let (mut slot, _) = self
            .state
            .ready
            .wait_timeout_while(slot, timeout, |s| s.result.is_none())
            .unwrap_or_else(|p| p.into_inner());
        slot.blocked -= 1;
        slot.result.is_some()
    }

    /// The error, if the call finished with one (RPyC's `error`).
    pub fn error(&self) -> Option<Error> {
        match &self.slot().result {
            Some(Err(e)) => Some(e.clone()),
            _ => None,
        }
    }

    /// Runs `callback` when the result arrives, on the connection's
    /// background pool — no thread of yours needs to poll. If the result is
    /// already there, the callback is scheduled at once.
    pub fn add_callback<F>(&self, callback: F)
    where
        F: FnOnce(&AsyncResult) + Send + 'static,
    {
        let mut slot = self.slot();
        if slot.result.is_some() {
            drop(slot);
            self.run_callback(Box::new(callback));
        } else {
            slot.callbacks.push(Box::new(callback));
        }
    }
}

impl Future for AsyncResult {
    type Output = Result<Value, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut slot = self.slot();
        match &slot.result {
            Some(result) => Poll::Ready(result.clone()),
            None => {
                let waker = cx.waker();
                match &slot.waker {
                    None => slot.waker = Some(waker.clone()),
                    Some(first) if first.will_wake(waker) => {}
                    Some(_) => {
                        if !slot.more_wakers.iter().any(|w| w.will_wake(waker)) {
                            slot.more_wakers.push(waker.clone());
                        }
                    }
                }
                Poll::Pending
            }
        }
    }
}

impl fmt::Debug for AsyncResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.slot().result {
            None => f.write_str("AsyncResult(pending)"),
            Some(r) => f.debug_tuple("AsyncResult").field(r).finish(),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn waiting(r: &AsyncResult) -> usize {
        let slot = r.slot();
        usize::from(slot.waker.is_some()) + slot.more_wakers.len()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_task_awaiting_a_clone_is_woken() {
        let result = AsyncResult::new(Handle::current());
        let tasks: Vec<_> = (0..3).map(|_| tokio::spawn(result.clone())).collect();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while waiting(&result) < 3 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the tasks never waited"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        result.complete(Ok(Value::from(7)));
        for task in tasks {
            let value = tokio::time::timeout(Duration::from_secs(10), task).await;
            assert_eq!(value.unwrap().unwrap().unwrap(), Value::from(7));
        }
    }
}

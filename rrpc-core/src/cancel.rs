//! The cancellation flag of one request: set by the peer's cancel, the
//! request's deadline or the connection's end, read by its handler.
//!
//! Lighter than a `tokio_util` `CancellationToken` (no tree of children, no
//! lock on clone and drop): one is made for every request served.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::sync::Notify;

#[derive(Clone, Default)]
pub(crate) struct Cancel(Arc<Inner>);

#[derive(Default)]
struct Inner {
    cancelled: AtomicBool,
    notify: Notify,
}

impl Cancel {
    pub(crate) fn cancel(&self) {
        if !self.0.cancelled.swap(true, Ordering::AcqRel) {
            self.0.notify.notify_waiters();
        }
    }

    pub(crate) fn is_cancelled(&self) -> bool {
        self.0.cancelled.load(Ordering::Acquire)
    }

    /// Completes once [`cancel`](Self::cancel) has been called.
    pub(crate) async fn cancelled(&self) {
        loop {
            let notified = self.0.notify.notified();
            tokio::pin!(notified);
            // Registered before the check: a cancel in between is not missed.
            notified.as_mut().enable();
            if self.is_cancelled() {
                return;
            }
            notified.await;
        }
    }
}

impl std::fmt::Debug for Cancel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cancel")
            .field("cancelled", &self.is_cancelled())
            .finish()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn waiters_before_and_after_the_cancel_all_complete() {
        let cancel = Cancel::default();
        let early = {
            let c = cancel.clone();
            tokio::spawn(async move { c.cancelled().await })
        };
        tokio::task::yield_now().await;
        assert!(!early.is_finished());
        assert!(!cancel.is_cancelled());
        cancel.clone().cancel();
        assert!(cancel.is_cancelled());
        tokio::time::timeout(std::time::Duration::from_secs(5), early)
            .await
            .unwrap()
            .unwrap();
        // Already cancelled: at once.
        tokio::time::timeout(std::time::Duration::from_secs(5), cancel.cancelled())
            .await
            .unwrap();
    }
}

//! Ownership of spawned tasks: a task lives exactly as long as its owner.

use tokio::task::JoinHandle;

/// Aborts the task when dropped, so no task outlives the value that owns it.
/// A task that owns a child process started with `kill_on_drop` thereby
/// kills the child too.
#[derive(Debug)]
pub struct AbortOnDrop(JoinHandle<()>);

impl AbortOnDrop {
    /// Takes ownership of `handle`.
    pub fn new(handle: JoinHandle<()>) -> Self {
        Self(handle)
    }

    /// True once the task has finished.
    pub fn is_finished(&self) -> bool {
        self.0.is_finished()
    }
}

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn dropping_the_owner_stops_the_task() {
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let owner = AbortOnDrop::new(tokio::spawn(async move {
            let _tx = tx; // dropped when the task is aborted
            std::future::pending::<()>().await;
        }));
        assert!(!owner.is_finished());
        drop(owner);
        let closed = tokio::time::timeout(Duration::from_secs(5), rx)
            .await
            .unwrap();
        assert!(
            closed.is_err(),
            "the task's sender should be dropped by the abort"
        );
    }
}

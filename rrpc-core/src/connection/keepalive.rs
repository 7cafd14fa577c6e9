//! Keep-alive and idle timeout: one task per connection that wakes now and
//! then, pings a quiet peer, declares a silent one dead, and closes an idle
//! connection.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use crate::error::Error;

use super::Shared;

pub(super) async fn watch(shared: Arc<Shared>) {
    let interval = shared.config.keepalive_interval;
    let dead_after = shared.config.keepalive_timeout;
    let idle = shared.config.idle_timeout;
    // Wake often enough to honour the shortest setting to within a quarter.
    let tick = [
        interval,
        Some(dead_after).filter(|_| interval.is_some()),
        idle,
    ]
    .into_iter()
    .flatten()
    .min()
    .map_or(Duration::from_secs(1), |d| {
        (d / 4).max(Duration::from_millis(5))
    });
    loop {
        tokio::select! {
            _ = shared.closed.cancelled() => return,
            _ = tokio::time::sleep(tick) => {}
        }
        let now = shared.now_ms();
        let silent =
            Duration::from_millis(now.saturating_sub(shared.last_seen.load(Ordering::Relaxed)));
        if let Some(interval) = interval {
            if silent >= dead_after {
                tracing::warn!(conn = shared.id, peer = %shared.peer, "no sign of life for {silent:?}: closing");
                shared.close(Error::ConnectionLost(
                    format!("no sign of life from the peer for {silent:?} (keep-alive timeout {dead_after:?})").into(),
                ));
                return;
            }
            if silent >= interval {
                shared
                    .control
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .ping = true;
                shared.wake_writer.notify_one();
            }
        }
        if let Some(idle) = idle {
            let quiet = Duration::from_millis(
                now.saturating_sub(shared.last_activity.load(Ordering::Relaxed)),
            );
            if quiet >= idle && shared.pending.is_empty() && shared.running.is_empty() {
                tracing::debug!(conn = shared.id, "idle for {quiet:?}: closing");
                shared.shutdown(
                    &format!("the connection was idle for {quiet:?}"),
                    Error::ConnectionLost(format!("closed after being idle for {quiet:?}").into()),
                );
                return;
            }
        }
    }
}

//! The connection's clock: one task per connection that fails calls past
//! their deadline, stops requests past theirs, pings a quiet peer, declares
//! a silent one dead, and closes an idle connection.
//!
//! Calls and requests carry no timer of their own: each records its
//! deadline, and this task sleeps until the earliest one (whoever registers
//! an earlier deadline than the one it sleeps for wakes it). With the usual
//! single default timeout, that is one wake-up per timeout period, however
//! many calls are made.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::error::Error;

use super::Shared;

pub(super) async fn watch(shared: Arc<Shared>) {
    let interval = shared.config.keepalive_interval;
    let dead_after = shared.config.keepalive_timeout;
    let idle = shared.config.idle_timeout;
    // Check keep-alive and idleness often enough to honour the shortest
    // setting to within a quarter.
    let tick = [
        interval,
        Some(dead_after).filter(|_| interval.is_some()),
        idle,
    ]
    .into_iter()
    .flatten()
    .min()
    .map(|d| (d / 4).max(Duration::from_millis(5)));
    let started = shared.started;
    let mut next_tick = tick.map(|t| Instant::now() + t);
    let mut life = Life {
        seen: Instant::now(),
        active: Instant::now(),
    };
    loop {
        let at = |ms: &AtomicU64| match ms.load(Ordering::Acquire) {
            u64::MAX => None,
            ms => Some(started + Duration::from_millis(ms)),
        };
        let deadline = at(&shared.next_deadline);
        let releases = at(&shared.release_due);
        let wake = [deadline, releases, next_tick].into_iter().flatten().min();
        tokio::select! {
            _ = shared.closed.cancelled() => return,
            // An earlier deadline: sleep again, for it.
            _ = shared.deadline_moved.notified() => continue,
            _ = sleep_until(wake) => {}
        }
        let now = Instant::now();
        if deadline.is_some_and(|d| d <= now) {
            shared.expire();
        }
        if releases.is_some_and(|d| d <= now) {
            shared.releases_due();
        }
        if let (Some(tick), Some(at)) = (tick, next_tick) {
            if at <= now {
                next_tick = Some(now + tick);
                if !check_liveness(&shared, &mut life, now, interval, dead_after, idle) {
                    return;
                }
            }
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// When the timer task last saw a sign of life, and a call.
struct Life {
    seen: Instant,
    active: Instant,
}

/// Keep-alive and idle timeout; false once the connection is closed. The
/// connection raises flags (no clock read per frame); they are turned into
/// times here, at tick precision.
fn check_liveness(
    shared: &Shared,
    life: &mut Life,
    now: Instant,
    interval: Option<Duration>,
    dead_after: Duration,
    idle: Option<Duration>,
) -> bool {
    if shared.seen.swap(false, Ordering::Relaxed) {
        life.seen = now;
    }
    if shared.busy.swap(false, Ordering::Relaxed) {
        life.active = now;
    }
    let silent = now.saturating_duration_since(life.seen);
    if let Some(interval) = interval {
        if silent >= dead_after {
            tracing::warn!(conn = shared.id, peer = %shared.peer, "no sign of life for {silent:?}: closing");
            shared.close(Error::ConnectionLost(
                format!("no sign of life from the peer for {silent:?} (keep-alive timeout {dead_after:?})").into(),
            ));
            return false;
        }
        if silent >= interval {
            shared
                .control
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .ping = true;
            shared.control_queued();
        }
    }
    if let Some(idle) = idle {
        let quiet = now.saturating_duration_since(life.active);
        if quiet >= idle && shared.pending.is_empty() && shared.running.is_empty() {
            tracing::debug!(conn = shared.id, "idle for {quiet:?}: closing");
            shared.shutdown(
                &format!("the connection was idle for {quiet:?}"),
                Error::ConnectionLost(format!("closed after being idle for {quiet:?}").into()),
            );
            return false;
        }
    }
    true
}

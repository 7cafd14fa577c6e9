//! Who may start a connection: limits on connections in total and per
//! address, a short leash for connections that have not authenticated yet,
//! and a lockout for addresses that keep failing authentication.
//!
//! A connection is *admitted* from accept until it closes, and *pending*
//! until its handshake (and authentication) completes. Pending connections
//! never lock anyone out: when an address has [`AdmissionLimits::pending_per_peer`]
//! handshakes open (or the server [`AdmissionLimits::pending`]), a new one
//! evicts the oldest pending connection of the busiest address instead of
//! being refused, so silent sockets cost an attacker its own slots and a
//! client that completes its handshake always gets in.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

/// How many addresses' authentication failures are remembered at most.
const MAX_TRACKED_ADDRESSES: usize = 4096;

/// The limits a [`Gate`] enforces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdmissionLimits {
    /// Connections admitted at once, pending or serving.
    pub total: usize,
    /// Connections admitted at once from one address.
    pub per_peer: usize,
    /// Handshakes open at once; more evict the oldest of the busiest address.
    pub pending: usize,
    /// Handshakes open at once from one address; more evict its oldest.
    pub pending_per_peer: usize,
    /// Failed authentications from one address within `lockout` that lock
    /// it out for `lockout`.
    pub auth_failures: u32,
    /// How long failures are counted, and how long a lockout lasts.
    pub lockout: Duration,
    /// How old a handshake must be before a newcomer may evict it, so that a
    /// burst of real clients from one address never evicts itself.
    pub pending_grace: Duration,
}

impl Default for AdmissionLimits {
    fn default() -> Self {
        AdmissionLimits {
            total: 1024,
            per_peer: 64,
            pending: 64,
            pending_per_peer: 8,
            auth_failures: 10,
            lockout: Duration::from_secs(60),
            pending_grace: Duration::from_secs(1),
        }
    }
}

/// Why a connection is refused before its handshake.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The server serves as many connections as it may.
    #[error("the server is at its limit of {limit} connections")]
    Full {
        /// The limit.
        limit: usize,
    },
    /// The address has as many connections as it may.
    #[error("too many connections from {peer} (limit {limit})")]
    PeerFull {
        /// The address.
        peer: IpAddr,
        /// The limit.
        limit: usize,
    },
    /// The address failed authentication too often.
    #[error("too many failed authentications from {peer}: refused for {}s more", retry_in.as_secs().max(1))]
    LockedOut {
        /// The address.
        peer: IpAddr,
        /// How long until it may try again.
        retry_in: Duration,
    },
}

/// The admission state of a server.
#[derive(Debug)]
pub(crate) struct Gate {
    limits: AdmissionLimits,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    admitted: HashMap<IpAddr, usize>,
    admitted_total: usize,
    /// Pending handshakes per address, oldest first.
    pending: HashMap<IpAddr, VecDeque<Pending>>,
    pending_total: usize,
    failures: HashMap<IpAddr, Failures>,
    next_ticket: u64,
}

#[derive(Debug)]
struct Pending {
    ticket: u64,
    evict: CancellationToken,
    since: Instant,
}

#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    since: Instant,
    locked_until: Option<Instant>,
}

/// One admitted connection; dropping it gives its slots back.
#[derive(Debug)]
pub(crate) struct Admission {
    gate: Arc<Gate>,
    peer: IpAddr,
    ticket: u64,
    evicted: CancellationToken,
}

impl Gate {
    pub(crate) fn new(limits: AdmissionLimits) -> Gate {
        Gate {
            limits,
            state: Mutex::default(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Admits a new connection from `peer` as pending, evicting the oldest
    /// pending connection of the busiest address when the pending limits
    /// are reached.
    pub(crate) fn admit(self: &Arc<Self>, peer: IpAddr) -> Result<Admission, Refusal> {
        let now = Instant::now();
        let mut state = self.lock();
        if let Some(f) = state.failures.get(&peer) {
            if let Some(until) = f.locked_until.filter(|until| *until > now) {
                return Err(Refusal::LockedOut {
                    peer,
                    retry_in: until - now,
                });
            }
        }
        let grace = self.limits.pending_grace;
        // Full slots are freed first from handshakes that have had their
        // chance; a young burst is admitted beyond the pending limits, which
        // the connection limits still bound.
        if state.admitted_total >= self.limits.total {
            let busiest = state.busiest_pending();
            if !busiest.is_some_and(|b| state.evict_aged_of(b, grace, now)) {
                return Err(Refusal::Full {
                    limit: self.limits.total,
                });
            }
        }
        if state.admitted.get(&peer).copied().unwrap_or(0) >= self.limits.per_peer
            && !state.evict_aged_of(peer, grace, now)
        {
            return Err(Refusal::PeerFull {
                peer,
                limit: self.limits.per_peer,
            });
        }
        let mine = state.pending.get(&peer).map_or(0, VecDeque::len);
        if mine >= self.limits.pending_per_peer {
            state.evict_aged_of(peer, grace, now);
        } else if state.pending_total >= self.limits.pending {
            if let Some(busiest) = state.busiest_pending() {
                state.evict_aged_of(busiest, grace, now);
            }
        }
        state.next_ticket += 1;
        let ticket = state.next_ticket;
        let evicted = CancellationToken::new();
        state.pending.entry(peer).or_default().push_back(Pending {
            ticket,
            evict: evicted.clone(),
            since: now,
        });
        state.pending_total += 1;
        *state.admitted.entry(peer).or_insert(0) += 1;
        state.admitted_total += 1;
        Ok(Admission {
            gate: self.clone(),
            peer,
            ticket,
            evicted,
        })
    }

    /// Counts a failed authentication from `peer`, locking it out once it
    /// has failed too often.
    pub(crate) fn auth_failed(&self, peer: IpAddr) {
        let now = Instant::now();
        let lockout = self.limits.lockout;
        let mut state = self.lock();
        if !state.failures.contains_key(&peer) && state.failures.len() >= MAX_TRACKED_ADDRESSES {
            state.forget_stale_failures(now, lockout);
        }
        let f = state.failures.entry(peer).or_insert(Failures {
            count: 0,
            since: now,
            locked_until: None,
        });
        if now.saturating_duration_since(f.since) > lockout {
            *f = Failures {
                count: 0,
                since: now,
                locked_until: None,
            };
        }
        f.count += 1;
        if f.count >= self.limits.auth_failures {
            f.locked_until = Some(now + lockout);
            tracing::warn!(
                %peer,
                failures = f.count,
                "address locked out for {}s after repeated authentication failures",
                lockout.as_secs()
            );
            f.count = 0;
            f.since = now;
        }
    }

    /// Connections admitted now (pending or serving), and of those pending.
    #[cfg(test)]
    fn counts(&self) -> (usize, usize) {
        let state = self.lock();
        (state.admitted_total, state.pending_total)
    }
}

impl State {
    fn busiest_pending(&self) -> Option<IpAddr> {
        self.pending
            .iter()
            .max_by_key(|(_, queue)| queue.len())
            .map(|(peer, _)| *peer)
    }

    /// Evicts the oldest pending handshake of `peer` if it is older than
    /// `grace`, giving its slots back at once; whether one was evicted.
    fn evict_aged_of(&mut self, peer: IpAddr, grace: Duration, now: Instant) -> bool {
        let Some(queue) = self.pending.get_mut(&peer) else {
            return false;
        };
        let aged = queue
            .front()
            .is_some_and(|oldest| now.saturating_duration_since(oldest.since) >= grace);
        if !aged {
            return false;
        }
        if let Some(oldest) = queue.pop_front() {
            // Its Admission sees the cancellation and does not release again.
            oldest.evict.cancel();
        }
        if queue.is_empty() {
            self.pending.remove(&peer);
        }
        self.pending_total -= 1;
        self.release(peer);
        tracing::debug!(%peer, "evicted a pending handshake to make room");
        true
    }

    fn release(&mut self, peer: IpAddr) {
        if let Some(n) = self.admitted.get_mut(&peer) {
            *n -= 1;
            if *n == 0 {
                self.admitted.remove(&peer);
            }
        }
        self.admitted_total -= 1;
    }

    fn leave_pending(&mut self, peer: IpAddr, ticket: u64) {
        let Some(queue) = self.pending.get_mut(&peer) else {
            return;
        };
        if let Some(at) = queue.iter().position(|p| p.ticket == ticket) {
            queue.remove(at);
            self.pending_total -= 1;
        }
        if queue.is_empty() {
            self.pending.remove(&peer);
        }
    }

    /// Drops what is no longer counted; if every entry is live, the one
    /// seen longest ago, so the table stays bounded.
    fn forget_stale_failures(&mut self, now: Instant, lockout: Duration) {
        self.failures.retain(|_, f| {
            let locked = f.locked_until.is_some_and(|until| until > now);
            locked || now.saturating_duration_since(f.since) <= lockout
        });
        if self.failures.len() >= MAX_TRACKED_ADDRESSES {
            if let Some(oldest) = self
                .failures
                .iter()
                .filter(|(_, f)| f.locked_until.is_none())
                .min_by_key(|(_, f)| f.since)
                .map(|(peer, _)| *peer)
            {
                self.failures.remove(&oldest);
            }
        }
    }
}

impl Admission {
    /// Completes when this connection is evicted while still pending.
    pub(crate) async fn evicted(&self) {
        self.evicted.cancelled().await;
    }

    /// The handshake completed: the connection is no longer pending.
    pub(crate) fn authenticated(&self) {
        self.gate.lock().leave_pending(self.peer, self.ticket);
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        let mut state = self.gate.lock();
        // An evicted connection's slots were given back when it was evicted
        // (under this lock, so the check cannot race the eviction).
        if self.evicted.is_cancelled() {
            return;
        }
        state.leave_pending(self.peer, self.ticket);
        state.release(self.peer);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn gate(limits: AdmissionLimits) -> Arc<Gate> {
        Arc::new(Gate::new(limits))
    }

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, last])
    }

    #[test]
    fn a_full_pending_queue_evicts_its_own_oldest_not_the_newcomer() {
        let g = gate(AdmissionLimits {
            pending_per_peer: 2,
            pending_grace: Duration::ZERO,
            ..AdmissionLimits::default()
        });
        let first = g.admit(ip(1)).unwrap();
        let second = g.admit(ip(1)).unwrap();
        let third = g.admit(ip(1)).unwrap();
        assert!(first.evicted.is_cancelled());
        assert!(!second.evicted.is_cancelled() && !third.evicted.is_cancelled());
        assert_eq!(g.counts(), (2, 2), "the evicted one's slots are given back");
        drop(first);
        assert_eq!(g.counts(), (2, 2), "and not given back twice");
    }

    #[test]
    fn a_burst_of_young_handshakes_evicts_nobody() {
        let g = gate(AdmissionLimits {
            pending_per_peer: 2,
            ..AdmissionLimits::default()
        });
        let burst: Vec<_> = (0..5).map(|_| g.admit(ip(1)).unwrap()).collect();
        assert!(burst.iter().all(|a| !a.evicted.is_cancelled()));
        assert_eq!(g.counts(), (5, 5));
    }

    #[test]
    fn the_busiest_address_pays_when_the_server_is_full_of_handshakes() {
        let g = gate(AdmissionLimits {
            pending: 3,
            pending_grace: Duration::ZERO,
            ..AdmissionLimits::default()
        });
        let a1 = g.admit(ip(1)).unwrap();
        let a2 = g.admit(ip(1)).unwrap();
        let b1 = g.admit(ip(2)).unwrap();
        let c1 = g.admit(ip(3)).unwrap();
        assert!(a1.evicted.is_cancelled());
        assert!(!a2.evicted.is_cancelled() && !b1.evicted.is_cancelled());
        assert!(!c1.evicted.is_cancelled());
    }

    #[test]
    fn an_authenticated_connection_is_never_evicted() {
        let g = gate(AdmissionLimits {
            pending_per_peer: 1,
            pending_grace: Duration::ZERO,
            ..AdmissionLimits::default()
        });
        let served = g.admit(ip(1)).unwrap();
        served.authenticated();
        let next = g.admit(ip(1)).unwrap();
        let _after = g.admit(ip(1)).unwrap();
        assert!(!served.evicted.is_cancelled());
        assert!(next.evicted.is_cancelled());
        assert_eq!(g.counts(), (2, 1));
    }

    #[test]
    fn admitted_connections_are_bounded_in_total_and_per_address() {
        let g = gate(AdmissionLimits {
            total: 3,
            per_peer: 2,
            ..AdmissionLimits::default()
        });
        let _a = (g.admit(ip(1)).unwrap(), g.admit(ip(1)).unwrap());
        assert_eq!(
            g.admit(ip(1)).unwrap_err(),
            Refusal::PeerFull {
                peer: ip(1),
                limit: 2
            }
        );
        let _b = g.admit(ip(2)).unwrap();
        assert_eq!(g.admit(ip(3)).unwrap_err(), Refusal::Full { limit: 3 });
    }

    #[test]
    fn repeated_failures_lock_an_address_out_and_only_that_address() {
        let g = gate(AdmissionLimits {
            auth_failures: 3,
            ..AdmissionLimits::default()
        });
        for _ in 0..2 {
            g.auth_failed(ip(1));
        }
        drop(g.admit(ip(1)).unwrap());
        g.auth_failed(ip(1));
        let refused = g.admit(ip(1)).unwrap_err();
        assert!(matches!(refused, Refusal::LockedOut { .. }), "{refused:?}");
        assert!(refused.to_string().contains("failed authentications"));
        drop(g.admit(ip(2)).unwrap());
    }

    #[test]
    fn the_failure_table_stays_bounded() {
        let g = gate(AdmissionLimits::default());
        for i in 0..(MAX_TRACKED_ADDRESSES as u32 + 100) {
            g.auth_failed(IpAddr::from(i.to_be_bytes()));
        }
        assert!(g.lock().failures.len() <= MAX_TRACKED_ADDRESSES);
    }
}

//! Connection settings, each with a safe default.

use std::time::Duration;

use crate::handshake::Secret;

/// Settings of one connection. Both sides have their own; limits protect the
/// side that sets them.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Config {
    /// Largest frame accepted from the peer, in bytes (default 16 MiB).
    pub max_frame_len: usize,
    /// Deepest nesting of lists and maps accepted in one value (default 128).
    pub max_depth: u32,
    /// Most values (nodes) accepted in one message (default 1 M).
    pub max_nodes: u32,
    /// Most requests from the peer served at once; more are refused (default 1024).
    pub max_in_flight: usize,
    /// Default deadline of a call made on this connection (default 30 s, as RPyC).
    pub call_timeout: Duration,
    /// How long the peer has to send its greeting (default 10 s).
    pub handshake_timeout: Duration,
    /// Bytes waiting for the writer beyond which calls and replies wait
    /// for the peer to read (default 1 MiB). Bounds a connection's send
    /// queue to about twice this, plus one frame per caller that found room
    /// just before it filled up.
    pub max_write_buffer: usize,
    /// Longest string or byte string accepted in one value (default 16 MiB).
    pub max_bytes_len: usize,
    /// Most items accepted in one list or map (default 1 M).
    pub max_list_len: usize,
    /// Most local objects the peer may hold at once (default 100 000).
    pub max_live_objects: usize,
    /// Shared secret for challenge–response authentication (default none).
    pub secret: Option<Secret>,
    /// Send a keep-alive ping after this long without traffic (default 10 s;
    /// `None` disables keep-alive).
    pub keepalive_interval: Option<Duration>,
    /// Declare the peer dead after this long without any traffic (default 30 s).
    pub keepalive_timeout: Duration,
    /// Close the connection after this long without calls either way
    /// (default: never).
    pub idle_timeout: Option<Duration>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            max_frame_len: 16 * 1024 * 1024,
            max_depth: 128,
            max_nodes: 1 << 20,
            max_in_flight: 1024,
            call_timeout: Duration::from_secs(30),
            handshake_timeout: Duration::from_secs(10),
            max_write_buffer: 1024 * 1024,
            max_bytes_len: 16 * 1024 * 1024,
            max_list_len: 1 << 20,
            max_live_objects: 100_000,
            secret: None,
            keepalive_interval: Some(Duration::from_secs(10)),
            keepalive_timeout: Duration::from_secs(30),
            idle_timeout: None,
        }
    }
}

impl Config {
    /// Sets the default call deadline.
    pub fn with_call_timeout(mut self, timeout: Duration) -> Self {
        self.call_timeout = timeout;
        self
    }

    /// Sets the largest frame accepted from the peer.
    pub fn with_max_frame_len(mut self, len: usize) -> Self {
        self.max_frame_len = len;
        self
    }

    /// Sets how many peer requests are served at once.
    pub fn with_max_in_flight(mut self, n: usize) -> Self {
        self.max_in_flight = n;
        self
    }

    /// Requires the peer to prove it knows `secret`.
    pub fn with_secret(mut self, secret: Secret) -> Self {
        self.secret = Some(secret);
        self
    }

    /// Sets keep-alive: ping after `interval` of silence, give up after `timeout`.
    pub fn with_keepalive(mut self, interval: Option<Duration>, timeout: Duration) -> Self {
        self.keepalive_interval = interval;
        self.keepalive_timeout = timeout;
        self
    }

    /// Closes the connection after `timeout` without calls.
    pub fn with_idle_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.idle_timeout = timeout;
        self
    }

    /// Sets the bytes queued for the writer beyond which senders wait.
    pub fn with_max_write_buffer(mut self, bytes: usize) -> Self {
        self.max_write_buffer = bytes;
        self
    }

    /// Sets how many local objects the peer may hold.
    pub fn with_max_live_objects(mut self, n: usize) -> Self {
        self.max_live_objects = n;
        self
    }

    /// Sets the longest string or byte string accepted.
    pub fn with_max_bytes_len(mut self, n: usize) -> Self {
        self.max_bytes_len = n;
        self
    }

    /// Sets the most items accepted in a list or map.
    pub fn with_max_list_len(mut self, n: usize) -> Self {
        self.max_list_len = n;
        self
    }

    /// Sets the deepest nesting accepted in a value.
    pub fn with_max_depth(mut self, depth: u32) -> Self {
        self.max_depth = depth;
        self
    }

    /// Sets the handshake deadline.
    pub fn with_handshake_timeout(mut self, timeout: Duration) -> Self {
        self.handshake_timeout = timeout;
        self
    }
}

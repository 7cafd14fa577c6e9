//! Connection settings, each with a safe default.

use std::time::Duration;

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
    /// Capacity of the queue of frames waiting for the writer (default 1024).
    pub write_queue: usize,
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
            write_queue: 1024,
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

    /// Sets the handshake deadline.
    pub fn with_handshake_timeout(mut self, timeout: Duration) -> Self {
        self.handshake_timeout = timeout;
        self
    }
}

//! A 1 GiB upload and download through `fs`, with matching SHA-256 digests
//! and bounded memory. Ignored by default (it moves 2 GiB); scripts/test.sh
//! runs it in release mode:
//!
//! ```text
//! cargo test --release -p rrpc-server --test big_transfer -- --ignored --nocapture
//! ```
//!
//! Server and client share this process, so the peak resident memory
//! (VmHWM) covers both; the test reports how much it grew.
#![allow(clippy::unwrap_used)]

mod common;

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use common::{within, Stock};
use rrpc_client::transfer::{self, TransferOptions};
use rrpc_server::services::ToolboxOptions;
use tokio::io::{AsyncRead, ReadBuf};

const SIZE: u64 = 1 << 30;
/// The most the peak resident memory may grow while moving 2 GiB.
const MAX_GROWTH_MIB: u64 = 256;

/// `len` pseudo-random bytes, generated as they are read (no source file).
struct Generated {
    left: u64,
    state: u64,
}

impl AsyncRead for Generated {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let n = (buf.remaining() as u64).min(self.left) as usize / 8 * 8;
        let n = if n == 0 {
            (buf.remaining() as u64).min(self.left) as usize
        } else {
            n
        };
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            // xorshift64*
            self.state ^= self.state >> 12;
            self.state ^= self.state << 25;
            self.state ^= self.state >> 27;
            let word = self.state.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes();
            let take = (n - out.len()).min(8);
            out.extend_from_slice(&word[..take]);
        }
        buf.put_slice(&out);
        self.left -= n as u64;
        Poll::Ready(Ok(()))
    }
}

fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "moves 2 GiB; run by scripts/test.sh in release mode"]
async fn one_gib_up_and_down_in_bounded_memory() {
    within(300, async {
        let stock = Stock::start(ToolboxOptions::default()).await;
        let fs = transfer::fs_service(&stock.conn).await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let remote = dir.path().join("big.bin").display().to_string();
        let options = TransferOptions::default();
        let before = peak_rss_kib();

        let started = Instant::now();
        let source = Generated {
            left: SIZE,
            state: 0x9E37_79B9_7F4A_7C15,
        };
        let up = transfer::upload_from(&fs, source, &remote, &options)
            .await
            .unwrap();
        let up_secs = started.elapsed().as_secs_f64();
        assert_eq!(up.bytes, SIZE);
        assert_eq!(std::fs::metadata(&remote).unwrap().len(), SIZE);

        let started = Instant::now();
        let down = transfer::download_to(&fs, &remote, tokio::io::sink(), &options)
            .await
            .unwrap();
        let down_secs = started.elapsed().as_secs_f64();
        assert_eq!(down.bytes, SIZE);
        assert_eq!(down.sha256, up.sha256, "the digests differ");

        let growth_mib = peak_rss_kib().saturating_sub(before) / 1024;
        println!(
            "1 GiB upload: {up_secs:.2} s ({:.0} MiB/s); download: {down_secs:.2} s ({:.0} MiB/s); \
             sha256 {}; peak memory (server + client) grew {growth_mib} MiB (from {} MiB)",
            up.mib_per_sec(),
            down.mib_per_sec(),
            up.sha256,
            before / 1024
        );
        println!("rrpc upload_1gib_seconds {up_secs:.2} s");
        println!("rrpc download_1gib_seconds {down_secs:.2} s");
        println!("rrpc transfer_peak_memory_growth {growth_mib} MiB");
        assert!(growth_mib < MAX_GROWTH_MIB, "memory grew {growth_mib} MiB");
    })
    .await
}

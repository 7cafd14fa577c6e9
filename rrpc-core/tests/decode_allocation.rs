//! What the decoder allocates grows with what a frame holds, not with the
//! lengths it claims: a peer cannot make a small frame reserve gigabytes by
//! nesting lists that each claim a million items.
//!
//! This test binary counts every allocation through a global allocator that
//! wraps the system's; it holds one test only, so nothing else allocates
//! while it measures.
#![allow(unsafe_code)]
#![allow(clippy::unwrap_used)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use rrpc_core::wire::{decode, DecodeLimits};

/// Bytes allocated now, and the most at any time since the last reset.
static CURRENT: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

struct Counting;

// SAFETY: every method forwards its arguments unchanged to `System`, which
// upholds `GlobalAlloc`'s contract; the counters are plain atomics and do
// not allocate.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let now = CURRENT.fetch_add(layout.size(), Ordering::SeqCst) + layout.size();
        PEAK.fetch_max(now, Ordering::SeqCst);
        // SAFETY: the caller's guarantees for `layout` are passed on as is.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        CURRENT.fetch_sub(layout.size(), Ordering::SeqCst);
        // SAFETY: `ptr` came from `System.alloc` with this same `layout`
        // (every allocation goes through `alloc` above).
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// The engine's default limits (see `Config::default`).
const DEFAULTS: DecodeLimits = DecodeLimits {
    max_depth: 128,
    max_nodes: 1 << 20,
    max_bytes: 16 * 1024 * 1024,
    max_list: 1 << 20,
};

fn varint(out: &mut Vec<u8>, v: u64) {
    match v {
        0..=250 => out.push(v as u8),
        251..=0xffff => {
            out.push(251);
            out.extend_from_slice(&(v as u16).to_le_bytes());
        }
        0x1_0000..=0xffff_ffff => {
            out.push(252);
            out.extend_from_slice(&(v as u32).to_le_bytes());
        }
        _ => {
            out.push(253);
            out.extend_from_slice(&v.to_le_bytes());
        }
    }
}

#[test]
fn nested_length_claims_do_not_multiply_what_is_allocated() {
    // A reply (tag 1, id 1, Ok) whose value is a list claiming 2^20 items,
    // whose first item is such a list, and so on 128 levels down; maps
    // (tag 8) claim twice the room per item. Then 1 MiB of padding, so that
    // every claim looks plausible against the bytes left.
    for tag in [7_u8, 8] {
        let mut payload = vec![1, 1, 0];
        for _ in 0..DEFAULTS.max_depth {
            payload.push(tag);
            varint(&mut payload, 1 << 20);
        }
        payload.resize(payload.len() + (1 << 20), 0);

        let before = CURRENT.load(Ordering::SeqCst);
        PEAK.store(before, Ordering::SeqCst);
        let outcome = decode(&payload, DEFAULTS);
        let peak = PEAK.load(Ordering::SeqCst) - before;

        assert!(outcome.is_err(), "a truncated structure decoded");
        // Before the fix each level reserved its full claim: 4 GiB (8 for
        // maps) for this 1 MiB frame.
        assert!(
            peak < payload.len(),
            "decoding a {}-byte frame allocated {peak} bytes at its peak",
            payload.len()
        );
    }
}

//! Micro-benchmarks of the wire codec: encoding and decoding the two
//! messages every call makes (a request and its reply).
//!
//! ```text
//! cargo bench -p rrpc-core --bench codec
//! ```

use std::borrow::Cow;
use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use rrpc_core::wire::{decode, encode_into, DecodeLimits, Message, Op, WireValue};

/// The engine's default limits (see `Config::default`).
const LIMITS: DecodeLimits = DecodeLimits {
    max_depth: 128,
    max_nodes: 1 << 20,
    max_bytes: 16 * 1024 * 1024,
    max_list: 1 << 20,
};

/// What `bench.inc(41)` sends: the null call of the benchmark program.
fn null_request() -> Message<'static> {
    Message::Request {
        id: 12_345,
        target: 7,
        timeout_ms: 30_000,
        op: Op::Call {
            method: Cow::Borrowed("inc"),
            args: vec![WireValue::Int(41)],
        },
    }
}

/// Its reply.
fn null_reply() -> Message<'static> {
    Message::Reply {
        id: 12_345,
        result: Ok(WireValue::Int(42)),
    }
}

/// A call with a few typical arguments: a string, a small list, a map and a
/// reference to a caller's object (a callback).
fn mixed_request() -> Message<'static> {
    Message::Request {
        id: 12_346,
        target: 7,
        timeout_ms: 30_000,
        op: Op::Call {
            method: Cow::Borrowed("submit"),
            args: vec![
                WireValue::Str(Cow::Borrowed("/home/user/jobs/run-42.sh")),
                WireValue::List((0..8).map(WireValue::Int).collect()),
                WireValue::Map(vec![
                    (WireValue::Str(Cow::Borrowed("cpus")), WireValue::Int(4)),
                    (WireValue::Str(Cow::Borrowed("mem")), WireValue::Float(2.5)),
                ]),
                WireValue::SenderRef {
                    id: 99,
                    type_name: Cow::Borrowed("on_done"),
                },
            ],
        },
    }
}

/// A reply carrying one 64 KiB byte string (a bulk-transfer chunk).
fn bytes_reply(data: &[u8]) -> Message<'_> {
    Message::Reply {
        id: 12_347,
        result: Ok(WireValue::Bytes(Cow::Borrowed(data))),
    }
}

fn encoded(msg: &Message<'_>) -> Vec<u8> {
    let mut frame = Vec::new();
    if let Err(e) = encode_into(msg, &mut frame) {
        panic!("cannot encode the benchmark message: {e}");
    }
    frame
}

fn bench_message(c: &mut Criterion, name: &str, msg: &Message<'_>) {
    let frame = encoded(msg);
    let mut group = c.benchmark_group(name);
    group.throughput(Throughput::Bytes(frame.len() as u64));
    let mut out = Vec::with_capacity(frame.len());
    group.bench_function("encode", |b| {
        b.iter(|| {
            out.clear();
            encode_into(black_box(msg), &mut out).map(black_box)
        })
    });
    let payload = &frame[4..];
    group.bench_function("decode", |b| {
        // Dropping the decoded message is part of the cost, as in the engine.
        b.iter(|| black_box(decode(black_box(payload), LIMITS)))
    });
    group.finish();
}

fn codec(c: &mut Criterion) {
    bench_message(c, "null_request", &null_request());
    bench_message(c, "null_reply", &null_reply());
    bench_message(c, "mixed_request", &mixed_request());
    let chunk = vec![0xa5_u8; 64 * 1024];
    bench_message(c, "bytes_reply_64k", &bytes_reply(&chunk));
}

criterion_group!(benches, codec);
criterion_main!(benches);

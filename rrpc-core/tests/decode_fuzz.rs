//! Property tests of frame and value decoding: arbitrary bytes never panic
//! or over-allocate; every value tree survives a round trip; every truncation
//! of a valid message is an error, never a wrong message.
#![allow(clippy::unwrap_used)]

use std::borrow::Cow;

use proptest::prelude::*;
use rrpc_core::wire::{decode, encode_into, DecodeLimits, Message, Op, WireValue};

const LIMITS: DecodeLimits = DecodeLimits::new(64, 100_000);

fn wire_value() -> impl Strategy<Value = WireValue<'static>> {
    let leaf = prop_oneof![
        Just(WireValue::Unit),
        any::<bool>().prop_map(WireValue::Bool),
        any::<i64>().prop_map(WireValue::Int),
        any::<u64>().prop_map(WireValue::UInt),
        any::<f64>()
            .prop_filter("NaN is not equal to itself", |f| !f.is_nan())
            .prop_map(WireValue::Float),
        ".{0,40}".prop_map(|s| WireValue::Str(Cow::Owned(s))),
        proptest::collection::vec(any::<u8>(), 0..64).prop_map(|b| WireValue::Bytes(Cow::Owned(b))),
        (any::<u64>(), "[A-Za-z]{1,12}").prop_map(|(id, t)| WireValue::SenderRef {
            id,
            type_name: Cow::Owned(t)
        }),
        any::<u64>().prop_map(WireValue::ReceiverRef),
    ];
    leaf.prop_recursive(6, 200, 8, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..8).prop_map(WireValue::List),
            proptest::collection::vec((inner.clone(), inner), 0..6).prop_map(WireValue::Map),
        ]
    })
}

fn request(args: Vec<WireValue<'static>>) -> Message<'static> {
    Message::Request {
        id: 7,
        target: 3,
        timeout_ms: 1000,
        op: Op::Call {
            method: "f".into(),
            args,
        },
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 500, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = decode(&bytes, LIMITS);
    }

    #[test]
    fn values_roundtrip(args in proptest::collection::vec(wire_value(), 0..4)) {
        let msg = request(args);
        let mut frame = Vec::new();
        encode_into(&msg, &mut frame).unwrap();
        let back = decode(&frame[4..], LIMITS).unwrap();
        prop_assert_eq!(format!("{back:?}"), format!("{msg:?}"));
    }

    #[test]
    fn truncated_messages_are_errors(args in proptest::collection::vec(wire_value(), 1..4), cut in any::<prop::sample::Index>()) {
        let mut frame = Vec::new();
        encode_into(&request(args), &mut frame).unwrap();
        let payload = &frame[4..];
        let at = cut.index(payload.len());
        prop_assert!(decode(&payload[..at], LIMITS).is_err());
    }

    #[test]
    fn flipped_bytes_never_panic(args in proptest::collection::vec(wire_value(), 1..4), flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8)) {
        let mut frame = Vec::new();
        encode_into(&request(args), &mut frame).unwrap();
        let mut payload = frame[4..].to_vec();
        for (i, b) in flips {
            let at = i.index(payload.len());
            payload[at] = b;
        }
        let _ = decode(&payload, LIMITS);
    }
}

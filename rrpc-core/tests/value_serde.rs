//! serde conversions between Rust types and the dynamic `Value`.
use std::collections::{BTreeMap, HashMap};
use std::fmt::Debug;

use bytes::Bytes;
use rrpc_core::{from_value, to_value, Remote, Value, ValueError};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

fn s(v: &str) -> Value {
    Value::Str(v.to_owned())
}

fn map(pairs: Vec<(Value, Value)>) -> Value {
    Value::Map(pairs)
}

/// Serializes `v`, checks the `Value` is `expected`, and reads it back.
fn round_trip<T>(v: T, expected: Value)
where
    T: Serialize + DeserializeOwned + PartialEq + Debug,
{
    let value = to_value(&v).expect("to_value");
    assert_eq!(value, expected, "to_value({v:?})");
    let back: T = from_value(value).expect("from_value");
    assert_eq!(back, v);
}

fn err<T: DeserializeOwned + Debug>(value: Value) -> String {
    match from_value::<T>(value) {
        Ok(v) => panic!("expected an error, got {v:?}"),
        Err(ValueError(msg)) => msg,
    }
}

struct Counter;

impl Remote for Counter {
    fn type_name(&self) -> &str {
        "Counter"
    }
}

#[derive(Serialize, Deserialize, Debug, PartialEq)]
struct Point {
    x: i32,
    y: i32,
}

#[derive(Serialize, Deserialize, Debug, PartialEq)]
struct Unit;

#[derive(Serialize, Deserialize, Debug, PartialEq)]
struct Meters(f64);

#[derive(Serialize, Deserialize, Debug, PartialEq)]
struct Pair(i8, String);

#[derive(Serialize, Deserialize, Debug, PartialEq)]
enum Shape {
    Empty,
    Circle(f64),
    Rect(u32, u32),
    Poly { points: Vec<Point>, closed: bool },
}

#[derive(Serialize, Deserialize, Debug, PartialEq)]
struct Config {
    name: String,
    origin: Point,
    shapes: Vec<Shape>,
    label: Option<String>,
    limit: Option<u16>,
    tags: BTreeMap<String, bool>,
}

#[test]
fn primitives() {
    round_trip(true, Value::Bool(true));
    round_trip('λ', s("λ"));
    round_trip(String::from("héllo"), s("héllo"));
    round_trip((), Value::Unit);
    round_trip(1.5f64, Value::Float(1.5));
    round_trip(-0.25f32, Value::Float(-0.25));
    assert_eq!(to_value("borrowed").expect("str"), s("borrowed"));
    assert!(err::<char>(s("ab")).contains("expected a character"));
    assert!(err::<()>(Value::Int(0)).contains("expected unit"));
}

#[test]
fn every_int_width_and_boundary() {
    round_trip(i8::MIN, Value::Int(-128));
    round_trip(i8::MAX, Value::Int(127));
    round_trip(i16::MIN, Value::Int(i16::MIN.into()));
    round_trip(i32::MAX, Value::Int(i32::MAX.into()));
    round_trip(i64::MIN, Value::Int(i64::MIN));
    round_trip(i64::MAX, Value::Int(i64::MAX));
    round_trip(u8::MAX, Value::Int(255));
    round_trip(u16::MAX, Value::Int(u16::MAX.into()));
    round_trip(u32::MAX, Value::Int(u32::MAX.into()));
    round_trip(i64::MAX as u64, Value::Int(i64::MAX));
    round_trip(i64::MAX as u64 + 1, Value::UInt(i64::MAX as u64 + 1));
    round_trip(u64::MAX, Value::UInt(u64::MAX));
    round_trip(usize::MAX, Value::UInt(u64::MAX));
    round_trip(isize::MIN, Value::Int(i64::MIN));
    round_trip(i128::from(i64::MIN), Value::Int(i64::MIN));
    round_trip(i128::from(u64::MAX), Value::UInt(u64::MAX));
    round_trip(u128::from(u64::MAX), Value::UInt(u64::MAX));
    round_trip(7u128, Value::Int(7));
}

#[test]
fn ints_convert_between_widths_with_range_checks() {
    assert_eq!(from_value::<u16>(Value::Int(7)), Ok(7));
    assert_eq!(from_value::<i8>(Value::UInt(5)), Ok(5));
    assert_eq!(from_value::<u64>(Value::Int(42)), Ok(42));
    assert_eq!(err::<u8>(Value::Int(300)), "300 does not fit in u8");
    assert_eq!(err::<u64>(Value::Int(-1)), "-1 does not fit in u64");
    assert_eq!(err::<i8>(Value::Int(-129)), "-129 does not fit in i8");
    assert_eq!(
        err::<i64>(Value::UInt(u64::MAX)),
        "18446744073709551615 does not fit in i64"
    );
}

#[test]
fn wide_ints_out_of_range_fail_to_serialize() {
    let e = to_value(&i128::MIN).expect_err("i128::MIN");
    assert!(e.0.contains("does not fit"), "{e}");
    let e = to_value(&(u128::from(u64::MAX) + 1)).expect_err("u64::MAX + 1");
    assert!(e.0.contains("18446744073709551616"), "{e}");
}

#[test]
fn floats_accept_ints() {
    assert_eq!(from_value::<f64>(Value::Int(-3)), Ok(-3.0));
    assert_eq!(from_value::<f32>(Value::UInt(1 << 63)), Ok(9.223372e18));
    let nan: f64 = from_value(Value::Float(f64::NAN)).expect("nan");
    assert!(nan.is_nan());
    assert!(err::<f64>(s("1.0")).contains("expected f64"));
}

#[test]
fn collections() {
    round_trip(
        vec![1, 2, 3],
        Value::List(vec![Value::Int(1), Value::Int(2), Value::Int(3)]),
    );
    round_trip(Vec::<String>::new(), Value::List(vec![]));
    let mut ints = BTreeMap::new();
    ints.insert(-1, "minus".to_owned());
    ints.insert(2, "two".to_owned());
    round_trip(
        ints,
        map(vec![
            (Value::Int(-1), s("minus")),
            (Value::Int(2), s("two")),
        ]),
    );
    let mut hm = HashMap::new();
    hm.insert("a".to_owned(), vec![1u8]);
    hm.insert("b".to_owned(), vec![]);
    let value = to_value(&hm).expect("hashmap");
    assert_eq!(value.get("a"), Some(&Value::List(vec![Value::Int(1)])));
    assert_eq!(from_value::<HashMap<String, Vec<u8>>>(value), Ok(hm));
}

#[test]
fn tuples_and_structs() {
    round_trip(
        (1u8, "x".to_owned(), false),
        Value::List(vec![Value::Int(1), s("x"), Value::Bool(false)]),
    );
    round_trip(Unit, Value::Unit);
    round_trip(Meters(2.5), Value::Float(2.5));
    round_trip(
        Pair(-1, "p".into()),
        Value::List(vec![Value::Int(-1), s("p")]),
    );
    round_trip(
        Point { x: 1, y: -2 },
        map(vec![(s("x"), Value::Int(1)), (s("y"), Value::Int(-2))]),
    );
}

#[test]
fn structs_from_lists_and_with_extra_fields() {
    let compact = Value::List(vec![Value::Int(3), Value::Int(4)]);
    assert_eq!(from_value::<Point>(compact), Ok(Point { x: 3, y: 4 }));
    // Unknown fields (here with a nested, non-data-like value) are ignored.
    let extra = map(vec![
        (s("y"), Value::Int(2)),
        (
            s("junk"),
            Value::List(vec![Value::Unit, Value::object(Counter)]),
        ),
        (s("x"), Value::Int(1)),
    ]);
    assert_eq!(from_value::<Point>(extra), Ok(Point { x: 1, y: 2 }));
    let missing = map(vec![(s("x"), Value::Int(1))]);
    assert_eq!(err::<Point>(missing), "missing field `y`");
    let too_long = Value::List(vec![Value::Int(1), Value::Int(2), Value::Int(3)]);
    assert!(err::<Point>(too_long).contains("invalid length 3"));
}

#[test]
fn options() {
    round_trip(None::<u8>, Value::Unit);
    round_trip(Some(5u8), Value::Int(5));
    round_trip(Some(Some(true)), Value::Bool(true));
    assert_eq!(
        from_value::<Option<Point>>(map(vec![(s("x"), Value::Int(0)), (s("y"), Value::Int(0)),])),
        Ok(Some(Point { x: 0, y: 0 }))
    );
}

#[test]
fn enums_of_every_kind() {
    round_trip(Shape::Empty, s("Empty"));
    round_trip(
        Shape::Circle(1.0),
        map(vec![(s("Circle"), Value::Float(1.0))]),
    );
    round_trip(
        Shape::Rect(2, 3),
        map(vec![(
            s("Rect"),
            Value::List(vec![Value::Int(2), Value::Int(3)]),
        )]),
    );
    round_trip(
        Shape::Poly {
            points: vec![Point { x: 0, y: 1 }],
            closed: true,
        },
        map(vec![(
            s("Poly"),
            map(vec![
                (
                    s("points"),
                    Value::List(vec![map(vec![
                        (s("x"), Value::Int(0)),
                        (s("y"), Value::Int(1)),
                    ])]),
                ),
                (s("closed"), Value::Bool(true)),
            ]),
        )]),
    );
    // A unit variant written as {"Empty": ()} is accepted too.
    assert_eq!(
        from_value::<Shape>(map(vec![(s("Empty"), Value::Unit)])),
        Ok(Shape::Empty)
    );
}

#[test]
fn enum_errors() {
    assert!(err::<Shape>(s("Hexagon")).contains("unknown variant `Hexagon`"));
    let two = map(vec![(s("Empty"), Value::Unit), (s("Circle"), Value::Unit)]);
    assert!(err::<Shape>(two).contains("exactly one entry"));
    assert!(err::<Shape>(s("Circle")).contains("expected newtype variant"));
    assert!(err::<Shape>(Value::Int(1)).contains("expected enum Shape"));
}

#[test]
fn nested_struct() {
    let cfg = Config {
        name: "demo".into(),
        origin: Point { x: 0, y: 0 },
        shapes: vec![Shape::Empty, Shape::Rect(1, 1), Shape::Circle(0.5)],
        label: None,
        limit: Some(10),
        tags: [("fast".to_owned(), true)].into_iter().collect(),
    };
    let value = to_value(&cfg).expect("config");
    assert_eq!(value.get("label"), Some(&Value::Unit));
    assert_eq!(value.get("limit"), Some(&Value::Int(10)));
    let Value::Map(pairs) = &value else {
        panic!("struct must become a map: {value:?}")
    };
    let keys: Vec<_> = pairs.iter().filter_map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        keys,
        ["name", "origin", "shapes", "label", "limit", "tags"],
        "field order"
    );
    assert_eq!(from_value::<Config>(value), Ok(cfg));
}

#[test]
fn bytes() {
    let buf = ByteBuf::from(vec![0u8, 1, 255]);
    round_trip(buf.clone(), Value::Bytes(Bytes::from_static(&[0, 1, 255])));
    // Compact alternatives: a list of small ints, or a string.
    let list = Value::List(vec![Value::Int(0), Value::Int(1), Value::Int(255)]);
    assert_eq!(from_value::<ByteBuf>(list), Ok(buf.clone()));
    assert_eq!(
        from_value::<ByteBuf>(s("hi")),
        Ok(ByteBuf::from(b"hi".to_vec()))
    );
    assert_eq!(
        err::<ByteBuf>(Value::List(vec![Value::Int(256)])),
        "256 does not fit in u8"
    );
    // A plain Vec<u8> (a sequence in serde) reads from bytes as well.
    let v: Vec<u8> = from_value(Value::Bytes(Bytes::from_static(b"ab"))).expect("vec");
    assert_eq!(v, b"ab");
}

#[test]
fn wrong_type_names_the_expected_type() {
    assert_eq!(err::<u8>(s("x")), "invalid type: string \"x\", expected u8");
    assert!(err::<Point>(Value::Int(1)).contains("expected struct Point"));
    assert!(err::<String>(Value::Bool(true)).contains("expected a string"));
    assert!(err::<bool>(Value::Unit).contains("expected a boolean"));
    assert!(err::<Vec<i32>>(map(vec![])).contains("expected a sequence"));
}

#[test]
fn borrowed_strings_are_refused_clearly() {
    #[derive(Deserialize, Debug)]
    #[allow(dead_code)]
    struct Borrowed<'a> {
        name: &'a str,
    }
    let value = map(vec![(s("name"), s("x"))]);
    let e = Borrowed::deserialize(value).expect_err("borrowing from an owned Value");
    assert!(e.0.contains("expected a borrowed string"), "{e}");
}

#[test]
fn objects_are_not_data() {
    let obj = Value::object(Counter);
    let e = serde_json::to_string(&obj).expect_err("object to json");
    assert!(
        e.to_string()
            .contains("a by-reference object cannot be serialized as data; pass it as a Value"),
        "{e}"
    );
    let nested = Value::List(vec![Value::Int(1), obj.clone()]);
    assert!(serde_json::to_string(&nested).is_err());

    let e = err::<Point>(obj.clone());
    assert!(
        e.contains("struct Point") && e.contains("by-reference"),
        "{e}"
    );
    assert!(err::<u8>(obj.clone()).contains("into u8"));
    assert!(err::<Option<String>>(obj).contains("a string"));
}

#[test]
fn value_fields_carry_references_through() {
    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    struct Call {
        method: String,
        target: Value,
        args: Vec<Value>,
    }
    let obj = Value::object(Counter);
    let call = Call {
        method: "incr".into(),
        target: obj.clone(),
        args: vec![Value::Int(1), obj.clone()],
    };
    let value = to_value(&call).expect("to_value keeps references");
    assert!(value.has_references());
    assert_eq!(value.get("target"), Some(&obj));
    let back: Call = from_value(value).expect("from_value keeps references");
    assert_eq!(back.target, obj, "same object identity");
    assert_eq!(back, call);
    // A whole Value is an identity conversion both ways.
    assert_eq!(to_value(&obj).expect("to_value"), obj);
    assert_eq!(from_value::<Value>(obj.clone()).expect("from_value"), obj);
}

#[test]
fn value_round_trips_through_itself() {
    let data = map(vec![
        (Value::Int(1), Value::Bytes(Bytes::from_static(b"\x00\x01"))),
        (s("f"), Value::Float(0.5)),
        (s("u"), Value::UInt(u64::MAX)),
        (
            Value::Unit,
            Value::List(vec![Value::Bool(false), Value::Unit]),
        ),
    ]);
    assert_eq!(to_value(&data).expect("to_value"), data);
    assert_eq!(Value::deserialize(data.clone()), Ok(data.clone()));
    assert_eq!(from_value::<Value>(data.clone()), Ok(data));
}

#[test]
fn serde_json_interop() {
    let json = r#"{"name":"n","n":-3,"big":18446744073709551615,"f":1.5,
                   "list":[true,null,"s"],"nested":{"k":{}}}"#;
    let value: Value = serde_json::from_str(json).expect("json → Value");
    assert_eq!(value.get("n"), Some(&Value::Int(-3)));
    assert_eq!(value.get("big"), Some(&Value::UInt(u64::MAX)));
    assert_eq!(value.get("f"), Some(&Value::Float(1.5)));
    assert_eq!(
        value.get("list"),
        Some(&Value::List(vec![Value::Bool(true), Value::Unit, s("s")]))
    );
    assert_eq!(
        value.get("nested").and_then(|n| n.get("k")),
        Some(&map(vec![]))
    );
    let text = serde_json::to_string(&value).expect("Value → json");
    assert_eq!(
        text,
        r#"{"name":"n","n":-3,"big":18446744073709551615,"f":1.5,"list":[true,null,"s"],"nested":{"k":{}}}"#
    );
    // Bytes become a JSON array of numbers.
    let bytes = Value::Bytes(Bytes::from_static(&[1, 2]));
    assert_eq!(serde_json::to_string(&bytes).expect("bytes"), "[1,2]");
    // JSON → Value → typed struct.
    let p: Value = serde_json::from_str(r#"{"x":5,"y":6}"#).expect("point");
    assert_eq!(from_value::<Point>(p), Ok(Point { x: 5, y: 6 }));
    // Typed → Value → JSON matches serde_json's own encoding.
    let shape = Shape::Rect(1, 2);
    assert_eq!(
        serde_json::to_string(&to_value(&shape).expect("shape")).expect("json"),
        serde_json::to_string(&shape).expect("json")
    );
}

#[test]
fn huge_size_hints_do_not_preallocate() {
    /// Claims an absurd length but yields two items.
    struct Liar(u8);
    impl Iterator for Liar {
        type Item = u8;
        fn next(&mut self) -> Option<u8> {
            self.0 = self.0.checked_sub(1)?;
            Some(self.0)
        }
        fn size_hint(&self) -> (usize, Option<usize>) {
            (usize::MAX, Some(usize::MAX))
        }
    }
    let de = serde::de::value::SeqDeserializer::<_, serde::de::value::Error>::new(Liar(2));
    let value = Value::deserialize(de).expect("lying size hint");
    assert_eq!(value, Value::List(vec![Value::Int(1), Value::Int(0)]));
}

//! `T: Serialize` → [`Value`](super::Value), and `Serialize for Value`.
//!
//! The mapping follows serde's externally tagged data model (like
//! `serde_json`), but keeps real integers and real byte strings:
//!
//! | serde                                   | [`Value`]                          |
//! |-----------------------------------------|------------------------------------|
//! | `bool`                                  | `Bool`                             |
//! | integers (incl. `i128`/`u128` in range) | `Int`, or `UInt` above `i64::MAX`  |
//! | `f32`, `f64`                            | `Float`                            |
//! | `char`, `str`                           | `Str`                              |
//! | bytes (`serde_bytes`)                   | `Bytes`                            |
//! | `()`, unit struct, `None`               | `Unit`                             |
//! | `Some(x)`, newtype struct               | `x`                                |
//! | seq, tuple, tuple struct                | `List`                             |
//! | map                                     | `Map`                              |
//! | struct                                  | `Map` with `Str` keys, field order |
//! | unit variant                            | `Str(variant)`                     |
//! | newtype / tuple / struct variant        | `Map` `{Str(variant): payload}`    |
use std::cell::Cell;
use std::fmt::Display;

use bytes::Bytes;
use serde::ser::{self, Serialize, SerializeMap as _, SerializeSeq as _};

use super::{Value, ValueError};

/// Newtype-struct name that marks "a whole [`Value`] passes through here".
///
/// `Serialize for Value` uses it for by-reference values so that
/// [`to_value`] can carry objects and proxies through unchanged, while every
/// other serializer sees a payload that refuses to serialize. The
/// deserializer uses the same name in the other direction.
pub(super) const VALUE_TOKEN: &str = "$rrpc::private::Value";

/// Largest capacity reserved up front from an untrusted size hint.
pub(super) const MAX_PREALLOC: usize = 4096;

thread_local! {
    /// A by-reference value on its way from `Value::serialize` to the
    /// [`ValueSerializer`] directly below it on the stack.
    static PENDING_REF: Cell<Option<Value>> = const { Cell::new(None) };
}

impl ser::Error for ValueError {
    fn custom<T: Display>(msg: T) -> Self {
        ValueError(msg.to_string())
    }
}

/// Converts any serde-serialisable value into a [`Value`].
///
/// Integers that fit `i64` become [`Value::Int`], larger `u64`s become
/// [`Value::UInt`]; structs become string-keyed maps in field order; enums use
/// the externally tagged form (`"Variant"` or `{"Variant": payload}`).
/// [`Value`]s nested inside `value` are copied as they are, including
/// by-reference objects and proxies.
///
/// # Errors
///
/// Fails if `value`'s `Serialize` implementation fails, or for a 128-bit
/// integer outside the `i64`/`u64` range.
///
/// # Example
///
/// ```
/// use rrpc_core::{from_value, to_value, Value};
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Serialize, Deserialize, Debug, PartialEq)]
/// struct Point {
///     x: i32,
///     y: i32,
/// }
///
/// let value = to_value(&Point { x: 1, y: -2 })?;
/// assert_eq!(value.get("x"), Some(&Value::Int(1)));
/// let back: Point = from_value(value)?;
/// assert_eq!(back, Point { x: 1, y: -2 });
/// # Ok::<(), rrpc_core::ValueError>(())
/// ```
pub fn to_value<T: Serialize + ?Sized>(value: &T) -> Result<Value, ValueError> {
    value.serialize(ValueSerializer)
}

fn pair_map(variant: &'static str, payload: Value) -> Value {
    Value::Map(vec![(Value::Str(variant.to_owned()), payload)])
}

fn with_capacity<T>(hint: Option<usize>) -> Vec<T> {
    Vec::with_capacity(hint.unwrap_or(0).min(MAX_PREALLOC))
}

/// The serde [`Serializer`](ser::Serializer) behind [`to_value`].
#[derive(Debug, Clone, Copy)]
struct ValueSerializer;

impl ser::Serializer for ValueSerializer {
    type Ok = Value;
    type Error = ValueError;
    type SerializeSeq = SeqBuilder;
    type SerializeTuple = SeqBuilder;
    type SerializeTupleStruct = SeqBuilder;
    type SerializeTupleVariant = VariantSeqBuilder;
    type SerializeMap = MapBuilder;
    type SerializeStruct = StructBuilder;
    type SerializeStructVariant = VariantStructBuilder;

    fn serialize_bool(self, v: bool) -> Result<Value, ValueError> {
        Ok(Value::Bool(v))
    }
    fn serialize_i8(self, v: i8) -> Result<Value, ValueError> {
        Ok(Value::from(v))
    }
    fn serialize_i16(self, v: i16) -> Result<Value, ValueError> {
        Ok(Value::from(v))
    }
    fn serialize_i32(self, v: i32) -> Result<Value, ValueError> {
        Ok(Value::from(v))
    }
    fn serialize_i64(self, v: i64) -> Result<Value, ValueError> {
        Ok(Value::Int(v))
    }
    fn serialize_i128(self, v: i128) -> Result<Value, ValueError> {
        if let Ok(i) = i64::try_from(v) {
            Ok(Value::Int(i))
        } else if let Ok(u) = u64::try_from(v) {
            Ok(Value::UInt(u))
        } else {
            Err(ValueError(format!(
                "{v} does not fit in a Value integer (i64 or u64)"
            )))
        }
    }
    fn serialize_u8(self, v: u8) -> Result<Value, ValueError> {
        Ok(Value::from(v))
    }
    fn serialize_u16(self, v: u16) -> Result<Value, ValueError> {
        Ok(Value::from(v))
    }
    fn serialize_u32(self, v: u32) -> Result<Value, ValueError> {
        Ok(Value::from(v))
    }
    fn serialize_u64(self, v: u64) -> Result<Value, ValueError> {
        Ok(Value::from(v))
    }
    fn serialize_u128(self, v: u128) -> Result<Value, ValueError> {
        match u64::try_from(v) {
            Ok(u) => Ok(Value::from(u)),
            Err(_) => Err(ValueError(format!(
                "{v} does not fit in a Value integer (i64 or u64)"
            ))),
        }
    }
    fn serialize_f32(self, v: f32) -> Result<Value, ValueError> {
        Ok(Value::Float(f64::from(v)))
    }
    fn serialize_f64(self, v: f64) -> Result<Value, ValueError> {
        Ok(Value::Float(v))
    }
    fn serialize_char(self, v: char) -> Result<Value, ValueError> {
        Ok(Value::Str(v.to_string()))
    }
    fn serialize_str(self, v: &str) -> Result<Value, ValueError> {
        Ok(Value::Str(v.to_owned()))
    }
    fn serialize_bytes(self, v: &[u8]) -> Result<Value, ValueError> {
        Ok(Value::Bytes(Bytes::copy_from_slice(v)))
    }
    fn serialize_none(self) -> Result<Value, ValueError> {
        Ok(Value::Unit)
    }
    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result<Value, ValueError> {
        value.serialize(self)
    }
    fn serialize_unit(self) -> Result<Value, ValueError> {
        Ok(Value::Unit)
    }
    fn serialize_unit_struct(self, _name: &'static str) -> Result<Value, ValueError> {
        Ok(Value::Unit)
    }
    fn serialize_unit_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
    ) -> Result<Value, ValueError> {
        Ok(Value::Str(variant.to_owned()))
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        name: &'static str,
        value: &T,
    ) -> Result<Value, ValueError> {
        if name == VALUE_TOKEN {
            if let Some(v) = PENDING_REF.take() {
                return Ok(v);
            }
        }
        value.serialize(self)
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        value: &T,
    ) -> Result<Value, ValueError> {
        Ok(pair_map(variant, value.serialize(self)?))
    }
    fn serialize_seq(self, len: Option<usize>) -> Result<SeqBuilder, ValueError> {
        Ok(SeqBuilder(with_capacity(len)))
    }
    fn serialize_tuple(self, len: usize) -> Result<SeqBuilder, ValueError> {
        self.serialize_seq(Some(len))
    }
    fn serialize_tuple_struct(
        self,
        _name: &'static str,
        len: usize,
    ) -> Result<SeqBuilder, ValueError> {
        self.serialize_seq(Some(len))
    }
    fn serialize_tuple_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        len: usize,
    ) -> Result<VariantSeqBuilder, ValueError> {
        Ok(VariantSeqBuilder {
            variant,
            items: SeqBuilder(with_capacity(Some(len))),
        })
    }
    fn serialize_map(self, len: Option<usize>) -> Result<MapBuilder, ValueError> {
        Ok(MapBuilder {
            pairs: with_capacity(len),
            key: None,
        })
    }
    fn serialize_struct(
        self,
        _name: &'static str,
        len: usize,
    ) -> Result<StructBuilder, ValueError> {
        Ok(StructBuilder(with_capacity(Some(len))))
    }
    fn serialize_struct_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        len: usize,
    ) -> Result<VariantStructBuilder, ValueError> {
        Ok(VariantStructBuilder {
            variant,
            fields: StructBuilder(with_capacity(Some(len))),
        })
    }
}

/// Builds a [`Value::List`] for sequences, tuples and tuple structs.
#[derive(Debug)]
struct SeqBuilder(Vec<Value>);

impl ser::SerializeSeq for SeqBuilder {
    type Ok = Value;
    type Error = ValueError;
    fn serialize_element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), ValueError> {
        self.0.push(to_value(value)?);
        Ok(())
    }
    fn end(self) -> Result<Value, ValueError> {
        Ok(Value::List(self.0))
    }
}

impl ser::SerializeTuple for SeqBuilder {
    type Ok = Value;
    type Error = ValueError;
    fn serialize_element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), ValueError> {
        ser::SerializeSeq::serialize_element(self, value)
    }
    fn end(self) -> Result<Value, ValueError> {
        ser::SerializeSeq::end(self)
    }
}

impl ser::SerializeTupleStruct for SeqBuilder {
    type Ok = Value;
    type Error = ValueError;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), ValueError> {
        ser::SerializeSeq::serialize_element(self, value)
    }
    fn end(self) -> Result<Value, ValueError> {
        ser::SerializeSeq::end(self)
    }
}

/// Builds `{variant: [items...]}` for tuple variants.
#[derive(Debug)]
struct VariantSeqBuilder {
    variant: &'static str,
    items: SeqBuilder,
}

impl ser::SerializeTupleVariant for VariantSeqBuilder {
    type Ok = Value;
    type Error = ValueError;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), ValueError> {
        ser::SerializeSeq::serialize_element(&mut self.items, value)
    }
    fn end(self) -> Result<Value, ValueError> {
        Ok(pair_map(self.variant, Value::List(self.items.0)))
    }
}

/// Builds a [`Value::Map`] for maps; keys may be any value.
#[derive(Debug)]
struct MapBuilder {
    pairs: Vec<(Value, Value)>,
    key: Option<Value>,
}

impl ser::SerializeMap for MapBuilder {
    type Ok = Value;
    type Error = ValueError;
    fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> Result<(), ValueError> {
        self.key = Some(to_value(key)?);
        Ok(())
    }
    fn serialize_value<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), ValueError> {
        let key = self
            .key
            .take()
            .ok_or_else(|| ValueError("map value serialized before its key".into()))?;
        self.pairs.push((key, to_value(value)?));
        Ok(())
    }
    fn serialize_entry<K: Serialize + ?Sized, V: Serialize + ?Sized>(
        &mut self,
        key: &K,
        value: &V,
    ) -> Result<(), ValueError> {
        self.pairs.push((to_value(key)?, to_value(value)?));
        Ok(())
    }
    fn end(self) -> Result<Value, ValueError> {
        match self.key {
            Some(_) => Err(ValueError("map key serialized without a value".into())),
            None => Ok(Value::Map(self.pairs)),
        }
    }
}

/// Builds a string-keyed [`Value::Map`] for structs, in field order.
#[derive(Debug)]
struct StructBuilder(Vec<(Value, Value)>);

impl ser::SerializeStruct for StructBuilder {
    type Ok = Value;
    type Error = ValueError;
    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> Result<(), ValueError> {
        self.0.push((Value::Str(key.to_owned()), to_value(value)?));
        Ok(())
    }
    fn end(self) -> Result<Value, ValueError> {
        Ok(Value::Map(self.0))
    }
}

/// Builds `{variant: {field: value, ...}}` for struct variants.
#[derive(Debug)]
struct VariantStructBuilder {
    variant: &'static str,
    fields: StructBuilder,
}

impl ser::SerializeStructVariant for VariantStructBuilder {
    type Ok = Value;
    type Error = ValueError;
    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> Result<(), ValueError> {
        ser::SerializeStruct::serialize_field(&mut self.fields, key, value)
    }
    fn end(self) -> Result<Value, ValueError> {
        Ok(pair_map(self.variant, Value::Map(self.fields.0)))
    }
}

/// The payload other serializers see for a by-reference value: it refuses.
struct NotData<'a>(&'a Value);

impl Serialize for NotData<'_> {
    fn serialize<S: ser::Serializer>(&self, _serializer: S) -> Result<S::Ok, S::Error> {
        Err(ser::Error::custom(format_args!(
            "a by-reference object cannot be serialized as data; pass it as a Value \
             (found {:?})",
            self.0
        )))
    }
}

/// Serializes the data variants with the matching serde primitives
/// ([`Value::Bytes`] through `serialize_bytes`, [`Value::Map`] as a map whose
/// keys may be any value).
///
/// [`Value::Object`] and [`Value::Proxy`] are references, not data: every
/// serializer reports an error for them, except [`to_value`], which copies
/// them through unchanged.
impl Serialize for Value {
    fn serialize<S: ser::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Value::Unit => serializer.serialize_unit(),
            Value::Bool(b) => serializer.serialize_bool(*b),
            Value::Int(i) => serializer.serialize_i64(*i),
            Value::UInt(u) => serializer.serialize_u64(*u),
            Value::Float(f) => serializer.serialize_f64(*f),
            Value::Str(s) => serializer.serialize_str(s),
            Value::Bytes(b) => serializer.serialize_bytes(b),
            Value::List(items) => {
                let mut seq = serializer.serialize_seq(Some(items.len()))?;
                for item in items {
                    seq.serialize_element(item)?;
                }
                seq.end()
            }
            Value::Map(pairs) => {
                let mut map = serializer.serialize_map(Some(pairs.len()))?;
                for (k, v) in pairs {
                    map.serialize_entry(k, v)?;
                }
                map.end()
            }
            Value::Object(_) | Value::Proxy(_) => {
                // Only `ValueSerializer` picks this up (and clears it); for any
                // other serializer `NotData` fails and the slot is cleared below.
                PENDING_REF.set(Some(self.clone()));
                let result = serializer.serialize_newtype_struct(VALUE_TOKEN, &NotData(self));
                PENDING_REF.set(None);
                result
            }
        }
    }
}

//! [`Value`](super::Value) → `T: Deserialize`, and `Deserialize for Value`.
//!
//! [`Value`] itself is a serde [`Deserializer`] over owned data, so
//! `T::deserialize(value)` works as well as [`from_value`]. It is lenient
//! where the data model is ambiguous: integers convert between widths (with
//! range checks), floats accept integers, bytes accept lists of small
//! integers and strings, and structs accept both maps and (compact) lists.
use std::cell::Cell;
use std::fmt::{self, Display};

use bytes::Bytes;
use serde::de::value::{MapDeserializer, SeqDeserializer};
use serde::de::{
    self, DeserializeSeed, Deserializer, EnumAccess, Expected, IntoDeserializer, MapAccess,
    SeqAccess, Unexpected, VariantAccess, Visitor,
};
use serde::Deserialize;

use super::ser::{MAX_PREALLOC, VALUE_TOKEN};
use super::{Value, ValueError};

thread_local! {
    /// A whole value on its way from `Value::deserialize_newtype_struct` to
    /// the [`ValueVisitor`] it is handed to.
    static PENDING_VALUE: Cell<Option<Value>> = const { Cell::new(None) };
}

impl de::Error for ValueError {
    fn custom<T: Display>(msg: T) -> Self {
        ValueError(msg.to_string())
    }
}

/// Converts a [`Value`] into any serde-deserialisable type.
///
/// Strings, integers (of any width that fits), floats, bytes, lists and maps
/// map onto the matching Rust types; structs are read from string-keyed maps
/// (or from lists, in field order); enums from `"Variant"` or
/// `{"Variant": payload}`. Fields of type [`Value`] receive their part of the
/// input unchanged, including by-reference objects and proxies.
///
/// # Errors
///
/// Fails when the value does not have the shape `T` expects; the message names
/// what was expected (e.g. `invalid type: string "x", expected u8`, or
/// `300 does not fit in u8`).
///
/// # Example
///
/// ```
/// use std::collections::HashMap;
/// use rrpc_core::{from_value, Value};
///
/// let value = Value::Map(vec![
///     (Value::from("a"), Value::from(1)),
///     (Value::from("b"), Value::from(2)),
/// ]);
/// let map: HashMap<String, u8> = from_value(value)?;
/// assert_eq!(map["b"], 2);
///
/// let err = from_value::<u8>(Value::from(300)).unwrap_err();
/// assert_eq!(err.to_string(), "300 does not fit in u8");
/// # Ok::<(), rrpc_core::ValueError>(())
/// ```
pub fn from_value<T: de::DeserializeOwned>(value: Value) -> Result<T, ValueError> {
    T::deserialize(value)
}

impl Value {
    fn unexpected(&self) -> Unexpected<'_> {
        match self {
            Value::Unit => Unexpected::Unit,
            Value::Bool(b) => Unexpected::Bool(*b),
            Value::Int(i) => Unexpected::Signed(*i),
            Value::UInt(u) => Unexpected::Unsigned(*u),
            Value::Float(f) => Unexpected::Float(*f),
            Value::Str(s) => Unexpected::Str(s),
            Value::Bytes(b) => Unexpected::Bytes(b),
            Value::List(_) => Unexpected::Seq,
            Value::Map(_) => Unexpected::Map,
            Value::Object(_) | Value::Proxy(_) => Unexpected::Other("by-reference object"),
        }
    }

    /// The error for "this value cannot become what `exp` describes".
    fn invalid_type(&self, exp: &dyn Expected) -> ValueError {
        match self {
            Value::Object(_) | Value::Proxy(_) => ValueError(format!(
                "cannot convert {self:?} into {exp}: by-reference objects are not data \
                 (receive them as a Value)"
            )),
            _ => de::Error::invalid_type(self.unexpected(), exp),
        }
    }
}

fn out_of_range(n: impl Display, target: &str) -> ValueError {
    ValueError(format!("{n} does not fit in {target}"))
}

macro_rules! deserialize_int {
    ($($method:ident => $t:ty, $visit:ident;)*) => {$(
        fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ValueError> {
            match self {
                Value::Int(i) => match <$t>::try_from(i) {
                    Ok(n) => visitor.$visit(n),
                    Err(_) => Err(out_of_range(i, stringify!($t))),
                },
                Value::UInt(u) => match <$t>::try_from(u) {
                    Ok(n) => visitor.$visit(n),
                    Err(_) => Err(out_of_range(u, stringify!($t))),
                },
                other => Err(other.invalid_type(&visitor)),
            }
        }
    )*};
}

fn visit_list<'de, V: Visitor<'de>>(items: Vec<Value>, visitor: V) -> Result<V::Value, ValueError> {
    let mut seq = SeqDeserializer::new(items.into_iter());
    let out = visitor.visit_seq(&mut seq)?;
    seq.end()?;
    Ok(out)
}

fn visit_byte_list<'de, V: Visitor<'de>>(bytes: Bytes, visitor: V) -> Result<V::Value, ValueError> {
    let mut seq = SeqDeserializer::new(bytes.into_iter());
    let out = visitor.visit_seq(&mut seq)?;
    seq.end()?;
    Ok(out)
}

fn visit_pairs<'de, V: Visitor<'de>>(
    pairs: Vec<(Value, Value)>,
    visitor: V,
) -> Result<V::Value, ValueError> {
    let mut map = MapDeserializer::new(pairs.into_iter());
    let out = visitor.visit_map(&mut map)?;
    map.end()?;
    Ok(out)
}

impl<'de> IntoDeserializer<'de, ValueError> for Value {
    type Deserializer = Value;
    fn into_deserializer(self) -> Value {
        self
    }
}

/// A [`Value`] is a self-describing serde deserializer over owned data.
///
/// Borrowed output (`&str`, `&[u8]`) is not supported: use `String`,
/// `Vec<u8>`, `serde_bytes::ByteBuf` or `bytes::Bytes`.
impl<'de> Deserializer<'de> for Value {
    type Error = ValueError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ValueError> {
        match self {
            Value::Unit => visitor.visit_unit(),
            Value::Bool(b) => visitor.visit_bool(b),
            Value::Int(i) => visitor.visit_i64(i),
            Value::UInt(u) => visitor.visit_u64(u),
            Value::Float(f) => visitor.visit_f64(f),
            Value::Str(s) => visitor.visit_string(s),
            Value::Bytes(b) => visitor.visit_byte_buf(Vec::from(b)),
            Value::List(items) => visit_list(items, visitor),
            Value::Map(pairs) => visit_pairs(pairs, visitor),
            other @ (Value::Object(_) | Value::Proxy(_)) => Err(other.invalid_type(&visitor)),
        }
    }

    fn deserialize_bool<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ValueError> {
        match self {
            Value::Bool(b) => visitor.visit_bool(b),
            other => Err(other.invalid_type(&visitor)),
        }
    }

    deserialize_int! {
        deserialize_i8 => i8, visit_i8;
        deserialize_i16 => i16, visit_i16;
        deserialize_i32 => i32, visit_i32;
        deserialize_i64 => i64, visit_i64;
        deserialize_i128 => i128, visit_i128;
        deserialize_u8 => u8, visit_u8;
        deserialize_u16 => u16, visit_u16;
        deserialize_u32 => u32, visit_u32;
        deserialize_u64 => u64, visit_u64;
        deserialize_u128 => u128, visit_u128;
    }

    fn deserialize_f32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ValueError> {
        self.deserialize_f64(visitor)
    }

    fn deserialize_f64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ValueError> {
        match self {
            Value::Float(f) => visitor.visit_f64(f),
            Value::Int(i) => visitor.visit_f64(i as f64),
            Value::UInt(u) => visitor.visit_f64(u as f64),
            other => Err(other.invalid_type(&visitor)),
        }
    }

    fn deserialize_char<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ValueError> {
        self.deserialize_string(visitor)
    }

    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ValueError> {
        self.deserialize_string(visitor)
    }

    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ValueError> {
        match self {
            Value::Str(s) => visitor.visit_string(s),
            other => Err(other.invalid_type(&visitor)),
        }
    }

    fn deserialize_bytes<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ValueError> {
        self.deserialize_byte_buf(visitor)
    }

    fn deserialize_byte_buf<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ValueError> {
        match self {
            Value::Bytes(b) => visitor.visit_byte_buf(Vec::from(b)),
            Value::Str(s) => visitor.visit_byte_buf(s.into_bytes()),
            Value::List(items) => {
                let mut buf = Vec::with_capacity(items.len().min(MAX_PREALLOC));
                for item in items {
                    buf.push(match item {
                        Value::Int(i) => u8::try_from(i).map_err(|_| out_of_range(i, "u8"))?,
                        Value::UInt(u) => u8::try_from(u).map_err(|_| out_of_range(u, "u8"))?,
                        other => return Err(other.invalid_type(&"a byte (integer 0..=255)")),
                    });
                }
                visitor.visit_byte_buf(buf)
            }
            other => Err(other.invalid_type(&visitor)),
        }
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ValueError> {
        match self {
            Value::Unit => visitor.visit_none(),
            other => visitor.visit_some(other),
        }
    }

    fn deserialize_unit<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ValueError> {
        match self {
            Value::Unit => visitor.visit_unit(),
            other => Err(other.invalid_type(&visitor)),
        }
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, ValueError> {
        self.deserialize_unit(visitor)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> Result<V::Value, ValueError> {
        if name == VALUE_TOKEN {
            // `Value::deserialize` asks for the whole value: hand it over as is
            // (this is how objects and proxies reach `Value` fields). The
            // visitor takes it from the slot; clear it in case it did not.
            PENDING_VALUE.set(Some(self));
            let result = visitor.visit_newtype_struct(Value::Unit);
            PENDING_VALUE.set(None);
            return result;
        }
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ValueError> {
        match self {
            Value::List(items) => visit_list(items, visitor),
            Value::Bytes(b) => visit_byte_list(b, visitor),
            other => Err(other.invalid_type(&visitor)),
        }
    }

    fn deserialize_tuple<V: Visitor<'de>>(
        self,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, ValueError> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, ValueError> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ValueError> {
        match self {
            Value::Map(pairs) => visit_pairs(pairs, visitor),
            other => Err(other.invalid_type(&visitor)),
        }
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, ValueError> {
        match self {
            Value::Map(pairs) => visit_pairs(pairs, visitor),
            Value::List(items) => visit_list(items, visitor),
            other => Err(other.invalid_type(&visitor)),
        }
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, ValueError> {
        match self {
            Value::Str(_) => visitor.visit_enum(EnumDeserializer {
                variant: self,
                payload: None,
            }),
            Value::Map(mut pairs) if pairs.len() == 1 => match pairs.pop() {
                Some((variant, payload)) => visitor.visit_enum(EnumDeserializer {
                    variant,
                    payload: Some(payload),
                }),
                None => Err(ValueError("empty map where an enum was expected".into())),
            },
            Value::Map(pairs) => Err(ValueError(format!(
                "expected {} as a variant name or a map with exactly one entry, \
                 found a map with {} entries",
                &visitor as &dyn Expected,
                pairs.len()
            ))),
            other => Err(other.invalid_type(&visitor)),
        }
    }

    fn deserialize_identifier<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ValueError> {
        match self {
            Value::Str(s) => visitor.visit_string(s),
            Value::Int(i) if i >= 0 => visitor.visit_u64(i.unsigned_abs()),
            Value::UInt(u) => visitor.visit_u64(u),
            Value::Bytes(b) => visitor.visit_byte_buf(Vec::from(b)),
            other => Err(other.invalid_type(&visitor)),
        }
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ValueError> {
        drop(self);
        visitor.visit_unit()
    }
}

/// Enum access for `"Variant"` (no payload) or `{"Variant": payload}`.
struct EnumDeserializer {
    variant: Value,
    payload: Option<Value>,
}

impl<'de> EnumAccess<'de> for EnumDeserializer {
    type Error = ValueError;
    type Variant = VariantDeserializer;

    fn variant_seed<S: DeserializeSeed<'de>>(
        self,
        seed: S,
    ) -> Result<(S::Value, VariantDeserializer), ValueError> {
        let variant = seed.deserialize(self.variant)?;
        Ok((variant, VariantDeserializer(self.payload)))
    }
}

/// The payload of an enum variant, if any.
struct VariantDeserializer(Option<Value>);

impl<'de> VariantAccess<'de> for VariantDeserializer {
    type Error = ValueError;

    fn unit_variant(self) -> Result<(), ValueError> {
        match self.0 {
            None | Some(Value::Unit) => Ok(()),
            Some(other) => Err(other.invalid_type(&"unit variant")),
        }
    }

    fn newtype_variant_seed<S: DeserializeSeed<'de>>(
        self,
        seed: S,
    ) -> Result<S::Value, ValueError> {
        match self.0 {
            Some(payload) => seed.deserialize(payload),
            None => Err(de::Error::invalid_type(
                Unexpected::UnitVariant,
                &"newtype variant",
            )),
        }
    }

    fn tuple_variant<V: Visitor<'de>>(
        self,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, ValueError> {
        match self.0 {
            Some(payload) => payload.deserialize_seq(visitor),
            None => Err(de::Error::invalid_type(Unexpected::UnitVariant, &visitor)),
        }
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, ValueError> {
        match self.0 {
            Some(payload) => payload.deserialize_struct("", fields, visitor),
            None => Err(de::Error::invalid_type(Unexpected::UnitVariant, &visitor)),
        }
    }
}

/// Builds a [`Value`] from any self-describing format (`serde_json`, ...).
///
/// Byte strings become [`Value::Bytes`], `None` and `()` become
/// [`Value::Unit`], maps keep their entry order. Deserializing a `Value` from
/// a `Value` (e.g. a `Value` field in a struct read with [`from_value`]) moves
/// it through unchanged, by-reference objects and proxies included.
impl<'de> Deserialize<'de> for Value {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_newtype_struct(VALUE_TOKEN, ValueVisitor)
    }
}

struct ValueVisitor;

impl<'de> Visitor<'de> for ValueVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Int(v))
    }
    fn visit_i128<E: de::Error>(self, v: i128) -> Result<Value, E> {
        if let Ok(i) = i64::try_from(v) {
            Ok(Value::Int(i))
        } else if let Ok(u) = u64::try_from(v) {
            Ok(Value::UInt(u))
        } else {
            Err(E::custom(out_of_range(v, "a Value integer (i64 or u64)")))
        }
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u128<E: de::Error>(self, v: u128) -> Result<Value, E> {
        match u64::try_from(v) {
            Ok(u) => Ok(Value::from(u)),
            Err(_) => Err(E::custom(out_of_range(v, "a Value integer (i64 or u64)"))),
        }
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Value::Float(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::Str(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::Str(v))
    }
    fn visit_bytes<E>(self, v: &[u8]) -> Result<Value, E> {
        Ok(Value::Bytes(Bytes::copy_from_slice(v)))
    }
    fn visit_byte_buf<E>(self, v: Vec<u8>) -> Result<Value, E> {
        Ok(Value::Bytes(Bytes::from(v)))
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Unit)
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Unit)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        Value::deserialize(d)
    }
    fn visit_newtype_struct<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        if let Some(value) = PENDING_VALUE.take() {
            return Ok(value);
        }
        // Not from a `Value` deserializer: read whatever is inside. (Calling
        // `Value::deserialize(d)` here would ask for the newtype again.)
        d.deserialize_any(self)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(MAX_PREALLOC));
        while let Some(item) = seq.next_element::<Value>()? {
            items.push(item);
        }
        Ok(Value::List(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut pairs = Vec::with_capacity(map.size_hint().unwrap_or(0).min(MAX_PREALLOC));
        while let Some(pair) = map.next_entry::<Value, Value>()? {
            pairs.push(pair);
        }
        Ok(Value::Map(pairs))
    }
}

//! The dynamic [`Value`] model: what crosses the wire by value, plus the two
//! by-reference cases (a local object to export, or a proxy to a remote one).

mod de;
mod ser;

use std::fmt;
use std::sync::Arc;

use bytes::Bytes;

use crate::proxy::Proxy;
use crate::remote::Remote;

pub use de::from_value;
pub use ser::to_value;

/// A dynamically typed value, as RPyC users know them.
///
/// Plain data (unit, booleans, numbers, strings, bytes, lists, maps) is copied
/// to the peer. [`Value::Object`] and [`Value::Proxy`] travel *by reference*:
/// the peer receives a proxy, and calls through it run where the object lives.
#[derive(Clone, Default)]
pub enum Value {
    /// Nothing (`None`, `()`).
    #[default]
    Unit,
    /// A boolean.
    Bool(bool),
    /// A signed integer; every integer that fits in `i64` is stored here.
    Int(i64),
    /// An unsigned integer above `i64::MAX`.
    UInt(u64),
    /// A 64-bit float.
    Float(f64),
    /// A UTF-8 string.
    Str(String),
    /// A byte string (moved without copying where possible).
    Bytes(Bytes),
    /// An ordered list.
    List(Vec<Value>),
    /// A map as ordered key/value pairs (serde structs become string-keyed maps).
    Map(Vec<(Value, Value)>),
    /// A local object, sent to the peer by reference.
    Object(Arc<dyn Remote>),
    /// A reference to an object owned by a peer.
    Proxy(Proxy),
}

impl Value {
    /// A short name of this value's type, used in error messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::Unit => "unit",
            Value::Bool(_) => "bool",
            Value::Int(_) | Value::UInt(_) => "int",
            Value::Float(_) => "float",
            Value::Str(_) => "str",
            Value::Bytes(_) => "bytes",
            Value::List(_) => "list",
            Value::Map(_) => "map",
            Value::Object(_) => "object",
            Value::Proxy(_) => "proxy",
        }
    }

    /// Wraps a local object so that it is sent by reference.
    pub fn object<R: Remote>(obj: R) -> Value {
        Value::Object(Arc::new(obj))
    }

    /// The integer inside, if this is an integer that fits `i64`.
    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            Value::UInt(u) => i64::try_from(*u).ok(),
            _ => None,
        }
    }

    /// The number inside as `f64`, if this is a number.
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Float(f) => Some(*f),
            Value::Int(i) => Some(*i as f64),
            Value::UInt(u) => Some(*u as f64),
            _ => None,
        }
    }

    /// The string inside, if this is a string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The boolean inside, if this is a boolean.
    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Value::Bool(b) => Some(*b),
            _ => None,
        }
    }

    /// The proxy inside, if this value is a reference to a remote object.
    pub fn as_proxy(&self) -> Option<&Proxy> {
        match self {
            Value::Proxy(p) => Some(p),
            _ => None,
        }
    }

    /// The proxy inside, or an error naming what the value is instead.
    pub fn into_proxy(self) -> Result<Proxy, ValueError> {
        match self {
            Value::Proxy(p) => Ok(p),
            other => Err(ValueError(format!(
                "expected a remote object, got {} {other:?}",
                other.type_name()
            ))),
        }
    }

    /// Converts this value into a Rust type (see [`from_value`]).
    pub fn decode<T: serde::de::DeserializeOwned>(self) -> Result<T, ValueError> {
        from_value(self)
    }

    /// Looks a string key up in a map value.
    pub fn get(&self, key: &str) -> Option<&Value> {
        match self {
            Value::Map(pairs) => pairs
                .iter()
                .find(|(k, _)| k.as_str() == Some(key))
                .map(|(_, v)| v),
            _ => None,
        }
    }

    /// Whether this value, or anything inside it, travels by reference.
    pub fn has_references(&self) -> bool {
        match self {
            Value::Object(_) | Value::Proxy(_) => true,
            Value::List(items) => items.iter().any(Value::has_references),
            Value::Map(pairs) => pairs
                .iter()
                .any(|(k, v)| k.has_references() || v.has_references()),
            _ => false,
        }
    }
}

impl PartialEq for Value {
    /// Data compares by value; references compare by identity.
    fn eq(&self, other: &Value) -> bool {
        use Value::*;
        match (self, other) {
            (Unit, Unit) => true,
            (Bool(a), Bool(b)) => a == b,
            (Int(a), Int(b)) => a == b,
            (UInt(a), UInt(b)) => a == b,
            (Float(a), Float(b)) => a == b,
            (Str(a), Str(b)) => a == b,
            (Bytes(a), Bytes(b)) => a == b,
            (List(a), List(b)) => a == b,
            (Map(a), Map(b)) => a == b,
            (Object(a), Object(b)) => std::ptr::addr_eq(Arc::as_ptr(a), Arc::as_ptr(b)),
            (Proxy(a), Proxy(b)) => a.same_object(b),
            _ => false,
        }
    }
}

impl fmt::Debug for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Unit => f.write_str("()"),
            Value::Bool(b) => write!(f, "{b}"),
            Value::Int(i) => write!(f, "{i}"),
            Value::UInt(u) => write!(f, "{u}"),
            Value::Float(x) => write!(f, "{x:?}"),
            Value::Str(s) => write!(f, "{s:?}"),
            Value::Bytes(b) if b.len() <= 32 => write!(f, "b{:?}", b),
            Value::Bytes(b) => write!(f, "<{} bytes>", b.len()),
            Value::List(items) => f.debug_list().entries(items).finish(),
            Value::Map(pairs) => f
                .debug_map()
                .entries(pairs.iter().map(|(k, v)| (k, v)))
                .finish(),
            Value::Object(o) => write!(f, "<local {}>", o.type_name()),
            Value::Proxy(p) => write!(f, "{p:?}"),
        }
    }
}

/// Renders data the way a user expects to read it (strings without quotes at
/// the top level, lists and maps like JSON).
impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Str(s) => f.write_str(s),
            other => write!(f, "{other:?}"),
        }
    }
}

macro_rules! from_int {
    ($($t:ty),*) => {$(
        impl From<$t> for Value {
            fn from(v: $t) -> Value { Value::Int(i64::from(v)) }
        }
    )*};
}
from_int!(i8, i16, i32, i64, u8, u16, u32);

impl From<u64> for Value {
    fn from(v: u64) -> Value {
        match i64::try_from(v) {
            Ok(i) => Value::Int(i),
            Err(_) => Value::UInt(v),
        }
    }
}

impl From<usize> for Value {
    fn from(v: usize) -> Value {
        Value::from(v as u64)
    }
}

impl From<isize> for Value {
    fn from(v: isize) -> Value {
        Value::Int(v as i64)
    }
}

impl From<f64> for Value {
    fn from(v: f64) -> Value {
        Value::Float(v)
    }
}

impl From<f32> for Value {
    fn from(v: f32) -> Value {
        Value::Float(f64::from(v))
    }
}

impl From<bool> for Value {
    fn from(v: bool) -> Value {
        Value::Bool(v)
    }
}

impl From<()> for Value {
    fn from(_: ()) -> Value {
        Value::Unit
    }
}

impl From<String> for Value {
    fn from(v: String) -> Value {
        Value::Str(v)
    }
}

impl From<&str> for Value {
    fn from(v: &str) -> Value {
        Value::Str(v.to_owned())
    }
}

impl From<Bytes> for Value {
    fn from(v: Bytes) -> Value {
        Value::Bytes(v)
    }
}

impl From<Proxy> for Value {
    fn from(v: Proxy) -> Value {
        Value::Proxy(v)
    }
}

impl From<Arc<dyn Remote>> for Value {
    fn from(v: Arc<dyn Remote>) -> Value {
        Value::Object(v)
    }
}

impl<T: Into<Value>> From<Vec<T>> for Value {
    fn from(v: Vec<T>) -> Value {
        Value::List(v.into_iter().map(Into::into).collect())
    }
}

impl<T: Into<Value>> From<Option<T>> for Value {
    fn from(v: Option<T>) -> Value {
        v.map_or(Value::Unit, Into::into)
    }
}

/// A value could not be converted to or from a Rust type.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ValueError(pub String);

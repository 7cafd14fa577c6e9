//! [`Handle`]: the reference a typed proxy or callback holds.

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::call::{Call, IntoArgs};
use crate::error::{Error, ErrorKind, RemoteError};
use crate::proxy::Proxy;
use crate::remote::Remote;
use crate::value::Value;

/// A reference to an object: either a proxy to the peer's object, or a local
/// object that is sent by reference when it crosses the wire.
///
/// A server method returning `FileProxy` builds it from a local object
/// (`FileObject::new(file).into_typed()`); the client receives it as a
/// proxy. When the client passes it back, the server gets its own local
/// object again (identity is preserved).
#[derive(Clone)]
pub struct Handle(Target);

#[derive(Clone)]
enum Target {
    Local(Arc<dyn Remote>),
    Remote(Proxy),
}

impl Handle {
    /// A handle to a local object.
    pub fn local(obj: Arc<dyn Remote>) -> Handle {
        Handle(Target::Local(obj))
    }

    /// The proxy inside, if the object is remote.
    pub fn proxy(&self) -> Option<&Proxy> {
        match &self.0 {
            Target::Remote(p) => Some(p),
            Target::Local(_) => None,
        }
    }

    /// The local object inside, if the object lives here.
    pub fn local_object(&self) -> Option<&Arc<dyn Remote>> {
        match &self.0 {
            Target::Local(obj) => Some(obj),
            Target::Remote(_) => None,
        }
    }

    /// The reference as a [`Value`] ([`Value::Object`] or [`Value::Proxy`]).
    pub fn to_value(&self) -> Value {
        match &self.0 {
            Target::Local(obj) => Value::Object(obj.clone()),
            Target::Remote(p) => Value::Proxy(p.clone()),
        }
    }

    /// Reads a handle out of a value; fails unless it is a reference.
    pub fn from_value(value: Value) -> Result<Handle, crate::ValueError> {
        match value {
            Value::Object(obj) => Ok(Handle::local(obj)),
            Value::Proxy(p) => Ok(Handle::from(p)),
            other => Err(crate::ValueError(format!(
                "expected an object by reference, got {} {other:?}",
                other.type_name()
            ))),
        }
    }

    /// The type name of the object behind the handle.
    pub fn type_name(&self) -> &str {
        match &self.0 {
            Target::Local(obj) => obj.type_name(),
            Target::Remote(p) => p.type_name(),
        }
    }

    fn remote(&self, what: &str) -> Result<&Proxy, Error> {
        match &self.0 {
            Target::Remote(p) => Ok(p),
            Target::Local(obj) => Err(Error::Remote(RemoteError::new(
                ErrorKind::NotCallable,
                format!(
                    "{} is a local object: {what} it directly, not through its typed proxy",
                    obj.type_name()
                ),
            ))),
        }
    }

    /// Calls method `method` of the object.
    pub fn call(&self, method: &str, args: impl IntoArgs) -> Result<Call, Error> {
        Ok(self.remote("call")?.call(method, args))
    }

    /// Calls the object itself.
    pub fn invoke(&self, args: impl IntoArgs) -> Result<Call, Error> {
        Ok(self.remote("call")?.invoke(args))
    }

    /// Reads attribute `name`.
    pub fn get(&self, name: &str) -> Result<Call, Error> {
        Ok(self.remote("read")?.get(name))
    }

    /// Writes attribute `name`.
    pub fn set(&self, name: &str, value: Value) -> Result<Call, Error> {
        Ok(self.remote("write")?.set(name, value))
    }
}

impl From<Proxy> for Handle {
    fn from(proxy: Proxy) -> Handle {
        Handle(Target::Remote(proxy))
    }
}

impl fmt::Debug for Handle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Target::Local(obj) => write!(f, "<local {}>", obj.type_name()),
            Target::Remote(p) => write!(f, "{p:?}"),
        }
    }
}

/// Travels by reference: only [`to_value`](crate::to_value) accepts it.
impl Serialize for Handle {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.to_value().serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Handle {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Handle, D::Error> {
        Handle::from_value(Value::deserialize(deserializer)?).map_err(serde::de::Error::custom)
    }
}

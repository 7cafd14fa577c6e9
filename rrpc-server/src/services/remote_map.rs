//! A mutable map living on the server (the server's environment as
//! `sys.env`), used through a proxy.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use rrpc_core::{Args, CallContext, Member, Remote, RemoteError, Reply, Value};

/// A string-keyed map on the server; with `strings_only`, values are strings
/// too (an environment).
#[derive(Debug)]
pub struct RemoteMap {
    name: String,
    strings_only: bool,
    items: Mutex<BTreeMap<String, Value>>,
}

impl RemoteMap {
    /// A map called `name` whose values must be strings.
    pub fn of_strings(
        name: impl Into<String>,
        items: impl IntoIterator<Item = (String, String)>,
    ) -> RemoteMap {
        RemoteMap {
            name: name.into(),
            strings_only: true,
            items: Mutex::new(items.into_iter().map(|(k, v)| (k, Value::Str(v))).collect()),
        }
    }

    /// The entries whose values are strings (all of them for an environment).
    pub fn string_pairs(&self) -> Vec<(String, String)> {
        self.lock()
            .iter()
            .filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_owned())))
            .collect()
    }

    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<Value> {
        self.lock().get(key).cloned()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Value>> {
        self.items.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn check(&self, value: &Value) -> Result<(), RemoteError> {
        if self.strings_only && value.as_str().is_none() {
            return Err(RemoteError::bad_argument(format!(
                "{} holds strings, got {}",
                self.name,
                value.type_name()
            )));
        }
        if value.has_references() {
            return Err(RemoteError::bad_argument(format!(
                "{} holds data, not remote objects",
                self.name
            )));
        }
        Ok(())
    }

    fn dispatch(&self, method: &str, mut args: Args) -> Result<Value, RemoteError> {
        match method {
            "get" => {
                args.expect_count(1, 2)?;
                let key: String = args.take(0, "key")?;
                let default = args.take_opt::<Value>(1, "default")?.unwrap_or_default();
                Ok(self.get(&key).unwrap_or(default))
            }
            "set" => {
                args.expect_count(2, 2)?;
                let key: String = args.take(0, "key")?;
                let value = args.take_value(1, "value")?;
                self.check(&value)?;
                self.lock().insert(key, value);
                Ok(Value::Unit)
            }
            "update" => {
                args.expect_count(1, 1)?;
                let more: BTreeMap<String, Value> = match args.take_value(0, "items")? {
                    Value::Map(pairs) => pairs
                        .into_iter()
                        .map(|(k, v)| match k {
                            Value::Str(k) => Ok((k, v)),
                            other => Err(RemoteError::bad_argument(format!(
                                "keys must be strings, got {}",
                                other.type_name()
                            ))),
                        })
                        .collect::<Result<_, _>>()?,
                    other => {
                        return Err(RemoteError::bad_argument(format!(
                            "argument 0 (`items`): expected a map, got {}",
                            other.type_name()
                        )))
                    }
                };
                for v in more.values() {
                    self.check(v)?;
                }
                self.lock().extend(more);
                Ok(Value::Unit)
            }
            "remove" | "pop" => {
                args.expect_count(1, 1)?;
                let key: String = args.take(0, "key")?;
                Ok(self.lock().remove(&key).unwrap_or_default())
            }
            "contains" => {
                let key: String = args.take(0, "key")?;
                Ok(Value::Bool(self.lock().contains_key(&key)))
            }
            "keys" => Ok(Value::from(self.lock().keys().cloned().collect::<Vec<_>>())),
            "items" => Ok(Value::Map(
                self.lock()
                    .iter()
                    .map(|(k, v)| (Value::Str(k.clone()), v.clone()))
                    .collect(),
            )),
            "len" => Ok(Value::from(self.lock().len())),
            other => Err(RemoteError::no_such_method(&self.name, other)),
        }
    }
}

impl Remote for RemoteMap {
    fn type_name(&self) -> &str {
        "map"
    }

    fn call(self: Arc<Self>, _cx: CallContext, method: &str, args: Args) -> Reply {
        Reply::Ready(self.dispatch(method, args))
    }

    fn members(&self) -> Vec<Member> {
        vec![
            Member::method("get", "get(key: str, default = None) -> any"),
            Member::method("set", "set(key: str, value)"),
            Member::method("update", "update(items: map)"),
            Member::method("remove", "remove(key: str) -> any"),
            Member::method("pop", "pop(key: str) -> any"),
            Member::method("contains", "contains(key: str) -> bool"),
            Member::method("keys", "keys() -> list[str]"),
            Member::method("items", "items() -> map"),
            Member::method("len", "len() -> int"),
        ]
    }
}

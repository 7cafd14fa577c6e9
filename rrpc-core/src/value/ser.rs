//! `T: Serialize` → [`Value`](super::Value).
use super::{Value, ValueError};

/// Converts any serde-serialisable value into a [`Value`].
pub fn to_value<T: serde::Serialize + ?Sized>(_value: &T) -> Result<Value, ValueError> {
    Err(ValueError("to_value is not implemented yet".into()))
}

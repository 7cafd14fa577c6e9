//! [`Value`](super::Value) → `T: Deserialize`.
use super::{Value, ValueError};

/// Converts a [`Value`] into any serde-deserialisable type.
pub fn from_value<T: serde::de::DeserializeOwned>(_value: Value) -> Result<T, ValueError> {
    Err(ValueError("from_value is not implemented yet".into()))
}

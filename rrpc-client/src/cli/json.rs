//! Values on the command line: JSON in, JSON out.

use rrpc_core::Value;
use serde_json::Value as Json;

/// A command-line argument that looks like JSON but is not valid JSON.
#[derive(Debug, thiserror::Error)]
#[error("argument {text:?} is not valid JSON ({source}); quote a plain string as JSON: '\"...\"'")]
pub struct ArgError {
    /// The argument as given.
    pub text: String,
    /// Why it does not parse.
    #[source]
    pub source: serde_json::Error,
}

/// Whether an argument is meant as JSON: it starts (after blanks) with
/// `[`, `{`, `"`, a digit, or `-` and a digit, or it is `true`, `false` or
/// `null`. Anything else is a plain string.
fn looks_like_json(text: &str) -> bool {
    let t = text.trim_start();
    let mut chars = t.chars();
    match chars.next() {
        Some('[' | '{' | '"') => true,
        Some(c) if c.is_ascii_digit() => true,
        Some('-') => chars.next().is_some_and(|c| c.is_ascii_digit()),
        _ => matches!(t.trim_end(), "true" | "false" | "null"),
    }
}

/// Parses a command-line argument: JSON when it looks like JSON (see
/// [`looks_like_json`]'s rule; then it must be valid JSON), else a plain
/// string (so `rrpc call ADDR fs.listdir /tmp` needs no quotes).
pub fn parse_arg(text: &str) -> Result<Value, ArgError> {
    if !looks_like_json(text) {
        return Ok(Value::Str(text.to_owned()));
    }
    serde_json::from_str::<Json>(text)
        .map(from_json)
        .map_err(|source| ArgError {
            text: text.to_owned(),
            source,
        })
}

/// JSON as a value.
pub fn from_json(json: Json) -> Value {
    match json {
        Json::Null => Value::Unit,
        Json::Bool(b) => Value::Bool(b),
        Json::Number(n) => {
            if let Some(i) = n.as_i64() {
                Value::Int(i)
            } else if let Some(u) = n.as_u64() {
                Value::UInt(u)
            } else {
                Value::Float(n.as_f64().unwrap_or(f64::NAN))
            }
        }
        Json::String(s) => Value::Str(s),
        Json::Array(items) => Value::List(items.into_iter().map(from_json).collect()),
        Json::Object(map) => Value::Map(
            map.into_iter()
                .map(|(k, v)| (Value::Str(k), from_json(v)))
                .collect(),
        ),
    }
}

/// A value as JSON: bytes become a string when they are UTF-8 (else a list
/// of numbers), references become `{"$object": TYPE, "id": N}`.
pub fn to_json(value: &Value) -> Json {
    match value {
        Value::Unit => Json::Null,
        Value::Bool(b) => Json::Bool(*b),
        Value::Int(i) => Json::from(*i),
        Value::UInt(u) => Json::from(*u),
        Value::Float(f) => serde_json::Number::from_f64(*f).map_or(Json::Null, Json::Number),
        Value::Str(s) => Json::String(s.clone()),
        Value::Bytes(b) => match std::str::from_utf8(b) {
            Ok(text) => Json::String(text.to_owned()),
            Err(_) => Json::Array(b.iter().map(|x| Json::from(*x)).collect()),
        },
        Value::List(items) => Json::Array(items.iter().map(to_json).collect()),
        Value::Map(pairs) => Json::Object(
            pairs
                .iter()
                .map(|(k, v)| {
                    let key = match k {
                        Value::Str(s) => s.clone(),
                        other => format!("{other:?}"),
                    };
                    (key, to_json(v))
                })
                .collect(),
        ),
        Value::Object(obj) => serde_json::json!({ "$object": obj.type_name() }),
        Value::Proxy(p) => serde_json::json!({ "$object": p.type_name(), "id": p.id() }),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn arguments_are_json_or_plain_strings() {
        assert_eq!(parse_arg("42").unwrap(), Value::Int(42));
        assert_eq!(parse_arg("\"x\"").unwrap(), Value::Str("x".into()));
        assert_eq!(parse_arg("/tmp").unwrap(), Value::Str("/tmp".into()));
        assert_eq!(parse_arg("-rf").unwrap(), Value::Str("-rf".into()));
        assert_eq!(
            parse_arg("[1, \"a\"]").unwrap(),
            Value::List(vec![Value::Int(1), Value::Str("a".into())])
        );
        assert_eq!(
            to_json(&parse_arg("{\"a\": [true, null]}").unwrap()).to_string(),
            "{\"a\":[true,null]}"
        );
    }

    #[test]
    fn malformed_json_is_an_error_not_a_string() {
        for bad in ["[\"/tmp\"", "{\"a\": }", "\"unterminated", "12abc", "-1x"] {
            let e = parse_arg(bad).unwrap_err().to_string();
            assert!(e.contains("is not valid JSON"), "{bad}: {e}");
        }
    }
}

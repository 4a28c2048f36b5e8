//! What a trigger request's body becomes: the JSON payload a pump receives.
//!
//! The webhook and inject handlers call [`from_body`] before anything is recorded, and the fuzz
//! target `fuzz/fuzz_targets/webhook_payload.rs` calls the same function on arbitrary bytes, so
//! what is fuzzed is exactly what the server does with a hostile body.

use serde_json::Value;

/// The deepest nesting of arrays and objects a payload may have.
///
/// A payload travels inside a [`pumphouse_pump::Trigger`], which adds a level, and serde_json
/// (which the reference pump uses) refuses documents nested deeper than 128. A body that parsed
/// here but not in the pump would be answered 202 and then never run; far below that limit, the
/// pump's templates and other languages' parsers have room too.
pub const MAX_DEPTH: usize = 64;

/// Why a body cannot be a trigger's payload.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PayloadError {
    #[error("the body is neither JSON nor UTF-8 text; send JSON")]
    NotText,
    #[error(
        "the JSON body nests arrays and objects more than {MAX_DEPTH} levels deep; a pump could not read it, so flatten it"
    )]
    TooDeep,
}

/// A body as the pump will see it: JSON as it is, other UTF-8 text as a JSON string, an empty
/// (or all-whitespace) body as `null`.
///
/// # Errors
/// [`PayloadError::NotText`] for bytes that are not UTF-8, [`PayloadError::TooDeep`] for JSON
/// nested deeper than [`MAX_DEPTH`].
pub fn from_body(body: &[u8]) -> Result<Value, PayloadError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Value::Null);
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(v) if depth(&v) > MAX_DEPTH => Err(PayloadError::TooDeep),
        Ok(v) => Ok(v),
        // Otherwise such a body would fall through to "text" and reach the pump as a string,
        // which is not what its sender meant.
        Err(e) if is_recursion_limit(&e) => Err(PayloadError::TooDeep),
        Err(_) => match std::str::from_utf8(body) {
            Ok(text) => Ok(Value::String(text.to_string())),
            Err(_) => Err(PayloadError::NotText),
        },
    }
}

/// serde_json says "recursion limit exceeded" in a syntax error and has no category for it.
fn is_recursion_limit(e: &serde_json::Error) -> bool {
    e.to_string().starts_with("recursion limit exceeded")
}

/// How many arrays and objects enclose the deepest value (a scalar is 0).
fn depth(v: &Value) -> usize {
    match v {
        Value::Array(items) => 1 + items.iter().map(depth).max().unwrap_or(0),
        Value::Object(fields) => 1 + fields.values().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn bodies_become_json_payloads() {
        assert_eq!(from_body(b"").unwrap(), json!(null));
        assert_eq!(from_body(b" \n\t").unwrap(), json!(null));
        assert_eq!(from_body(br#"{"a":1}"#).unwrap(), json!({"a": 1}));
        assert_eq!(from_body(b"plain words").unwrap(), json!("plain words"));
        assert_eq!(from_body(&[0xff, 0xfe]), Err(PayloadError::NotText));
    }

    fn nested(levels: usize) -> String {
        format!("{}{}", "[".repeat(levels), "]".repeat(levels))
    }

    /// A body nested 127 deep was accepted, but the trigger wrapping
    /// it was too deep for the pump to parse, so it was acknowledged 202 and never ran.
    #[test]
    fn a_payload_the_pump_could_not_parse_is_refused() {
        assert!(from_body(nested(MAX_DEPTH).as_bytes()).is_ok());
        for levels in [MAX_DEPTH + 1, 127, 128, 10_000] {
            assert_eq!(
                from_body(nested(levels).as_bytes()),
                Err(PayloadError::TooDeep),
                "{levels} levels"
            );
        }
    }

    #[test]
    fn every_accepted_payload_reaches_the_pump_unchanged() {
        let payload = from_body(nested(MAX_DEPTH).as_bytes()).unwrap();
        let trigger = pumphouse_pump::Trigger {
            id: "e".into(),
            kind: "webhook".into(),
            payload: payload.clone(),
            attempt: 1,
            seq: 1,
        };
        let wire = serde_json::to_vec(&trigger).unwrap();
        let received: pumphouse_pump::Trigger = serde_json::from_slice(&wire).unwrap();
        assert_eq!(received.payload, payload);
    }

    /// Found by `fuzz/fuzz_targets/webhook_payload.rs`: without serde_json's `float_roundtrip`
    /// this number came back from the store (and reached the pump) one ulp different.
    #[test]
    fn a_number_comes_back_from_the_store_unchanged() {
        let payload = from_body(b"9777777377777777777777777777777777777777777777775").unwrap();
        let stored = payload.to_string();
        assert_eq!(serde_json::from_str::<Value>(&stored).unwrap(), payload);
    }

    /// Pins the serde_json message [`is_recursion_limit`] reads, so an upgrade that changes it
    /// fails here rather than letting deep bodies through as text.
    #[test]
    fn serde_json_still_names_its_recursion_limit() {
        let e = serde_json::from_str::<Value>(&nested(200)).unwrap_err();
        assert!(is_recursion_limit(&e), "{e}");
    }
}

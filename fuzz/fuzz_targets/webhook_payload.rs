//! Fuzzes what the webhook and inject handlers do with a request body before it becomes a
//! trigger (`pumphouse::trigger_payload::from_body`), and checks that an accepted payload
//! survives both trips it takes: into the store as text and back (a re-send after a restart),
//! and inside a trigger to the pump, which parses it with the contract's own type.

#![no_main]

use libfuzzer_sys::fuzz_target;
use pumphouse::trigger_payload::{from_body, PayloadError};
use pumphouse_pump::Trigger;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    match from_body(data) {
        Ok(payload) => accepted(data, payload),
        Err(PayloadError::NotText) => {
            assert!(
                std::str::from_utf8(data).is_err(),
                "UTF-8 text refused: {data:?}"
            );
        }
        Err(PayloadError::TooDeep) => {}
    }
});

fn accepted(data: &[u8], payload: Value) {
    // What was meant is what is kept: JSON as sent, text as a string, nothing as null.
    if data.iter().all(u8::is_ascii_whitespace) {
        assert_eq!(payload, Value::Null);
    } else if let Ok(json) = serde_json::from_slice::<Value>(data) {
        assert_eq!(payload, json);
    } else {
        let text = std::str::from_utf8(data).expect("accepted bodies are UTF-8");
        assert_eq!(payload, Value::String(text.to_string()));
    }

    // The store keeps the payload as JSON text; the dispatcher reads it back to re-send.
    let stored = payload.to_string();
    let restored: Value = serde_json::from_str(&stored)
        .unwrap_or_else(|e| panic!("stored payload {stored:?} does not parse back: {e}"));
    assert_eq!(restored, payload, "through the store");

    // The pump receives it inside a trigger on its Redis channel.
    let trigger = Trigger {
        id: "00000000-0000-4000-8000-000000000000".into(),
        kind: "webhook".into(),
        payload,
        attempt: 1,
        seq: 1,
    };
    let wire = serde_json::to_vec(&trigger).expect("a trigger serialises");
    let received: Trigger = serde_json::from_slice(&wire).unwrap_or_else(|e| {
        panic!(
            "the pump cannot parse the trigger {:?}: {e}",
            String::from_utf8_lossy(&wire)
        )
    });
    assert_eq!(
        received.payload, trigger.payload,
        "through the pump's parser"
    );
}

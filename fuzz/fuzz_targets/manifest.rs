//! Fuzzes manifest parsing (`pumphouse::manifest`) with arbitrary text, as `POST /api/flows` and
//! `PUT /api/flows/{id}` receive it, and checks what an accepted manifest promises: every field
//! the supervisor reads later is usable, it re-serialises to a manifest that parses the same, and
//! the config the pump gets decodes back to what was written.

#![no_main]

use libfuzzer_sys::fuzz_target;
use pumphouse::manifest::{check_name, Manifest, MAX_DURATION, MAX_MANIFEST_BYTES};

fuzz_target!(|data: &[u8]| {
    // The API refuses a body that is not UTF-8 before it parses anything.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Manifest::parse(text) {
        Ok(m) => accepted(text, &m),
        Err(e) => {
            assert!(
                !e.message.is_empty(),
                "an error with no message for {text:?}"
            );
            if let Some(line) = e.line {
                assert!(line >= 1, "line numbers count from 1: {e:?}");
            }
        }
    }
});

fn accepted(text: &str, m: &Manifest) {
    assert!(text.len() <= MAX_MANIFEST_BYTES);
    check_name(&m.name).expect("an accepted manifest has a valid name");
    // The supervisor and the handlers read these with `?` or a default; each must be usable.
    m.resources().expect("resources of an accepted manifest");
    for d in [
        m.idle_timeout().expect("idleTimeout"),
        m.stop_grace().expect("stopGrace"),
        m.delivery_timeout().expect("deliveryTimeout"),
    ] {
        // Deadlines are milliseconds added to the clock in an i64.
        assert!(d <= MAX_DURATION, "{d:?} is over the maximum in {text:?}");
    }
    if let Some(r) = m.rate_limit {
        assert!(r.per_second.is_finite() && r.per_second > 0.0, "{r:?}");
        assert_ne!(r.burst, Some(0));
    }
    assert!(!m.config.is_null());

    // Re-serialised (as a client that edits and re-applies it would), it means the same.
    let again = serde_yaml::to_string(m).expect("an accepted manifest serialises");
    let reparsed = Manifest::parse(&again)
        .unwrap_or_else(|e| panic!("{text:?} re-serialised as {again:?} is refused: {e}"));
    assert_eq!(&reparsed, m, "{text:?} re-serialised as {again:?}");

    // ORGANISM_YAML: the pump decodes this text and must get the config that was written.
    let config = m.config_yaml();
    let decoded: serde_yaml::Value = serde_yaml::from_str(&config)
        .unwrap_or_else(|e| panic!("the pump cannot read config {config:?}: {e}"));
    assert_eq!(
        decoded, m.config,
        "config as handed to the pump: {config:?}"
    );
}

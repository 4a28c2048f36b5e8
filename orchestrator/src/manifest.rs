//! The flow manifest: the YAML a user applies, parsed and checked before anything is stored.
//!
//! ```yaml
//! name: hello                 # DNS label, unique per tenant
//! description: says hello
//! image: pumphouse/pump:dev   # optional; the orchestrator's --pump-image otherwise
//! env: {GREETING: hi}         # the pump's own variables
//! resources: {memory: 64Mi, cpu: 500m}
//! idleTimeout: 15m            # scale to zero after this long without work
//! keepAlive: false            # true: never scale to zero
//! stopGrace: 10s              # how long the pump may drain on SIGTERM
//! deliveryTimeout: 30s        # how long a trigger is re-sent before it is marked failed
//! config:                     # handed to the pump as ORGANISM_YAML
//!   steps:
//!     - respond: {hello: "{{payload.name}}"}
//! ```

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::backend::Resources;

/// Largest manifest accepted, in bytes.
pub const MAX_MANIFEST_BYTES: usize = 256 * 1024;

/// A parsed and checked manifest. The original YAML text is stored beside it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Manifest {
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub image: Option<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub resources: ResourceSpec,
    #[serde(default)]
    pub idle_timeout: Option<String>,
    #[serde(default)]
    pub keep_alive: bool,
    #[serde(default)]
    pub stop_grace: Option<String>,
    #[serde(default)]
    pub delivery_timeout: Option<String>,
    /// Triggers per second this flow accepts (webhooks and injections together), with a burst.
    #[serde(default)]
    pub rate_limit: Option<RateLimitSpec>,
    /// The pump's own config; pumphouse passes it on without reading it.
    pub config: serde_yaml::Value,
}

/// A token bucket: `burst` triggers at once, refilled at `perSecond`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RateLimitSpec {
    pub per_second: f64,
    #[serde(default)]
    pub burst: Option<u32>,
}

/// When a manifest sets no rate limit: generous, but a runaway caller cannot flood a flow.
pub const DEFAULT_RATE_LIMIT: RateLimitSpec = RateLimitSpec {
    per_second: 1000.0,
    burst: Some(2000),
};

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResourceSpec {
    /// Bytes, or a Kubernetes quantity: `64Mi`, `1Gi`, `500M`.
    #[serde(default)]
    pub memory: Option<serde_yaml::Value>,
    /// Cores, or millicores: `0.5`, `500m`, `2`.
    #[serde(default)]
    pub cpu: Option<serde_yaml::Value>,
}

/// What is wrong with a manifest, and where.
#[derive(Debug, Clone, PartialEq, thiserror::Error, Serialize)]
#[error("{message}")]
pub struct ManifestError {
    pub message: String,
    /// The field at fault, as a dotted path (`resources.memory`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub column: Option<usize>,
}

impl ManifestError {
    fn field(field: &str, message: impl Into<String>) -> Self {
        ManifestError {
            message: format!("{field}: {}", message.into()),
            field: Some(field.to_string()),
            line: None,
            column: None,
        }
    }
}

/// Defaults the manifest may leave out.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(15 * 60);
pub const DEFAULT_STOP_GRACE: Duration = Duration::from_secs(10);
pub const DEFAULT_DELIVERY_TIMEOUT: Duration = Duration::from_secs(30);

/// The longest duration a manifest may set. Durations become millisecond deadlines added to
/// the clock; an unbounded one (`99999999999999999h` saturates to `u64::MAX` ms) would wrap or
/// overflow there and turn "never" into "already past".
pub const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);

impl Manifest {
    /// Parses and checks a manifest.
    ///
    /// # Errors
    /// The first problem found, with the YAML line and column or the field's path.
    pub fn parse(text: &str) -> Result<Manifest, ManifestError> {
        if text.len() > MAX_MANIFEST_BYTES {
            return Err(ManifestError {
                message: format!(
                    "the manifest is {} bytes; the limit is {MAX_MANIFEST_BYTES}",
                    text.len()
                ),
                field: None,
                line: None,
                column: None,
            });
        }
        let manifest: Manifest = serde_yaml::from_str(text).map_err(|e| {
            let loc = e.location();
            ManifestError {
                message: format!("invalid manifest: {e}"),
                field: None,
                line: loc.as_ref().map(|l| l.line()),
                column: loc.as_ref().map(|l| l.column()),
            }
        })?;
        manifest.check()?;
        Ok(manifest)
    }

    fn check(&self) -> Result<(), ManifestError> {
        check_name(&self.name)?;
        for key in self.env.keys() {
            let valid = key
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !valid {
                return Err(ManifestError::field(
                    &format!("env.{key}"),
                    "is not a valid variable name; use letters, digits and _, not starting with a digit",
                ));
            }
            if pumphouse_pump::env::RESERVED.contains(&key.as_str()) {
                return Err(ManifestError::field(
                    &format!("env.{key}"),
                    "is set by pumphouse itself (see docs/pump-contract.md); choose another name",
                ));
            }
        }
        self.resources()?;
        self.idle_timeout()?;
        self.stop_grace()?;
        self.delivery_timeout()?;
        if let Some(r) = &self.rate_limit {
            if !(r.per_second > 0.0 && r.per_second.is_finite()) {
                return Err(ManifestError::field(
                    "rateLimit.perSecond",
                    "must be a number above 0, like 10 or 0.5",
                ));
            }
            if r.burst == Some(0) {
                return Err(ManifestError::field(
                    "rateLimit.burst",
                    "must be at least 1",
                ));
            }
        }
        if self.config.is_null() {
            return Err(ManifestError::field(
                "config",
                "is empty; it is the pump's own config, such as `steps:` for the reference pump",
            ));
        }
        // The config reaches the pump re-serialised, and some YAML the parser takes cannot be
        // written back (a tag on a mapping key in a sequence); found by fuzzing, it made the
        // start of such a flow panic.
        if let Err(e) = serde_yaml::to_string(&self.config) {
            return Err(ManifestError::field(
                "config",
                format!("cannot be handed to the pump as YAML ({e}); remove YAML tags (`!name`) from mapping keys"),
            ));
        }
        Ok(())
    }

    /// The config section as the YAML text handed to the pump.
    pub fn config_yaml(&self) -> String {
        serde_yaml::to_string(&self.config).expect("parse() refuses a config that cannot serialise")
    }

    pub fn resources(&self) -> Result<Resources, ManifestError> {
        let memory_bytes = match &self.resources.memory {
            None => None,
            Some(v) => {
                let bytes =
                    parse_memory(v).map_err(|m| ManifestError::field("resources.memory", m))?;
                if bytes < 6 * 1024 * 1024 {
                    return Err(ManifestError::field(
                        "resources.memory",
                        "must be at least 6Mi (the smallest limit Docker accepts)",
                    ));
                }
                Some(bytes)
            }
        };
        let cpu_millis = match &self.resources.cpu {
            None => None,
            Some(v) => Some(parse_cpu(v).map_err(|m| ManifestError::field("resources.cpu", m))?),
        };
        Ok(Resources {
            memory_bytes,
            cpu_millis,
        })
    }

    pub fn idle_timeout(&self) -> Result<Duration, ManifestError> {
        duration_field("idleTimeout", &self.idle_timeout, DEFAULT_IDLE_TIMEOUT)
    }

    pub fn stop_grace(&self) -> Result<Duration, ManifestError> {
        duration_field("stopGrace", &self.stop_grace, DEFAULT_STOP_GRACE)
    }

    pub fn delivery_timeout(&self) -> Result<Duration, ManifestError> {
        duration_field(
            "deliveryTimeout",
            &self.delivery_timeout,
            DEFAULT_DELIVERY_TIMEOUT,
        )
    }
}

fn duration_field(
    field: &str,
    value: &Option<String>,
    default: Duration,
) -> Result<Duration, ManifestError> {
    match value {
        None => Ok(default),
        Some(text) => {
            let d = pumphouse_pump::duration::parse(text)
                .map_err(|m| ManifestError::field(field, m))?;
            if d > MAX_DURATION {
                let hint = if field == "idleTimeout" {
                    "; for a flow that never scales to zero set keepAlive: true"
                } else {
                    ""
                };
                return Err(ManifestError::field(
                    field,
                    format!(
                        "`{text}` is longer than the {}h (365 days) allowed{hint}",
                        MAX_DURATION.as_secs() / 3600
                    ),
                ));
            }
            Ok(d)
        }
    }
}

/// Checks a flow name: a DNS label, so it can name containers and Kubernetes objects.
pub fn check_name(name: &str) -> Result<(), ManifestError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if !ok {
        return Err(ManifestError::field(
            "name",
            format!("`{name}` must be 1-63 characters of a-z, 0-9 and -, starting and ending with a letter or digit"),
        ));
    }
    if uuid::Uuid::parse_str(name).is_ok() {
        return Err(ManifestError::field(
            "name",
            "must not look like a UUID: flows are addressed by id or by name",
        ));
    }
    Ok(())
}

fn parse_memory(v: &serde_yaml::Value) -> Result<i64, String> {
    let text = match v {
        serde_yaml::Value::Number(n) => n.to_string(),
        serde_yaml::Value::String(s) => s.trim().to_string(),
        _ => return Err("must be a quantity such as 64Mi or 1Gi".into()),
    };
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (num, unit) = text.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("`{text}` is not a quantity such as 64Mi or 1Gi"))?;
    let mult: f64 = match unit {
        "" => 1.0,
        "Ki" => 1024.0,
        "Mi" => 1024.0 * 1024.0,
        "Gi" => 1024.0 * 1024.0 * 1024.0,
        "k" | "K" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        _ => {
            return Err(format!(
                "`{text}` has an unknown unit; use Ki, Mi, Gi, k, M or G"
            ))
        }
    };
    Ok((n * mult) as i64)
}

fn parse_cpu(v: &serde_yaml::Value) -> Result<i64, String> {
    let millis = match v {
        serde_yaml::Value::Number(n) => n.as_f64().map(|f| (f * 1000.0).round() as i64),
        serde_yaml::Value::String(s) => match s.trim().strip_suffix('m') {
            Some(m) => m.parse::<i64>().ok(),
            None => s
                .trim()
                .parse::<f64>()
                .ok()
                .map(|f| (f * 1000.0).round() as i64),
        },
        _ => None,
    };
    match millis {
        Some(m) if m >= 10 => Ok(m),
        Some(_) => Err("must be at least 10m (a hundredth of a core)".into()),
        None => Err("must be cores (0.5, 2) or millicores (500m)".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "name: hello\nresources: {memory: 64Mi, cpu: 500m}\nidleTimeout: 5m\nconfig:\n  steps:\n    - log: hi\n";

    #[test]
    fn a_good_manifest_parses_with_its_limits() {
        let m = Manifest::parse(GOOD).unwrap();
        assert_eq!(m.name, "hello");
        let r = m.resources().unwrap();
        assert_eq!(r.memory_bytes, Some(64 * 1024 * 1024));
        assert_eq!(r.cpu_millis, Some(500));
        assert_eq!(m.idle_timeout().unwrap(), Duration::from_secs(300));
        assert!(m.config_yaml().contains("steps"));
    }

    #[test]
    fn a_yaml_error_carries_line_and_column() {
        let err = Manifest::parse("name: hello\nconfig: {steps: [\n  - oops: [\n").unwrap_err();
        assert!(err.line.is_some(), "{err:?}");
        let err = Manifest::parse("name: hello\nimage: x\nbogus: 1\nconfig: {}\n").unwrap_err();
        assert!(err.message.contains("bogus"), "{err:?}");
        assert_eq!(err.line, Some(3));
    }

    #[test]
    fn bad_fields_are_named() {
        let cases = [
            ("name: Hello_World\nconfig: {a: 1}\n", "name"),
            (
                "name: a\nenv: {FLOW_ID: x}\nconfig: {a: 1}\n",
                "env.FLOW_ID",
            ),
            ("name: a\nenv: {1X: x}\nconfig: {a: 1}\n", "env.1X"),
            (
                "name: a\nresources: {memory: 1Mi}\nconfig: {a: 1}\n",
                "resources.memory",
            ),
            (
                "name: a\nresources: {memory: 5Zi}\nconfig: {a: 1}\n",
                "resources.memory",
            ),
            (
                "name: a\nresources: {cpu: lots}\nconfig: {a: 1}\n",
                "resources.cpu",
            ),
            (
                "name: a\nidleTimeout: soon\nconfig: {a: 1}\n",
                "idleTimeout",
            ),
            ("name: a\nconfig:\n", "config"),
            (
                "name: a\nidleTimeout: 18446744073709551615ms\nconfig: {a: 1}\n",
                "idleTimeout",
            ),
            ("name: a\nstopGrace: 8761h\nconfig: {a: 1}\n", "stopGrace"),
            (
                "name: a\ndeliveryTimeout: 9999999999999999h\nconfig: {a: 1}\n",
                "deliveryTimeout",
            ),
        ];
        for (text, field) in cases {
            let err = Manifest::parse(text).unwrap_err();
            assert_eq!(err.field.as_deref(), Some(field), "{text}: {err:?}");
            assert!(err.message.starts_with(field), "{err:?}");
        }
    }

    /// Found by `fuzz/fuzz_targets/manifest.rs`: accepted, then starting the flow panicked.
    #[test]
    fn a_config_that_cannot_be_handed_to_the_pump_is_refused() {
        let text = "name: deaf\nconfig:\n  steps:\n    - !tag nd: ok\n";
        let err = Manifest::parse(text).unwrap_err();
        assert_eq!(err.field.as_deref(), Some("config"), "{err:?}");
        assert!(err.message.contains("YAML tags"), "{err:?}");
    }

    #[test]
    fn a_name_that_looks_like_a_uuid_is_refused() {
        assert!(check_name("0e8f4c4e-1c7a-4e4b-9d55-1f2a3b4c5d6e").is_err());
    }
}

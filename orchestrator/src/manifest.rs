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
    #[serde(default, deserialize_with = "unique_keys")]
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

/// The slowest rate a manifest may set: one trigger every 1000 s. Below it the wait a refused
/// caller is told (`Retry-After`) grows past any use, and at `1e-20` it overflowed.
pub const MIN_PER_SECOND: f64 = 0.001;
/// The fastest rate a manifest may set; far above what one replica records.
pub const MAX_PER_SECOND: f64 = 1e6;
/// The largest burst a manifest may set.
pub const MAX_BURST: u32 = 1_000_000;

/// The largest memory limit a manifest may set: 16Ti, beyond any one host.
pub const MAX_MEMORY_BYTES: i64 = 16 << 40;
/// The most CPU a manifest may ask for: 1024 cores, beyond any one host or node.
pub const MAX_CPU_MILLIS: i64 = 1024 * 1000;

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
            let message = e.to_string();
            // `env: duplicate key `KEY` at line 2 column 3`, from [`unique_keys`].
            let duplicate = message
                .strip_prefix("env: ")
                .and_then(|m| m.strip_prefix(DUPLICATE_KEY))
                .and_then(|m| m.strip_prefix('`'))
                .and_then(|m| m.rfind('`').map(|end| &m[..end]));
            ManifestError {
                message: match duplicate {
                    Some(key) => {
                        format!("env.{key}: is given twice; keep one of the two entries")
                    }
                    None => format!("invalid manifest: {message}"),
                },
                field: duplicate.map(|key| format!("env.{key}")),
                line: loc.as_ref().map(|l| l.line()),
                column: loc.as_ref().map(|l| l.column()),
            }
        })?;
        manifest.check()?;
        Ok(manifest)
    }

    fn check(&self) -> Result<(), ManifestError> {
        check_name(&self.name)?;
        for (key, value) in &self.env {
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
            if let Some(why) = loader_variable(key, None) {
                return Err(ManifestError::field(&format!("env.{key}"), why));
            }
            if value.contains('\0') {
                return Err(ManifestError::field(
                    &format!("env.{key}"),
                    "holds a NUL byte, which an environment variable cannot carry; remove it (base64-encode binary values)",
                ));
            }
        }
        if let Some(image) = &self.image {
            check_image(image).map_err(|m| ManifestError::field("image", m))?;
        }
        self.resources()?;
        self.idle_timeout()?;
        self.stop_grace()?;
        self.delivery_timeout()?;
        if let Some(r) = &self.rate_limit {
            if !(MIN_PER_SECOND..=MAX_PER_SECOND).contains(&r.per_second) {
                return Err(ManifestError::field(
                    "rateLimit.perSecond",
                    format!(
                        "`{}` is outside the allowed range; use a number from {MIN_PER_SECOND} (one trigger every 1000 s) to {MAX_PER_SECOND}, like 10 or 0.5",
                        r.per_second
                    ),
                ));
            }
            if let Some(burst) = r.burst {
                if !(1..=MAX_BURST).contains(&burst) {
                    return Err(ManifestError::field(
                        "rateLimit.burst",
                        format!("`{burst}` is outside the allowed range; use a whole number from 1 to {MAX_BURST}"),
                    ));
                }
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

    /// What [`Manifest::parse`] cannot check alone: rules of the backend that will run the
    /// pump (`backend` is [`crate::backend::Backend::name`]).
    ///
    /// # Errors
    /// The first `env` entry that backend must not be given, named.
    pub fn check_for_backend(&self, backend: &str) -> Result<(), ManifestError> {
        for key in self.env.keys() {
            if let Some(why) = loader_variable(key, Some(backend)) {
                return Err(ManifestError::field(&format!("env.{key}"), why));
            }
        }
        Ok(())
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
                if bytes > MAX_MEMORY_BYTES {
                    return Err(ManifestError::field(
                        "resources.memory",
                        "must be at most 16Ti (16384Gi); no host has more",
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

/// Why the pump must not be given the variable `name` on `backend` (any backend when `None`),
/// if it must not: one that changes how the pump program is loaded or found.
pub fn loader_variable(name: &str, backend: Option<&str>) -> Option<String> {
    if name.starts_with("LD_") {
        return Some(
            "changes how the pump program is loaded (the dynamic linker reads LD_ variables); pumphouse refuses them on every backend, remove it".into(),
        );
    }
    if name == "PATH" && backend == Some("process") {
        return Some(
            "decides which program runs, and the process backend runs pumps as the orchestrator's own user; remove it (the pump gets the orchestrator's PATH), or run pumps on Docker or Kubernetes".into(),
        );
    }
    None
}

/// Deserializes a mapping, refusing a key given twice (a plain map keeps the last silently).
fn unique_keys<'de, D>(deserializer: D) -> Result<BTreeMap<String, String>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    struct Unique;
    impl<'de> serde::de::Visitor<'de> for Unique {
        type Value = BTreeMap<String, String>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a mapping of variable names to values")
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(
            self,
            mut map: A,
        ) -> Result<Self::Value, A::Error> {
            let mut out = BTreeMap::new();
            while let Some((key, value)) = map.next_entry::<String, String>()? {
                if out.contains_key(&key) {
                    return Err(serde::de::Error::custom(format!("{DUPLICATE_KEY}`{key}`")));
                }
                out.insert(key, value);
            }
            Ok(out)
        }
    }
    deserializer.deserialize_map(Unique)
}

/// How [`unique_keys`] begins its message, so [`Manifest::parse`] can name the field.
const DUPLICATE_KEY: &str = "duplicate key ";

/// Checks an image reference as Docker and Kubernetes read it:
/// `[host[:port]/]path[:tag][@algorithm:hex]`, the path lowercase.
pub fn check_image(image: &str) -> Result<(), String> {
    let bad = |why: &str| {
        Err(format!(
            "`{}` is not an image reference ({why}); give one like pumphouse/pump:dev or registry.example.com:5000/team/pump@sha256:<64 hex digits>",
            image.escape_debug()
        ))
    };
    if image.is_empty() {
        return Err("is empty; give an image reference like pumphouse/pump:dev, or leave image out for the orchestrator's --pump-image".into());
    }
    if image.len() > 512 {
        return bad("longer than 512 characters");
    }
    if let Some(c) = image.chars().find(|c| c.is_whitespace() || c.is_control()) {
        return bad(&format!("it holds {:?}", c));
    }
    let (rest, digest) = match image.split_once('@') {
        Some((rest, digest)) => (rest, Some(digest)),
        None => (image, None),
    };
    if let Some(digest) = digest {
        let Some((algorithm, hex)) = digest.split_once(':') else {
            return bad("a digest is algorithm:hex");
        };
        let algorithm_ok = algorithm.split(['+', '.', '_', '-']).all(|part| {
            part.starts_with(|c: char| c.is_ascii_alphabetic())
                && part.chars().all(|c| c.is_ascii_alphanumeric())
        });
        if !algorithm_ok || hex.len() < 32 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
            return bad("a digest is algorithm:hex, such as sha256: and 64 hex digits");
        }
    }
    // A tag is after the last `:` that follows the last `/` (a `:` before it is a port).
    let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
    let (name, tag) = match rest[last_slash..].rfind(':') {
        Some(i) => (&rest[..last_slash + i], Some(&rest[last_slash + i + 1..])),
        None => (rest, None),
    };
    if let Some(tag) = tag {
        let ok = tag.len() <= 128
            && tag.starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_')
            && tag
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
        if !ok {
            return bad("a tag is up to 128 letters, digits, _, . and -, not starting with . or -");
        }
    }
    if name.len() > 255 {
        return bad("the name is longer than 255 characters");
    }
    let mut parts: Vec<&str> = name.split('/').collect();
    // The first part names a registry when it looks like a host: a dot, a port or localhost.
    if parts.len() > 1
        && (parts[0].contains(['.', ':'])
            || parts[0] == "localhost"
            || parts[0].chars().any(|c| c.is_ascii_uppercase()))
    {
        let host = parts.remove(0);
        // The port follows the last `:`, or for an IPv6 address the first `:` after its `]`.
        let colon = match host.rfind(']') {
            Some(end) => host[end..].find(':').map(|i| end + i),
            None => host.rfind(':'),
        };
        let (host, port) = match colon {
            Some(i) => (&host[..i], Some(&host[i + 1..])),
            None => (host, None),
        };
        let host_ok = if let Some(v6) = host.strip_prefix('[') {
            v6.strip_suffix(']').is_some_and(|a| {
                !a.is_empty() && a.chars().all(|c| c.is_ascii_hexdigit() || c == ':')
            })
        } else {
            host.split('.').all(|label| {
                !label.is_empty()
                    && !label.starts_with('-')
                    && !label.ends_with('-')
                    && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            })
        };
        let port_ok = port
            .is_none_or(|p| !p.is_empty() && p.len() <= 5 && p.chars().all(|c| c.is_ascii_digit()));
        if !host_ok || !port_ok {
            return bad("the registry is a host name with an optional :port");
        }
    }
    // Each path part: lowercase letters and digits, joined by `.`, `_`, `__` or dashes.
    let part_ok = |part: &str| {
        let b = part.as_bytes();
        let alnum = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit();
        let mut i = 0;
        if b.is_empty() || !alnum(b[0]) || !alnum(b[b.len() - 1]) {
            return false;
        }
        while i < b.len() {
            if alnum(b[i]) {
                i += 1;
                continue;
            }
            let sep = if b[i] == b'-' {
                b[i..].iter().take_while(|&&c| c == b'-').count()
            } else if b[i..].starts_with(b"__") {
                2
            } else if matches!(b[i], b'.' | b'_') {
                1
            } else {
                return false;
            };
            i += sep;
            if i >= b.len() || !alnum(b[i]) {
                return false;
            }
        }
        true
    };
    if !parts.iter().all(|p| part_ok(p)) {
        return bad("a repository path is lowercase letters and digits joined by /, ., _, __ or -");
    }
    Ok(())
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
    let bytes = n * mult;
    // Checked before the conversion, which saturates: `99999999999999999999Gi` became
    // i64::MAX, which Docker took as no limit at all.
    if !bytes.is_finite() || bytes > MAX_MEMORY_BYTES as f64 {
        return Err(format!("`{text}` is more than the 16Ti (16384Gi) allowed"));
    }
    Ok(bytes as i64)
}

fn parse_cpu(v: &serde_yaml::Value) -> Result<i64, String> {
    let millis = match v {
        serde_yaml::Value::Number(n) => n.as_f64().map(|f| f * 1000.0),
        serde_yaml::Value::String(s) => match s.trim().strip_suffix('m') {
            Some(m) => m.parse::<f64>().ok(),
            None => s.trim().parse::<f64>().ok().map(|f| f * 1000.0),
        },
        _ => None,
    };
    match millis {
        Some(m) if !m.is_finite() => {
            Err("must be a finite number of cores (0.5, 2) or millicores (500m)".into())
        }
        Some(m) if m > MAX_CPU_MILLIS as f64 => {
            Err("must be at most 1024 cores (1024000m); no host or node has more".into())
        }
        Some(m) if m >= 10.0 => Ok(m.round() as i64),
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

    /// Parses `name: a` with `extra` and a config; the field the error names, or `None`.
    fn refused_field(extra: &str) -> Option<String> {
        let text = format!("name: a\n{extra}\nconfig: {{a: 1}}\n");
        match Manifest::parse(&text) {
            Ok(_) => None,
            Err(err) => {
                let field = err
                    .field
                    .clone()
                    .unwrap_or_else(|| panic!("no field named: {err:?}"));
                assert!(err.message.starts_with(&field), "{err:?}");
                Some(field)
            }
        }
    }

    /// `rateLimit: {perSecond: 1e-20, burst: 1}` was accepted, and the second trigger then
    /// panicked in the rate limiter while it held the lock every flow's triggers share.
    #[test]
    fn rate_limits_outside_the_allowed_range_are_refused_with_the_range() {
        for per_second in ["1e-20", "0", "-1", "0.0009", ".inf", ".nan", "1e7", "1e300"] {
            let text = format!(
                "name: a\nrateLimit: {{perSecond: {per_second}, burst: 1}}\nconfig: {{a: 1}}\n"
            );
            let err = Manifest::parse(&text).unwrap_err();
            assert_eq!(
                err.field.as_deref(),
                Some("rateLimit.perSecond"),
                "{per_second}: {err:?}"
            );
            assert!(
                err.message.contains("0.001") && err.message.contains("1000000"),
                "the message states the range: {err:?}"
            );
        }
        for burst in ["0", "1000001"] {
            let extra = format!("rateLimit: {{perSecond: 1, burst: {burst}}}");
            assert_eq!(
                refused_field(&extra).as_deref(),
                Some("rateLimit.burst"),
                "{burst}"
            );
        }
        for ok in [
            "{perSecond: 0.001, burst: 1}",
            "{perSecond: 1e6, burst: 1000000}",
            "{perSecond: 5}",
        ] {
            assert_eq!(refused_field(&format!("rateLimit: {ok}")), None, "{ok}");
        }
    }

    #[test]
    fn cpu_and_memory_beyond_any_host_are_refused() {
        for cpu in [
            ".inf",
            "-.inf",
            ".nan",
            "1e9",
            "'1e9'",
            "'infm'",
            "'NaN'",
            "1025",
            "'1024001m'",
        ] {
            let extra = format!("resources: {{cpu: {cpu}}}");
            assert_eq!(
                refused_field(&extra).as_deref(),
                Some("resources.cpu"),
                "{cpu}"
            );
        }
        for memory in [
            "99999999999999999999Gi",
            "16385Gi",
            "'99999999999999999999999'",
        ] {
            let extra = format!("resources: {{memory: {memory}}}");
            assert_eq!(
                refused_field(&extra).as_deref(),
                Some("resources.memory"),
                "{memory}"
            );
        }
        let m =
            Manifest::parse("name: a\nresources: {cpu: 1024, memory: 16384Gi}\nconfig: {a: 1}\n")
                .unwrap();
        let r = m.resources().unwrap();
        assert_eq!(r.cpu_millis, Some(1_024_000));
        assert_eq!(r.memory_bytes, Some(MAX_MEMORY_BYTES));
    }

    #[test]
    fn an_image_must_be_an_image_reference() {
        for bad in [
            "''",
            "' pumphouse/pump'",
            "\"pump\\nimage\"",
            "'x;rm -rf /'",
            "--privileged",
            "'-x'",
            "Pump",
            "a//b",
            "'a:'",
            "a:-tag",
            "'a@sha256:xyz'",
            "a/b_",
            "a..b",
            "'host:port/a'",
            "\"a\\0\"",
        ] {
            assert_eq!(
                refused_field(&format!("image: {bad}")).as_deref(),
                Some("image"),
                "{bad}"
            );
        }
        let digest = "0".repeat(64);
        for good in [
            "pumphouse/pump:dev".to_string(),
            "redis".into(),
            "docker.io/library/redis:7.2".into(),
            "localhost:5000/a/b:1.0".into(),
            "'[::1]:5000/pump:dev'".into(),
            "a__b/c-d--e.f:v1_2".into(),
            format!("registry.example.com/team/pump@sha256:{digest}"),
            format!("pump:dev@sha256:{digest}"),
        ] {
            assert_eq!(refused_field(&format!("image: {good}")), None, "{good}");
        }
    }

    #[test]
    fn env_with_nul_duplicates_or_loader_variables_is_refused() {
        assert_eq!(
            refused_field("env: {A: \"x\\0y\"}").as_deref(),
            Some("env.A")
        );
        assert_eq!(
            refused_field("env: {LD_PRELOAD: /tmp/x.so}").as_deref(),
            Some("env.LD_PRELOAD")
        );
        assert_eq!(
            refused_field("env: {LD_LIBRARY_PATH: /tmp}").as_deref(),
            Some("env.LD_LIBRARY_PATH")
        );

        // YAML would keep the last of the two silently.
        let err =
            Manifest::parse("name: a\nenv:\n  GREETING: hi\n  GREETING: bye\nconfig: {a: 1}\n")
                .unwrap_err();
        assert_eq!(err.field.as_deref(), Some("env.GREETING"), "{err:?}");
        assert!(
            err.message.starts_with("env.GREETING: is given twice"),
            "{err:?}"
        );
        assert_eq!(err.line, Some(3), "where env begins: {err:?}");

        // PATH decides what runs only where pumps run as the orchestrator's user.
        let m = Manifest::parse("name: a\nenv: {PATH: /tmp}\nconfig: {a: 1}\n").unwrap();
        let err = m.check_for_backend("process").unwrap_err();
        assert_eq!(err.field.as_deref(), Some("env.PATH"), "{err:?}");
        assert!(m.check_for_backend("docker").is_ok());
        assert!(Manifest::parse(GOOD)
            .unwrap()
            .check_for_backend("process")
            .is_ok());
    }

    #[test]
    fn a_name_that_looks_like_a_uuid_is_refused() {
        assert!(check_name("0e8f4c4e-1c7a-4e4b-9d55-1f2a3b4c5d6e").is_err());
    }
}

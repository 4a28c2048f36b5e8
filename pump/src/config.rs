//! The reference pump's config: the step list it runs for every trigger.
//!
//! The orchestrator hands the flow's `config` section over as base64 YAML in `ORGANISM_YAML`;
//! this module decodes and validates it so a config the pump cannot use stops it at start-up with
//! a message naming the problem, never at the first trigger.

use std::time::Duration;

use base64::Engine as _;
use serde::Deserialize;

/// The whole config.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Config {
    /// Run for every trigger, in order; the first `fail` or error ends the run.
    /// Written as one-key maps (`- log: hi`), not YAML tags.
    #[serde(with = "serde_yaml::with::singleton_map_recursive")]
    pub steps: Vec<Step>,
    /// Wait this long before subscribing (and so before reporting ready). Lets tests and operators
    /// see how the supervisor treats a slow-starting pump.
    #[serde(default, deserialize_with = "de_opt_duration")]
    pub start_delay: Option<Duration>,
    /// After SIGTERM, stop taking triggers and wait this long before draining and exiting:
    /// a pump slow to stop, for seeing how the supervisor treats a slow scale-down or stop.
    #[serde(default, deserialize_with = "de_opt_duration")]
    pub stop_delay: Option<Duration>,
}

/// One step. Strings may hold `{{payload}}`, `{{payload.a.b}}`, `{{vars.name}}` or `{{trigger.id}}`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum Step {
    /// Print a line to the pump's log.
    Log(String),
    /// Store a JSON value under `TENANT_PREFIX` + `key`.
    Set {
        key: String,
        value: serde_json::Value,
    },
    /// Append a JSON value to the list at `TENANT_PREFIX` + `key` (RPUSH).
    Append {
        key: String,
        value: serde_json::Value,
    },
    /// Read `TENANT_PREFIX` + `key` into `vars.<as>` (`null` if absent).
    Get {
        key: String,
        #[serde(rename = "as")]
        into: String,
    },
    /// Pause.
    Sleep(#[serde(deserialize_with = "de_duration")] Duration),
    /// Call a URL; the answer goes into `vars.<as>` as `{status, body}`.
    Http(HttpStep),
    /// The execution's output, returned to a waiting caller and stored with the execution.
    Respond(serde_json::Value),
    /// End the execution as failed with this message.
    Fail(String),
    /// End the whole pump process with this exit code: a crash on purpose, for exercising
    /// the supervisor's restarts.
    Exit(i32),
    /// Take and touch this much memory (`64Mi`, bytes without a unit) and hold it until the run
    /// ends: for exercising memory limits.
    Allocate(#[serde(deserialize_with = "de_bytes")] usize),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpStep {
    pub url: String,
    #[serde(default = "default_method")]
    pub method: String,
    #[serde(default)]
    pub body: Option<serde_json::Value>,
    #[serde(default, rename = "as")]
    pub into: Option<String>,
}

fn default_method() -> String {
    "GET".into()
}

fn de_duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(d)?;
    pumphouse_pump::duration::parse(&text).map_err(serde::de::Error::custom)
}

fn de_bytes<'de, D: serde::Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    let text = String::deserialize(d)?;
    let t = text.trim();
    let (num, mult) = match t {
        _ if t.ends_with("Ki") => (&t[..t.len() - 2], 1usize << 10),
        _ if t.ends_with("Mi") => (&t[..t.len() - 2], 1 << 20),
        _ if t.ends_with("Gi") => (&t[..t.len() - 2], 1 << 30),
        _ => (t, 1),
    };
    num.parse::<usize>()
        .map(|n| n.saturating_mul(mult))
        .map_err(|_| {
            serde::de::Error::custom(format!(
                "`{text}` is not a size; write 64Mi, 512Ki or bytes"
            ))
        })
}

fn de_opt_duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    de_duration(d).map(Some)
}

impl Config {
    /// Decodes `ORGANISM_YAML` (base64 of YAML) and checks it.
    ///
    /// # Errors
    /// A message naming what is wrong: bad base64, the YAML line and column, or the step.
    pub fn from_base64(encoded: &str) -> Result<Config, String> {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(encoded.trim())
            .map_err(|e| format!("ORGANISM_YAML is not valid base64: {e}"))?;
        let text =
            String::from_utf8(bytes).map_err(|_| "ORGANISM_YAML is not UTF-8 text".to_string())?;
        Self::from_yaml(&text)
    }

    /// Parses and checks the YAML text of a config.
    pub fn from_yaml(text: &str) -> Result<Config, String> {
        let config: Config = serde_yaml::from_str(text).map_err(|e| format!("config: {e}"))?;
        if config.steps.is_empty() {
            return Err(
                "config: `steps` is empty; give at least one step, like `- log: hello`".into(),
            );
        }
        for (i, step) in config.steps.iter().enumerate() {
            if let Step::Http(h) = step {
                if !(h.url.starts_with("http://") || h.url.starts_with("https://")) {
                    return Err(format!(
                        "config: steps[{i}].http.url `{}` must start with http:// or https://",
                        h.url
                    ));
                }
                if reqwest::Method::from_bytes(h.method.as_bytes()).is_err() {
                    return Err(format!(
                        "config: steps[{i}].http.method `{}` is not an HTTP method",
                        h.method
                    ));
                }
            }
        }
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_step_list_parses() {
        let c = Config::from_yaml(
            "steps:\n  - log: hi {{payload.name}}\n  - set: {key: k, value: 1}\n  - get: {key: k, as: v}\n  - sleep: 10ms\n  - http: {url: 'http://127.0.0.1:1/x', as: r}\n  - respond: {ok: true}\n  - fail: boom\nstartDelay: 1s\nstopDelay: 2s\n",
        )
        .unwrap();
        assert_eq!(c.steps.len(), 7);
        assert_eq!(c.start_delay, Some(Duration::from_secs(1)));
        assert_eq!(c.stop_delay, Some(Duration::from_secs(2)));
    }

    #[test]
    fn an_unknown_step_is_named_with_its_line() {
        let err = Config::from_yaml("steps:\n  - log: a\n  - explode: now\n").unwrap_err();
        assert!(err.contains("explode"), "{err}");
        assert!(err.contains("line 3"), "{err}");
    }

    #[test]
    fn an_empty_step_list_and_a_bad_url_are_refused() {
        assert!(Config::from_yaml("steps: []\n")
            .unwrap_err()
            .contains("empty"));
        let err = Config::from_yaml("steps:\n  - http: {url: ftp://x}\n").unwrap_err();
        assert!(err.contains("steps[0].http.url"), "{err}");
    }

    #[test]
    fn bad_base64_is_reported_as_such() {
        assert!(Config::from_base64("%%%").unwrap_err().contains("base64"));
    }
}

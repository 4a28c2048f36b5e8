//! Runs a config's step list for one trigger.

use redis::AsyncCommands as _;
use serde_json::{json, Map, Value};

use crate::config::{Config, Step};

/// What the steps need from the outside world.
pub struct StepContext {
    pub redis: crate::link::Link,
    pub prefix: String,
    pub http: reqwest::Client,
}

/// Runs every step for one trigger and returns the `respond` output, or the error that ended it.
pub async fn run(
    config: &Config,
    ctx: &StepContext,
    trigger_id: &str,
    payload: &Value,
) -> Result<Value, String> {
    let mut vars = Map::new();
    let mut output = Value::Null;
    let mut held: Vec<Vec<u8>> = Vec::new();
    let redis = ctx.redis.clone();
    for (i, step) in config.steps.iter().enumerate() {
        let scope = json!({"payload": payload, "vars": vars, "trigger": {"id": trigger_id}});
        match step {
            Step::Log(text) => println!("{}", render_str(text, &scope)),
            Step::Set { key, value } | Step::Append { key, value } => {
                let append = matches!(step, Step::Append { .. });
                let value = render(value, &scope).to_string();
                let key = memory_key(&ctx.prefix, &render_str(key, &scope))
                    .map_err(|e| format!("steps[{i}]: {e}"))?;
                retrying(|| {
                    let mut redis = redis.clone();
                    let (key, value) = (key.clone(), value.clone());
                    async move {
                        if append {
                            redis.rpush::<_, _, ()>(key, value).await
                        } else {
                            redis.set::<_, _, ()>(key, value).await
                        }
                    }
                })
                .await
                .map_err(|e| {
                    let name = if append { "append" } else { "set" };
                    format!("steps[{i}] {name} `{key}`: {e}")
                })?;
            }
            Step::Get { key, into } => {
                let key = memory_key(&ctx.prefix, &render_str(key, &scope))
                    .map_err(|e| format!("steps[{i}]: {e}"))?;
                let raw: Option<String> = retrying(|| {
                    let mut redis = redis.clone();
                    let key = key.clone();
                    async move { redis.get(key).await }
                })
                .await
                .map_err(|e| format!("steps[{i}] get `{key}`: {e}"))?;
                let value = raw
                    .map(|r| serde_json::from_str(&r).unwrap_or(Value::String(r)))
                    .unwrap_or(Value::Null);
                vars.insert(into.clone(), value);
            }
            Step::Sleep(d) => tokio::time::sleep(*d).await,
            Step::Http(h) => {
                let url = render_str(&h.url, &scope);
                // The method was checked when the config was loaded.
                let method = reqwest::Method::from_bytes(h.method.as_bytes())
                    .map_err(|e| format!("steps[{i}] http method: {e}"))?;
                let mut req = ctx.http.request(method, &url);
                if let Some(body) = &h.body {
                    req = req.json(&render(body, &scope));
                }
                let resp = req
                    .send()
                    .await
                    .map_err(|e| format!("steps[{i}] http {url}: {e}"))?;
                let status = resp.status().as_u16();
                let text = resp
                    .text()
                    .await
                    .map_err(|e| format!("steps[{i}] http {url}: reading the body: {e}"))?;
                let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
                if let Some(into) = &h.into {
                    vars.insert(into.clone(), json!({"status": status, "body": body}));
                }
            }
            Step::Respond(value) => output = render(value, &scope),
            Step::Fail(message) => return Err(render_str(message, &scope)),
            Step::Exit(code) => {
                eprintln!("pump: exiting with code {code}, as steps[{i}] says");
                std::process::exit(*code);
            }
            Step::Allocate(bytes) => {
                // Every page written, so the memory is really taken, not just reserved.
                held.push(vec![1u8; *bytes]);
            }
        }
    }
    drop(held);
    Ok(output)
}

/// Runs a Redis command again while the connection is down (the connection manager
/// reconnects on the next call), for about three seconds: a Redis restart delays a step rather
/// than failing it. A retried `append` may land twice; delivery is at least once anyway.
/// A flow memory key: the flow's prefix and the step's key. Names starting with `_` belong to
/// pumphouse (the events stream is `_events`), so a step cannot overwrite them.
fn memory_key(prefix: &str, key: &str) -> Result<String, String> {
    if key.starts_with('_') {
        return Err(format!(
            "flow memory key `{key}` starts with `_`, which pumphouse keeps for itself; rename it"
        ));
    }
    Ok(format!("{prefix}{key}"))
}

async fn retrying<T, F, Fut>(mut command: F) -> redis::RedisResult<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = redis::RedisResult<T>>,
{
    let mut backoff = std::time::Duration::from_millis(100);
    for _ in 0..5 {
        match command().await {
            Err(e) if crate::link::is_broken(&e) => {
                tokio::time::sleep(backoff).await;
                backoff *= 2;
            }
            done => return done,
        }
    }
    command().await
}

/// Renders templates inside a JSON value. A string that is exactly one `{{path}}` becomes the
/// value at that path (so `{{payload}}` keeps its JSON shape); other strings are interpolated.
fn render(value: &Value, scope: &Value) -> Value {
    match value {
        Value::String(s) => {
            let t = s.trim();
            if t.starts_with("{{") && t.ends_with("}}") && t[2..].find("{{").is_none() {
                lookup(scope, t[2..t.len() - 2].trim()).clone()
            } else {
                Value::String(render_str(s, scope))
            }
        }
        Value::Array(items) => Value::Array(items.iter().map(|v| render(v, scope)).collect()),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| (k.clone(), render(v, scope)))
                .collect(),
        ),
        other => other.clone(),
    }
}

fn render_str(text: &str, scope: &Value) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("{{") {
        let Some(len) = rest[start..].find("}}") else {
            break;
        };
        out.push_str(&rest[..start]);
        let path = rest[start + 2..start + len].trim();
        match lookup(scope, path) {
            Value::String(s) => out.push_str(s),
            Value::Null => {}
            other => out.push_str(&other.to_string()),
        }
        rest = &rest[start + len + 2..];
    }
    out.push_str(rest);
    out
}

fn lookup<'a>(scope: &'a Value, path: &str) -> &'a Value {
    path.split('.')
        .try_fold(scope, |v, part| v.get(part))
        .unwrap_or(&Value::Null)
}

#[cfg(test)]
mod tests {
    #[test]
    fn memory_keys_sit_under_the_prefix_and_underscore_names_are_refused() {
        assert_eq!(
            super::memory_key("tenant:t:flow:f:", "count").unwrap(),
            "tenant:t:flow:f:count"
        );
        let err = super::memory_key("tenant:t:flow:f:", "_events").unwrap_err();
        assert!(err.contains("keeps for itself"), "{err}");
    }

    use super::*;

    #[test]
    fn a_lone_placeholder_keeps_json_shape_and_mixed_text_interpolates() {
        let scope =
            json!({"payload": {"n": 3, "name": "ada"}, "vars": {}, "trigger": {"id": "t1"}});
        assert_eq!(
            render(&json!("{{payload}}"), &scope),
            json!({"n": 3, "name": "ada"})
        );
        assert_eq!(
            render(
                &json!({"msg": "hi {{payload.name}} #{{payload.n}} ({{trigger.id}})"}),
                &scope
            ),
            json!({"msg": "hi ada #3 (t1)"})
        );
        assert_eq!(
            render_str("missing: [{{vars.nope}}]", &scope),
            "missing: []"
        );
    }
}

//! A small client for the pumphouse API, used by the CLI (and by tests that want typed calls).

use serde_json::Value;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach pumphouse at {api}: {source}; is `pumphouse serve` running? (set --api or PUMPHOUSE_API)")]
    Unreachable {
        api: String,
        #[source]
        source: reqwest::Error,
    },
    /// The server answered with an error; `message` is its own explanation.
    #[error("{message} (HTTP {status})")]
    Api { status: u16, message: String },
}

pub struct Client {
    api: String,
    token: Option<String>,
    http: reqwest::Client,
}

impl Client {
    pub fn new(api: &str, token: Option<String>) -> Client {
        Client {
            api: api.trim_end_matches('/').to_string(),
            token,
            http: reqwest::Client::new(),
        }
    }

    /// Sends a request; `body` is sent as-is with `content_type`. Returns the JSON answer
    /// (`null` for an empty one).
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<(Vec<u8>, &str)>,
    ) -> Result<Value, ClientError> {
        let mut req = self.http.request(method, format!("{}{path}", self.api));
        if let Some(token) = &self.token {
            req = req.bearer_auth(token);
        }
        if let Some((bytes, content_type)) = body {
            req = req
                .header(reqwest::header::CONTENT_TYPE, content_type)
                .body(bytes);
        }
        let unreachable = |source| ClientError::Unreachable {
            api: self.api.clone(),
            source,
        };
        let resp = req.send().await.map_err(unreachable)?;
        let status = resp.status();
        let text = resp.text().await.map_err(unreachable)?;
        let value: Value = if text.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        if status.is_success() {
            Ok(value)
        } else {
            let message = value
                .get("error")
                .and_then(Value::as_str)
                .map(str::to_string)
                .unwrap_or_else(|| value.to_string());
            Err(ClientError::Api {
                status: status.as_u16(),
                message,
            })
        }
    }

    /// Reads a server-sent event stream, calling `on_data` with each event's data, until the
    /// server ends it.
    pub async fn follow(
        &self,
        path: &str,
        mut on_data: impl FnMut(&str),
    ) -> Result<(), ClientError> {
        let mut req = self.http.get(format!("{}{path}", self.api));
        if let Some(token) = &self.token {
            req = req.bearer_auth(token);
        }
        let unreachable = |source| ClientError::Unreachable {
            api: self.api.clone(),
            source,
        };
        let mut resp = req.send().await.map_err(unreachable)?;
        if !resp.status().is_success() {
            let status = resp.status().as_u16();
            let text = resp.text().await.map_err(unreachable)?;
            let message = serde_json::from_str::<Value>(&text)
                .ok()
                .and_then(|v| v["error"].as_str().map(str::to_string))
                .unwrap_or(text);
            return Err(ClientError::Api { status, message });
        }
        let mut pending = String::new();
        while let Some(chunk) = resp.chunk().await.map_err(unreachable)? {
            pending.push_str(&String::from_utf8_lossy(&chunk));
            while let Some(end) = pending.find('\n') {
                let line = pending[..end].trim_end_matches('\r').to_string();
                pending.drain(..=end);
                if let Some(data) = line.strip_prefix("data:") {
                    on_data(data.strip_prefix(' ').unwrap_or(data));
                }
            }
        }
        Ok(())
    }

    pub async fn get(&self, path: &str) -> Result<Value, ClientError> {
        self.call(reqwest::Method::GET, path, None).await
    }

    pub async fn post(&self, path: &str) -> Result<Value, ClientError> {
        self.call(reqwest::Method::POST, path, None).await
    }
}

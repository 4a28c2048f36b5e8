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

    pub async fn get(&self, path: &str) -> Result<Value, ClientError> {
        self.call(reqwest::Method::GET, path, None).await
    }

    pub async fn post(&self, path: &str) -> Result<Value, ClientError> {
        self.call(reqwest::Method::POST, path, None).await
    }
}

//! Gives the framework's own refusals the API's error shape.
//!
//! axum answers some bad requests before a handler runs: a query string or path that does not
//! parse (400), a body over the limit (413), a method a route does not take (405). It answers
//! them in plain text, while every other error of this API is JSON `{"error": "..."}` and the
//! OpenAPI document promises so. This layer rewrites those answers, keeping the status and the
//! framework's explanation and adding what to do.

use axum::body::Body;
use axum::extract::Request;
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::Response;

use super::{ErrorBody, MAX_BODY_BYTES};

/// The most of a plain-text error body read back; the framework's are a line or two.
const MAX_PLAIN_ERROR_BYTES: usize = 16 * 1024;

/// Passes every answer through, except an error answer that is not JSON, which it rewrites.
pub async fn as_json(req: Request, next: Next) -> Response {
    let resp = next.run(req).await;
    let status = resp.status();
    let is_json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return resp;
    }
    let (mut parts, body) = resp.into_parts();
    let said = axum::body::to_bytes(body, MAX_PLAIN_ERROR_BYTES)
        .await
        .unwrap_or_default();
    let error = explain(status, String::from_utf8_lossy(&said).trim());
    let json = serde_json::to_vec(&ErrorBody {
        error,
        field: None,
        line: None,
        column: None,
    })
    .expect("an error body serialises");
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Response::from_parts(parts, Body::from(json))
}

/// The framework's words (possibly none), and what the caller can do about them.
fn explain(status: StatusCode, said: &str) -> String {
    let hint = match status {
        StatusCode::PAYLOAD_TOO_LARGE => format!(
            "the request body is over the {} KiB allowed; send a smaller one",
            MAX_BODY_BYTES / 1024
        ),
        StatusCode::METHOD_NOT_ALLOWED => {
            "this route does not take that method; the Allow header and GET /openapi.json list the ones it does".into()
        }
        _ => "check the request against this route in GET /openapi.json".into(),
    };
    if said.is_empty() {
        hint
    } else {
        format!("{said}; {hint}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_framework_words_come_first_then_what_to_do() {
        let e = explain(
            StatusCode::BAD_REQUEST,
            "Failed to deserialize query string: limit: number too large to fit in target type",
        );
        assert!(
            e.starts_with("Failed to deserialize query string: limit"),
            "{e}"
        );
        assert!(e.contains("GET /openapi.json"), "{e}");
        let e = explain(StatusCode::PAYLOAD_TOO_LARGE, "");
        assert!(e.contains("1024 KiB"), "{e}");
    }
}

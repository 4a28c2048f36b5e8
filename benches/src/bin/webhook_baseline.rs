//! The baseline for webhook throughput: an axum server that does nothing for a webhook but one
//! Redis PUBLISH of a trigger to the flow's channel and a 202 with an id, what pumphouse's
//! webhook would cost without authentication, the store, the rate limit or the dispatcher.
//!
//! Usage: webhook_baseline <port> <redis-url>. Serves POST /api/triggers/{flow}/webhook/{token}
//! on 127.0.0.1:<port> until killed.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};

#[derive(Clone)]
struct Baseline {
    redis: redis::aio::MultiplexedConnection,
    seq: Arc<AtomicI64>,
}

async fn webhook(
    State(b): State<Baseline>,
    Path((flow, _token)): Path<(String, String)>,
    body: Bytes,
) -> Result<(StatusCode, Json<serde_json::Value>), StatusCode> {
    // Same shape of work as the real handler around the publish: parse the body, make an id,
    // serialize a trigger.
    let payload: serde_json::Value =
        serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
    let id = uuid::Uuid::new_v4().to_string();
    let trigger = serde_json::json!({"id": id, "kind": "webhook", "payload": payload,
        "attempt": 1, "seq": b.seq.fetch_add(1, Ordering::Relaxed)});
    let mut conn = b.redis.clone();
    let _: i64 = redis::cmd("PUBLISH")
        .arg(pumphouse_pump::channels::trigger(&flow))
        .arg(trigger.to_string())
        .query_async(&mut conn)
        .await
        .map_err(|_| StatusCode::SERVICE_UNAVAILABLE)?;
    Ok((
        StatusCode::ACCEPTED,
        Json(serde_json::json!({"execution_id": id, "flow_id": flow, "status": "queued"})),
    ))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let (Some(port), Some(redis_url), None) = (args.next(), args.next(), args.next()) else {
        eprintln!("usage: webhook_baseline <port> <redis-url>");
        std::process::exit(2);
    };
    let port: u16 = port
        .parse()
        .map_err(|_| anyhow::anyhow!("`{port}` is not a port number"))?;
    let redis = redis::Client::open(redis_url)?
        .get_multiplexed_async_connection()
        .await?;
    let app = Router::new()
        .route("/api/triggers/{flow}/webhook/{token}", post(webhook))
        .with_state(Baseline {
            redis,
            seq: Arc::default(),
        });
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    axum::serve(listener, app).await?;
    Ok(())
}

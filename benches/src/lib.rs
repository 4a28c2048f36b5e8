//! Shared pieces of the benchmarks: percentiles, a table printer, and a watcher that timestamps
//! pump acknowledgements as they land on the events stream.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pumphouse_pump::{channels, PumpEvent};
use tokio::sync::Notify;

/// Sorted samples in milliseconds.
pub struct Samples(Vec<f64>);

impl Samples {
    pub fn new(mut ms: Vec<f64>) -> Samples {
        ms.sort_by(|a, b| a.total_cmp(b));
        Samples(ms)
    }

    /// The `p`th percentile (nearest rank), `p` in 0..=100.
    pub fn pct(&self, p: f64) -> f64 {
        if self.0.is_empty() {
            return f64::NAN;
        }
        let rank = ((p / 100.0) * self.0.len() as f64).ceil() as usize;
        self.0[rank.clamp(1, self.0.len()) - 1]
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Watches one flow's events stream and records when each trigger's first `ack` arrived.
#[derive(Clone)]
pub struct AckWatcher {
    acks: Arc<Mutex<HashMap<String, Instant>>>,
    notify: Arc<Notify>,
}

impl AckWatcher {
    /// Starts reading the flow's events stream (`channels::events_stream`) from now on.
    pub async fn start(redis_url: &str, stream: &str) -> AckWatcher {
        let client = redis::Client::open(redis_url).expect("a Redis URL");
        let mut conn = client
            .get_multiplexed_async_connection()
            .await
            .expect("Redis answers");
        let watcher = AckWatcher {
            acks: Arc::default(),
            notify: Arc::default(),
        };
        let w = watcher.clone();
        let stream = stream.to_string();
        tokio::spawn(async move {
            let mut last = "$".to_string();
            loop {
                let reply: redis::streams::StreamReadReply = match redis::cmd("XREAD")
                    .arg("BLOCK")
                    .arg(0)
                    .arg("STREAMS")
                    .arg(&stream)
                    .arg(&last)
                    .query_async(&mut conn)
                    .await
                {
                    Ok(r) => r,
                    Err(_) => return,
                };
                let now = Instant::now();
                for key in reply.keys {
                    for entry in key.ids {
                        last = entry.id.clone();
                        let text: Option<String> = entry.get(channels::EVENT_FIELD);
                        if let Some(Ok(PumpEvent::Ack { trigger_id, .. })) =
                            text.as_deref().map(serde_json::from_str)
                        {
                            w.acks.lock().unwrap().entry(trigger_id).or_insert(now);
                        }
                    }
                }
                w.notify.notify_waiters();
            }
        });
        watcher
    }

    /// When the trigger was first acknowledged, waiting up to `deadline`.
    pub async fn wait(&self, trigger_id: &str, deadline: Duration) -> Option<Instant> {
        let until = Instant::now() + deadline;
        loop {
            let notified = self.notify.notified();
            if let Some(at) = self.acks.lock().unwrap().get(trigger_id) {
                return Some(*at);
            }
            let left = until.checked_duration_since(Instant::now())?;
            let _ = tokio::time::timeout(left.min(Duration::from_millis(50)), notified).await;
        }
    }
}

/// Sends the flow's webhook and returns how long until its pump acknowledged the trigger,
/// measured from just before sending; fails past `deadline`.
pub async fn webhook_to_ack(
    app: &pumphouse_e2e::TestApp,
    flow: &pumphouse_e2e::TestFlow,
    watcher: &AckWatcher,
    deadline: Duration,
) -> Duration {
    let url = app.url(&format!("/api/triggers/{}/webhook/{}", flow.id, flow.token));
    let t0 = Instant::now();
    let resp = app
        .http
        .post(url)
        .body("{}")
        .send()
        .await
        .expect("webhook answered");
    assert_eq!(resp.status().as_u16(), 202);
    let body: serde_json::Value = resp.json().await.expect("JSON");
    let id = body["execution_id"].as_str().expect("an execution id");
    let acked = watcher
        .wait(id, deadline)
        .await
        .expect("the pump acknowledged in time");
    acked - t0
}

/// Prints one table row: name, runs, then the given percentiles.
pub fn row(name: &str, s: &Samples, pcts: &[f64]) {
    let cells: Vec<String> = pcts.iter().map(|p| format!("{:>9.2}", s.pct(*p))).collect();
    println!("{name:<44} {:>5} {}", s.len(), cells.join(" "));
}

pub fn header(pcts: &[f64]) {
    let cells: Vec<String> = pcts
        .iter()
        .map(|p| format!("{:>9}", format!("p{p} ms")))
        .collect();
    println!("{:<44} {:>5} {}", "", "runs", cells.join(" "));
}

pub mod scale;

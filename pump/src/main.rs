//! The reference pump: a pump that honours contract v1 (`docs/pump-contract.md`) and runs the
//! step list of its flow's config for every trigger.
//!
//! Tasks: the subscriber (receives triggers, acknowledges them, drops duplicates), one worker (runs
//! triggers one at a time, in arrival order), the heartbeat, and the emitter (appends events to
//! the events stream in order, retrying through Redis outages).

mod config;
mod link;
mod steps;

use std::collections::{HashMap, HashSet, VecDeque};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::StreamExt as _;
use pumphouse_pump::{channels, env, PumpEvent, Trigger, CONTRACT_VERSION};
use tokio::sync::{mpsc, watch};

use crate::config::Config;
use crate::link::Link;

/// Exit code for a config or environment the pump cannot use.
const EXIT_CONFIG: u8 = 2;
/// The field of a subscription probe message (see `subscribe`).
const PROBE_FIELD: &str = "probe";
/// How many finished trigger ids are remembered for de-duplication.
const REMEMBERED: usize = 4096;

struct Settings {
    flow_id: String,
    instance_id: String,
    redis_url: String,
    prefix: String,
    heartbeat: Duration,
    config: Config,
}

fn required(name: &str) -> Result<String, String> {
    std::env::var(name).map_err(|_| {
        format!("{name} is not set; the orchestrator sets it for every pump (see docs/pump-contract.md)")
    })
}

fn settings() -> Result<Settings, String> {
    let heartbeat = match std::env::var(env::HEARTBEAT_MS) {
        Ok(v) => v.parse::<u64>().map_err(|_| {
            format!(
                "{} must be a number of milliseconds, not `{v}`",
                env::HEARTBEAT_MS
            )
        })?,
        Err(_) => 5_000,
    };
    Ok(Settings {
        flow_id: required(env::FLOW_ID)?,
        instance_id: required(env::INSTANCE_ID)?,
        redis_url: required(env::REDIS_URL)?,
        prefix: required(env::TENANT_PREFIX)?,
        heartbeat: Duration::from_millis(heartbeat.max(100)),
        config: Config::from_base64(&required(env::ORGANISM_YAML)?)?,
    })
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// What the pump remembers about triggers, for heartbeats and de-duplication.
#[derive(Default)]
struct Ledger {
    pending: HashSet<String>,
    finished: HashMap<String, Result<serde_json::Value, String>>,
    finished_order: VecDeque<String>,
    processed: u64,
    last_activity_ms: i64,
}

impl Ledger {
    fn finish(&mut self, id: String, outcome: Result<serde_json::Value, String>) {
        self.pending.remove(&id);
        self.processed += 1;
        self.last_activity_ms = now_ms();
        if self.finished_order.len() >= REMEMBERED {
            if let Some(old) = self.finished_order.pop_front() {
                self.finished.remove(&old);
            }
        }
        self.finished_order.push_back(id.clone());
        self.finished.insert(id, outcome);
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let settings = match settings() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("pump: cannot start: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    match run(settings).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pump: cannot start: {e}");
            ExitCode::from(EXIT_CONFIG)
        }
    }
}

async fn run(s: Settings) -> Result<(), String> {
    let client = redis::Client::open(s.redis_url.as_str())
        .map_err(|e| format!("REDIS_URL is not a Redis URL: {e}"))?;
    let redis = Link::new(client.clone());
    let flow_id = s.flow_id.clone();
    let instance_id = s.instance_id.clone();
    eprintln!(
        "pump: flow {flow_id} instance {instance_id} starting, {} steps",
        s.config.steps.len()
    );

    let start_delay = s.config.start_delay;
    let stop_delay = s.config.stop_delay;
    let (events_tx, events_rx) = mpsc::unbounded_channel::<PumpEvent>();
    let stream = format!("{}{}", s.prefix, channels::EVENTS_KEY);
    let emitter = tokio::spawn(emit_events(redis.clone(), stream, events_rx));

    let ledger = Arc::new(Mutex::new(Ledger {
        last_activity_ms: now_ms(),
        ..Ledger::default()
    }));
    let (work_tx, work_rx) = mpsc::unbounded_channel::<Trigger>();
    let step_ctx = steps::StepContext {
        redis: redis.clone(),
        prefix: s.prefix.clone(),
        http: reqwest::Client::new(),
    };
    let worker = tokio::spawn(work(
        s.config,
        step_ctx,
        work_rx,
        ledger.clone(),
        events_tx.clone(),
        flow_id.clone(),
        instance_id.clone(),
    ));

    let heartbeat = tokio::spawn(heartbeat(
        s.heartbeat,
        ledger.clone(),
        events_tx.clone(),
        flow_id.clone(),
        instance_id.clone(),
    ));

    let (stop_tx, stop_rx) = watch::channel(false);
    if let Some(delay) = start_delay {
        eprintln!("pump: waiting {delay:?} before subscribing (startDelay)");
        tokio::time::sleep(delay).await;
    }
    let subscriber = tokio::spawn(subscribe(
        client,
        redis.clone(),
        stop_rx,
        work_tx,
        ledger.clone(),
        events_tx.clone(),
        flow_id.clone(),
        instance_id.clone(),
    ));

    shutdown_signal().await;
    let in_flight = ledger.lock().map(|l| l.pending.len() as u32).unwrap_or(0);
    eprintln!("pump: SIGTERM received, draining {in_flight} trigger(s)");
    let _ = events_tx.send(PumpEvent::Draining {
        flow_id,
        instance_id,
        in_flight,
    });
    // Stop taking triggers; the subscriber drops its sender, so the worker ends once the queue
    // it already accepted is done.
    let _ = stop_tx.send(true);
    if let Some(delay) = stop_delay {
        eprintln!("pump: waiting {delay:?} before draining (stopDelay)");
        tokio::time::sleep(delay).await;
    }
    let _ = subscriber.await;
    let _ = worker.await;
    heartbeat.abort();
    drop(events_tx);
    // Events still unsent after this are redelivered triggers for the next pump, not lost ones.
    if tokio::time::timeout(Duration::from_secs(5), emitter)
        .await
        .is_err()
    {
        eprintln!("pump: Redis unreachable while draining; some events were not sent");
    }
    eprintln!("pump: drained, exiting");
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("installing a SIGINT handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

/// Appends events to the stream in the order they were produced, retrying through outages.
/// Whatever waits is sent together, in one pipelined round trip: under load a trigger's `ack`,
/// `started` and `completed` (and other triggers') share it.
async fn emit_events(mut redis: Link, stream: String, mut rx: mpsc::UnboundedReceiver<PumpEvent>) {
    const MAX_BATCH: usize = 256;
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let mut pipe = redis::pipe();
        for ev in batch.drain(..) {
            let body = serde_json::to_string(&ev).expect("events always serialize");
            pipe.cmd("XADD")
                .arg(&stream)
                .arg("MAXLEN")
                .arg("~")
                .arg(10_000)
                .arg("*")
                .arg(channels::EVENT_FIELD)
                .arg(body)
                .ignore();
        }
        let mut backoff = Duration::from_millis(50);
        loop {
            // MULTI/EXEC-free: a retry after a half-applied pipeline can repeat some events,
            // which the orchestrator applies idempotently.
            let res: redis::RedisResult<()> = pipe.query_async(&mut redis).await;
            match res {
                Ok(_) => break,
                Err(e) => {
                    eprintln!("pump: cannot send event ({e}); retrying in {backoff:?}");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
            }
        }
    }
}

async fn heartbeat(
    every: Duration,
    ledger: Arc<Mutex<Ledger>>,
    events: mpsc::UnboundedSender<PumpEvent>,
    flow_id: String,
    instance_id: String,
) {
    let mut tick = tokio::time::interval(every);
    loop {
        tick.tick().await;
        let (in_flight, last_activity_ms, processed) = {
            let l = ledger.lock().expect("ledger lock");
            (l.pending.len() as u32, l.last_activity_ms, l.processed)
        };
        let ev = PumpEvent::Heartbeat {
            flow_id: flow_id.clone(),
            instance_id: instance_id.clone(),
            in_flight,
            last_activity_ms,
            processed,
        };
        if events.send(ev).is_err() {
            return;
        }
    }
}

/// Keeps a subscription to `trigger:{flow_id}` alive, reconnecting with back-off, and reports
/// ready once, after the first subscription is confirmed.
///
/// A subscription counts as confirmed when a probe published on the channel comes back on it:
/// the Redis client does not surface a refused SUBSCRIBE (an ACL saying no, say), and a pump
/// that reported ready without listening would leave every trigger to the re-send path.
#[allow(clippy::too_many_arguments)] // each is one of the pump's shared parts, named for clarity
async fn subscribe(
    client: redis::Client,
    mut publisher: Link,
    mut stop: watch::Receiver<bool>,
    work: mpsc::UnboundedSender<Trigger>,
    ledger: Arc<Mutex<Ledger>>,
    events: mpsc::UnboundedSender<PumpEvent>,
    flow_id: String,
    instance_id: String,
) {
    let channel = channels::trigger(&flow_id);
    let mut ready_sent = false;
    let mut backoff = Duration::from_millis(100);
    while !*stop.borrow() {
        let mut pubsub = match client.get_async_pubsub().await {
            Ok(p) => p,
            Err(e) => {
                eprintln!("pump: cannot subscribe ({e}); retrying in {backoff:?}");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = stop.changed() => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        if let Err(e) = pubsub.subscribe(&channel).await {
            eprintln!("pump: SUBSCRIBE {channel} failed ({e}); retrying in {backoff:?}");
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(5));
            continue;
        }
        let mut messages = pubsub.on_message();
        let nonce = format!("{instance_id}-{}", now_ms());
        let probe = serde_json::json!({ PROBE_FIELD: nonce }).to_string();
        let published: redis::RedisResult<i64> = redis::cmd("PUBLISH")
            .arg(&channel)
            .arg(&probe)
            .query_async(&mut publisher)
            .await;
        if let Err(e) = published {
            eprintln!("pump: cannot publish the subscription probe ({e}); retrying in {backoff:?}");
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(5));
            continue;
        }
        let confirmed = tokio::time::timeout(Duration::from_secs(2), async {
            while let Some(msg) = messages.next().await {
                let raw = msg.get_payload_bytes().to_vec();
                if raw == probe.as_bytes() {
                    return true;
                }
                accept(&raw, &work, &ledger, &events, &flow_id, &instance_id);
            }
            false
        })
        .await
        .unwrap_or(false);
        if !confirmed {
            eprintln!("pump: SUBSCRIBE {channel} was not confirmed (refused by Redis?); retrying in {backoff:?}");
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(5));
            continue;
        }
        backoff = Duration::from_millis(100);
        eprintln!("pump: subscribed to {channel}");
        if !ready_sent {
            ready_sent = true;
            let _ = events.send(PumpEvent::Ready {
                flow_id: flow_id.clone(),
                instance_id: instance_id.clone(),
                contract_version: CONTRACT_VERSION,
            });
        }
        loop {
            tokio::select! {
                msg = messages.next() => match msg {
                    Some(msg) => {
                        let payload: Vec<u8> = msg.get_payload_bytes().to_vec();
                        accept(&payload, &work, &ledger, &events, &flow_id, &instance_id);
                    }
                    None => {
                        eprintln!("pump: lost the Redis subscription; resubscribing");
                        break;
                    }
                },
                _ = stop.changed() => return,
            }
        }
    }
}

/// Acknowledges one trigger and queues it unless it is a copy of one already seen.
fn accept(
    raw: &[u8],
    work: &mpsc::UnboundedSender<Trigger>,
    ledger: &Mutex<Ledger>,
    events: &mpsc::UnboundedSender<PumpEvent>,
    flow_id: &str,
    instance_id: &str,
) {
    let trigger: Trigger = match serde_json::from_slice(raw) {
        Ok(t) => t,
        // Another instance's subscription probe: not for us, and not a mistake.
        Err(_)
            if serde_json::from_slice::<serde_json::Value>(raw)
                .is_ok_and(|v| v.get(PROBE_FIELD).is_some()) =>
        {
            return
        }
        Err(e) => {
            eprintln!("pump: ignoring a message that is not a trigger: {e}");
            return;
        }
    };
    let _ = events.send(PumpEvent::Ack {
        flow_id: flow_id.into(),
        instance_id: instance_id.into(),
        trigger_id: trigger.id.clone(),
    });
    let mut l = ledger.lock().expect("ledger lock");
    if let Some(outcome) = l.finished.get(&trigger.id) {
        // A copy of a finished trigger: its result event may have been lost, so say it again.
        let _ = events.send(outcome_event(
            flow_id,
            instance_id,
            &trigger.id,
            outcome.clone(),
        ));
        return;
    }
    if !l.pending.insert(trigger.id.clone()) {
        return;
    }
    l.last_activity_ms = now_ms();
    drop(l);
    let _ = work.send(trigger);
}

fn outcome_event(
    flow_id: &str,
    instance_id: &str,
    trigger_id: &str,
    outcome: Result<serde_json::Value, String>,
) -> PumpEvent {
    match outcome {
        Ok(output) => PumpEvent::Completed {
            flow_id: flow_id.into(),
            instance_id: instance_id.into(),
            trigger_id: trigger_id.into(),
            output,
        },
        Err(error) => PumpEvent::Failed {
            flow_id: flow_id.into(),
            instance_id: instance_id.into(),
            trigger_id: trigger_id.into(),
            error,
        },
    }
}

/// Runs triggers one at a time, in the order they arrived.
async fn work(
    config: Config,
    ctx: steps::StepContext,
    mut rx: mpsc::UnboundedReceiver<Trigger>,
    ledger: Arc<Mutex<Ledger>>,
    events: mpsc::UnboundedSender<PumpEvent>,
    flow_id: String,
    instance_id: String,
) {
    while let Some(trigger) = rx.recv().await {
        let _ = events.send(PumpEvent::Started {
            flow_id: flow_id.clone(),
            instance_id: instance_id.clone(),
            trigger_id: trigger.id.clone(),
        });
        let outcome = steps::run(&config, &ctx, &trigger.id, &trigger.payload).await;
        if let Err(e) = &outcome {
            eprintln!("pump: trigger {} failed: {e}", trigger.id);
        }
        let _ = events.send(outcome_event(
            &flow_id,
            &instance_id,
            &trigger.id,
            outcome.clone(),
        ));
        ledger
            .lock()
            .expect("ledger lock")
            .finish(trigger.id, outcome);
    }
}

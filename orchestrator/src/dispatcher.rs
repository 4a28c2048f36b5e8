//! The dispatcher: accepts triggers durably, holds them while a flow has no ready pump, and
//! sends them, in arrival order, until a pump acknowledges them.
//!
//! Each flow has a queue of unacknowledged triggers and a gate. The supervisor opens the gate
//! when a pump reports ready (the queue is then sent in order) and closes it when the pump goes
//! away; while it is closed, triggers are held.
//!
//! New triggers go through one writer task (group commit): it takes every trigger waiting to be
//! recorded, writes them all in one transaction, answers their callers, then queues and sends
//! them in sequence order. Concurrent webhooks thus share one durable write instead of queueing
//! for one each, and because the writer is the only path from the store to the first send, the
//! sequence numbers the store hands out are also the order pumps receive a flow's triggers in.
//!
//! # Guarantees
//! - A trigger is in the store (`queued`) before [`Dispatcher::accept`] returns, so a caller
//!   that got a 2xx has a trigger that will run or be marked failed with a reason.
//! - While the gate is open, an unacknowledged trigger is re-sent with back-off (250 ms doubling
//!   to 2 s); past its deadline, open gate or not, it is marked `failed` with a reason.
//! - The queue is rebuilt from the store on start-up, so a restart loses nothing.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use pumphouse_pump::{PumpEvent, Trigger};
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};

use crate::bus::Bus;
use crate::flow_locks::FlowLocks;
use crate::locking::lock;
use crate::log_gate::LogGate;
use crate::metrics::Metrics;
use crate::store::{
    now_ms, ExecutionRecord, ExecutionReport, FlowRecord, NewExecution, Recorder, Store, StoreError,
};

/// The most triggers one group commit writes. Past a few hundred the commit is no cheaper per
/// trigger, and the callers of the first ones wait longer.
const MAX_GROUP: usize = 512;

const FIRST_RESEND_MS: i64 = 250;
const MAX_RESEND_MS: i64 = 2_000;

struct Entry {
    trigger: Trigger,
    /// When this replica accepted it (not known for triggers loaded from the store).
    accepted_at: Option<std::time::Instant>,
    /// `None` while held: never sent to the current pump.
    next_send_at: Option<i64>,
    backoff_ms: i64,
    deadline_at: i64,
}

#[derive(Default)]
struct FlowQueue {
    /// A ready pump listens: send.
    open: bool,
    /// Unacknowledged triggers by sequence number.
    entries: BTreeMap<i64, Entry>,
    /// The highest sequence number other replicas had recorded for the flow when this leader
    /// last loaded its waiting triggers (see [`crate::store::Store::record_executions`]).
    loaded_elsewhere: i64,
}

#[derive(Default)]
struct Queues {
    flows: HashMap<String, FlowQueue>,
    /// execution id -> (flow id, seq)
    index: HashMap<String, (String, i64)>,
}

impl Queues {
    fn insert(&mut self, flow_id: &str, entry: Entry) {
        let seq = entry.trigger.seq;
        if self.index.contains_key(&entry.trigger.id) {
            return;
        }
        self.index
            .insert(entry.trigger.id.clone(), (flow_id.to_string(), seq));
        self.flows
            .entry(flow_id.to_string())
            .or_default()
            .entries
            .insert(seq, entry);
    }

    fn remove(&mut self, execution_id: &str) -> Option<Entry> {
        let (flow_id, seq) = self.index.remove(execution_id)?;
        self.flows.get_mut(&flow_id)?.entries.remove(&seq)
    }
}

/// How an execution ended, for callers waiting on it.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Completed(Value),
    Failed(String),
}

/// What pumps reported about executions in one read of their events, folded per execution,
/// for [`Dispatcher::apply_reports`].
#[derive(Default)]
pub struct Reports {
    /// One per execution and reporting flow, in the order first reported.
    reports: Vec<ExecutionReport>,
    /// How each ended, if it did, for whoever waits on it (by the same index).
    outcomes: Vec<Option<Outcome>>,
    /// (Reporting flow, execution id) -> index. Keyed by the flow too: a pump naming another
    /// flow's execution must not be folded into what that flow's own pump reports.
    index: HashMap<(String, String), usize>,
}

impl Reports {
    /// Folds what one read of events says about executions; the other events (about the
    /// pumps themselves) come back in order. Each event's flow must be its stream's (the bus
    /// drops the others), since a report changes only that flow's executions.
    pub fn fold(events: Vec<PumpEvent>, at: i64) -> (Reports, Vec<PumpEvent>) {
        let mut reports = Reports::default();
        let mut others = Vec::new();
        for ev in events {
            match ev {
                PumpEvent::Ack {
                    flow_id,
                    trigger_id,
                    instance_id,
                } => reports.acked(&flow_id, &trigger_id, &instance_id, at),
                PumpEvent::Started {
                    flow_id,
                    trigger_id,
                    instance_id,
                } => reports.started(&flow_id, &trigger_id, &instance_id, at),
                PumpEvent::Completed {
                    flow_id,
                    trigger_id,
                    instance_id,
                    output,
                } => reports.ended(
                    &flow_id,
                    &trigger_id,
                    &instance_id,
                    Outcome::Completed(output),
                    at,
                ),
                PumpEvent::Failed {
                    flow_id,
                    trigger_id,
                    instance_id,
                    error,
                } => reports.ended(
                    &flow_id,
                    &trigger_id,
                    &instance_id,
                    Outcome::Failed(error),
                    at,
                ),
                other => others.push(other),
            }
        }
        (reports, others)
    }

    /// The folded reports, as the store applies them.
    pub fn as_store_reports(&self) -> &[ExecutionReport] {
        &self.reports
    }

    fn entry(&mut self, flow_id: &str, id: &str, instance_id: &str) -> &mut ExecutionReport {
        let key = (flow_id.to_string(), id.to_string());
        let i = match self.index.get(&key) {
            Some(&i) => i,
            None => {
                self.index.insert(key, self.reports.len());
                self.reports.push(ExecutionReport {
                    id: id.to_string(),
                    flow_id: flow_id.to_string(),
                    ..ExecutionReport::default()
                });
                self.outcomes.push(None);
                self.reports.len() - 1
            }
        };
        let r = &mut self.reports[i];
        r.instance_id = Some(instance_id.to_string());
        r
    }

    /// The pump instance has the trigger.
    pub fn acked(&mut self, flow_id: &str, id: &str, instance_id: &str, at: i64) {
        let r = self.entry(flow_id, id, instance_id);
        r.acked_at = Some(r.acked_at.unwrap_or(at));
    }

    /// The pump instance started running it.
    pub fn started(&mut self, flow_id: &str, id: &str, instance_id: &str, at: i64) {
        let r = self.entry(flow_id, id, instance_id);
        r.started_at = Some(r.started_at.unwrap_or(at));
    }

    /// It ended; the first outcome reported stands.
    pub fn ended(&mut self, flow_id: &str, id: &str, instance_id: &str, outcome: Outcome, at: i64) {
        let r = self.entry(flow_id, id, instance_id);
        if r.finished.is_some() {
            return;
        }
        r.finished = Some((
            match &outcome {
                Outcome::Completed(v) => Ok(v.to_string()),
                // PostgreSQL refuses NUL in text, and a pump's message may hold one.
                Outcome::Failed(e) => Err(e.replace('\0', "\u{fffd}")),
            },
            at,
        ));
        let i = self.index[&(flow_id.to_string(), id.to_string())];
        self.outcomes[i] = Some(outcome);
    }
}

/// What [`Dispatcher::accept`] recorded.
#[derive(Debug, Clone)]
pub struct Accepted {
    pub execution_id: String,
    pub seq: i64,
}

pub struct Dispatcher {
    store: Store,
    bus: Bus,
    metrics: Arc<Metrics>,
    queues: Mutex<Queues>,
    /// Keeps a flow's first sends (by the writer) and its gate opening from interleaving, so
    /// sequence order is delivery order.
    flow_locks: FlowLocks,
    waiters: Mutex<HashMap<String, Vec<oneshot::Sender<Outcome>>>>,
    /// To the writer task that records new triggers (see the module doc).
    intake: mpsc::UnboundedSender<Intake>,
    /// Refused pump reports are logged at most once a minute per flow.
    refusal_log: LogGate,
}

/// A trigger waiting for the writer.
struct Intake {
    row: NewExecution,
    payload: Value,
    /// The leader queues and sends it once recorded; other replicas only record it.
    send: bool,
    reply: oneshot::Sender<Result<Accepted, StoreError>>,
}

fn entry_from(e: &ExecutionRecord) -> Entry {
    let payload = e
        .payload
        .as_deref()
        .and_then(|p| serde_json::from_str(p).ok())
        .unwrap_or(Value::Null);
    Entry {
        trigger: Trigger {
            id: e.id.clone(),
            kind: e.trigger_type.clone(),
            payload,
            attempt: e.attempts as u32,
            seq: e.seq,
        },
        next_send_at: None,
        backoff_ms: FIRST_RESEND_MS,
        deadline_at: e.deadline_at,
        accepted_at: None,
    }
}

impl Dispatcher {
    /// Makes the dispatcher and starts its writer task, which ends when the dispatcher is
    /// dropped. Needs a Tokio runtime.
    pub fn new(store: Store, bus: Bus, metrics: Arc<Metrics>) -> Arc<Dispatcher> {
        let (intake, waiting) = mpsc::unbounded_channel();
        let dispatcher = Arc::new(Dispatcher {
            store,
            bus,
            metrics,
            queues: Mutex::new(Queues::default()),
            flow_locks: FlowLocks::default(),
            waiters: Mutex::new(HashMap::new()),
            intake,
            refusal_log: LogGate::new(Duration::from_secs(60)),
        });
        tokio::spawn(write_triggers(Arc::downgrade(&dispatcher), waiting));
        dispatcher
    }

    /// Reloads unacknowledged triggers from the store, held until their flow's gate opens.
    pub async fn load(&self) -> Result<usize, StoreError> {
        let unacked = self.store.unacked_executions().await?;
        let mut q = lock(&self.queues);
        for e in &unacked {
            q.insert(&e.flow_id, entry_from(e));
        }
        Ok(unacked.len())
    }

    /// The bus triggers go out on and events come back on.
    pub fn bus(&self) -> &Bus {
        &self.bus
    }

    /// Gives the flow's pump events written so far up to `within` to be applied, so a stop or a
    /// failure sweep does not overtake what a pump reported just before it exited.
    pub async fn settle_events(&self, flow: &FlowRecord, within: std::time::Duration) {
        match self
            .bus
            .wait_events_applied(&flow.tenant_id, &flow.id, within)
            .await
        {
            Ok(true) => {}
            Ok(false) => tracing::warn!(
                ?within,
                "pump events written before the stop were not all applied in time"
            ),
            Err(e) => tracing::warn!(error = %e, "cannot tell whether pump events were applied"),
        }
    }

    /// Takes back executions a pump held and never finished (see `Store::requeue_instance`);
    /// they are held until the flow's gate opens again.
    pub fn requeue(&self, executions: &[ExecutionRecord]) {
        let mut q = lock(&self.queues);
        for e in executions {
            q.insert(&e.flow_id, entry_from(e));
        }
    }

    /// Records a trigger and nothing more: what a replica that is not the leader does. The
    /// leader, told by [`crate::bus::Bus::notify_accepted`], loads it and sends it.
    ///
    /// # Errors
    /// Only a store failure: then nothing was recorded and the caller must answer 5xx.
    pub async fn record(
        &self,
        flow_id: &str,
        kind: &str,
        payload: Value,
        deadline: Duration,
    ) -> Result<Accepted, StoreError> {
        self.submit(flow_id, kind, payload, deadline, false).await
    }

    /// Hands a new trigger to the writer and waits until it is recorded.
    async fn submit(
        &self,
        flow_id: &str,
        kind: &str,
        payload: Value,
        deadline: Duration,
        send: bool,
    ) -> Result<Accepted, StoreError> {
        let now = now_ms();
        let row = NewExecution {
            id: uuid::Uuid::new_v4().to_string(),
            flow_id: flow_id.to_string(),
            trigger_type: kind.to_string(),
            payload: Some(payload.to_string()),
            received_at: now,
            deadline_at: now + deadline.as_millis() as i64,
        };
        let (reply, answer) = oneshot::channel();
        // The writer task is gone only while the process shuts down.
        let gone = || StoreError::Query(sqlx::Error::WorkerCrashed);
        self.intake
            .send(Intake {
                row,
                payload,
                send,
                reply,
            })
            .map_err(|_| gone())?;
        answer.await.map_err(|_| gone())?
    }

    /// The writer's step: records a group of triggers in one transaction, answers their
    /// callers, then (on the leader) queues them and sends those whose gate is open, in
    /// sequence order.
    async fn commit_group(&self, group: Vec<Intake>) {
        let rows: Vec<&NewExecution> = group.iter().map(|i| &i.row).collect();
        let recorder = if group.iter().all(|i| i.send) {
            Recorder::Leader
        } else {
            Recorder::Elsewhere
        };
        let mut elsewhere: HashMap<String, i64> = HashMap::new();
        let mut recorded: Vec<(i64, Intake)> = match self
            .store
            .record_executions(&rows, recorder)
            .await
        {
            Ok(r) => {
                elsewhere = r.elsewhere;
                r.seqs.into_iter().zip(group).collect()
            }
            Err(e) if group.len() == 1 => {
                if let Some(i) = group.into_iter().next() {
                    let _ = i.reply.send(Err(e));
                }
                return;
            }
            Err(e) => {
                // Nothing of the group was recorded. One trigger can sink a group (its flow
                // deleted a moment ago), so each is tried alone: only those that fail again
                // answer 5xx.
                tracing::debug!(error = %e, count = group.len(), "a group commit failed; recording its triggers one by one");
                let mut recorded = Vec::with_capacity(group.len());
                for i in group {
                    match self
                        .store
                        .record_executions(std::slice::from_ref(&i.row), recorder)
                        .await
                    {
                        Ok(r) => {
                            elsewhere.extend(r.elsewhere);
                            recorded.push((r.seqs[0], i));
                        }
                        Err(e) => {
                            let _ = i.reply.send(Err(e));
                        }
                    }
                }
                recorded
            }
        };
        recorded.sort_by_key(|(seq, _)| *seq);
        let mut to_send = Vec::new();
        let mut replies = Vec::with_capacity(recorded.len());
        for (seq, i) in recorded {
            let accepted = Accepted {
                execution_id: i.row.id.clone(),
                seq,
            };
            if !i.send {
                let _ = i.reply.send(Ok(accepted));
                continue;
            }
            replies.push((i.reply, accepted));
            let trigger = Trigger {
                id: i.row.id,
                kind: i.row.trigger_type,
                payload: i.payload,
                attempt: 1,
                seq,
            };
            to_send.push((i.row.flow_id, trigger, i.row.deadline_at));
        }
        if to_send.is_empty() {
            return;
        }
        // Each flow's lock, taken in one order, so a gate opening cannot send older triggers
        // after these.
        let flows: BTreeSet<String> = to_send.iter().map(|(f, _, _)| f.clone()).collect();
        let locks: Vec<_> = flows.iter().map(|f| self.flow_locks.get(f)).collect();
        let mut guards = Vec::with_capacity(locks.len());
        for flow_lock in &locks {
            guards.push(flow_lock.lock().await);
        }
        // Triggers another replica recorded before these (their commit came first: the flow's
        // row lock orders them) and this leader has not loaded yet go first, or its own would
        // overtake them while the other replica's note is on its way.
        let mut behind = Vec::new();
        for flow_id in &flows {
            let mark = elsewhere.get(flow_id).copied().unwrap_or(0);
            let loaded = lock(&self.queues)
                .flows
                .get(flow_id)
                .map_or(0, |f| f.loaded_elsewhere);
            if mark > loaded {
                match self.store.unacked_for_flow(flow_id).await {
                    Ok(rows) => behind.push((flow_id.clone(), mark, rows)),
                    // Sent later, by the notification or the sweep; out of order, but sent.
                    Err(e) => {
                        tracing::warn!(flow_id = %flow_id, error = %e, "loading triggers another replica recorded failed")
                    }
                }
            }
        }
        let now = now_ms();
        let publish: Vec<(String, Trigger)> = {
            let mut q = lock(&self.queues);
            // Per flow, the lowest sequence number queued here: what is sent starts there.
            let mut from: HashMap<String, i64> = HashMap::new();
            let mut lowest = |flow_id: &str, seq: i64| {
                let low = from.entry(flow_id.to_string()).or_insert(seq);
                *low = (*low).min(seq);
            };
            for (flow_id, mark, rows) in behind {
                for e in &rows {
                    lowest(&flow_id, e.seq);
                    q.insert(&flow_id, entry_from(e));
                }
                let f = q.flows.entry(flow_id).or_default();
                f.loaded_elsewhere = f.loaded_elsewhere.max(mark);
            }
            for (flow_id, trigger, deadline_at) in to_send {
                lowest(&flow_id, trigger.seq);
                q.insert(
                    &flow_id,
                    Entry {
                        trigger,
                        next_send_at: None,
                        backoff_ms: FIRST_RESEND_MS,
                        deadline_at,
                        accepted_at: Some(std::time::Instant::now()),
                    },
                );
            }
            // Through each open gate, everything not sent yet, in sequence order.
            let mut publish = Vec::new();
            for (flow_id, from) in from {
                let Some(f) = q.flows.get_mut(&flow_id) else {
                    continue;
                };
                if !f.open {
                    continue;
                }
                for (_, e) in f
                    .entries
                    .range_mut(from..)
                    .filter(|(_, e)| e.next_send_at.is_none())
                {
                    e.next_send_at = Some(now + FIRST_RESEND_MS);
                    publish.push((flow_id.clone(), e.trigger.clone()));
                }
            }
            publish
        };
        drop(guards);
        // Queued, so whoever looks (the reaper, a wake) sees them; the send is the dispatcher's
        // business from here on.
        for (reply, accepted) in replies {
            let _ = reply.send(Ok(accepted));
        }
        if let Err(e) = self.bus.publish_many(&publish).await {
            // Recorded already; the next tick re-sends them once Redis answers.
            tracing::warn!(count = publish.len(), error = %e, "publishing triggers failed; they will be re-sent");
        }
    }

    /// Takes in the flow's triggers another replica recorded, and sends them if the gate is
    /// open, in sequence order.
    pub async fn load_flow(&self, flow_id: &str) -> Result<(), StoreError> {
        let unacked = self.store.unacked_for_flow(flow_id).await?;
        if unacked.is_empty() {
            return Ok(());
        }
        let open = {
            let mut q = lock(&self.queues);
            for e in &unacked {
                q.insert(&e.flow_id, entry_from(e));
            }
            q.flows.get(flow_id).is_some_and(|f| f.open)
        };
        if open {
            self.open(flow_id).await;
        }
        Ok(())
    }

    /// Forgets every queue and gate: this replica no longer leads.
    pub fn clear(&self) {
        *lock(&self.queues) = Queues::default();
    }

    /// Records a trigger, then sends it if the flow's gate is open (else holds it).
    ///
    /// # Errors
    /// Only a store failure: then nothing was recorded and the caller must answer 5xx.
    pub async fn accept(
        &self,
        flow_id: &str,
        kind: &str,
        payload: Value,
        deadline: Duration,
    ) -> Result<Accepted, StoreError> {
        self.submit(flow_id, kind, payload, deadline, true).await
    }

    async fn publish(&self, flow_id: &str, trigger: &Trigger) {
        if let Err(e) = self.bus.publish(flow_id, trigger).await {
            // Recorded already; the next tick re-sends it once Redis answers.
            tracing::warn!(execution_id = %trigger.id, error = %e, "publishing a trigger failed; it will be re-sent");
        }
    }

    /// A ready pump listens: sends everything held for the flow, in arrival order.
    pub async fn open(&self, flow_id: &str) {
        let flow_lock = self.flow_locks.get(flow_id);
        let _guard = flow_lock.lock().await;
        let now = now_ms();
        let held: Vec<Trigger> = {
            let mut q = lock(&self.queues);
            let f = q.flows.entry(flow_id.to_string()).or_default();
            f.open = true;
            f.entries
                .values_mut()
                .filter(|e| e.next_send_at.is_none())
                .map(|e| {
                    e.next_send_at = Some(now + FIRST_RESEND_MS);
                    e.trigger.clone()
                })
                .collect()
        };
        // One round trip: the writer waits for this lock to queue the flow's new triggers.
        let held: Vec<(String, Trigger)> =
            held.into_iter().map(|t| (flow_id.to_string(), t)).collect();
        if let Err(e) = self.bus.publish_many(&held).await {
            // Queued already; the next tick re-sends them once Redis answers.
            tracing::warn!(flow_id, count = held.len(), error = %e, "sending held triggers failed; they will be re-sent");
        }
    }

    /// The flow's pump is gone or going: hold its triggers from now on. What was sent and not
    /// acknowledged is sent again to the next pump.
    pub fn close(&self, flow_id: &str) {
        let mut q = lock(&self.queues);
        if let Some(f) = q.flows.get_mut(flow_id) {
            f.open = false;
            for e in f.entries.values_mut() {
                e.next_send_at = None;
                e.backoff_ms = FIRST_RESEND_MS;
            }
        }
    }

    /// A pump has the trigger: stop sending it.
    pub fn acknowledged(&self, execution_id: &str) {
        let entry = lock(&self.queues).remove(execution_id);
        if let Some(at) = entry.and_then(|e| e.accepted_at) {
            self.metrics.delivery.observe(at.elapsed().as_secs_f64());
        }
    }

    /// Triggers waiting for an acknowledgement, by flow.
    pub fn pending_by_flow(&self) -> Vec<(String, usize)> {
        lock(&self.queues)
            .flows
            .iter()
            .map(|(id, f)| (id.clone(), f.entries.len()))
            .collect()
    }

    /// How many triggers wait for an acknowledgement, in all flows.
    pub fn pending(&self) -> usize {
        lock(&self.queues).index.len()
    }

    /// Whether the flow has triggers no pump acknowledged yet.
    pub fn has_pending(&self, flow_id: &str) -> bool {
        lock(&self.queues)
            .flows
            .get(flow_id)
            .is_some_and(|f| !f.entries.is_empty())
    }

    /// Whether the flow's gate is open (a ready pump listens).
    pub fn is_open(&self, flow_id: &str) -> bool {
        lock(&self.queues)
            .flows
            .get(flow_id)
            .is_some_and(|f| f.open)
    }

    /// Flows whose gate is open.
    pub fn open_flows(&self) -> Vec<String> {
        lock(&self.queues)
            .flows
            .iter()
            .filter(|(_, f)| f.open)
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// Flows whose gate is closed while triggers wait: they need a pump.
    pub fn held_flows(&self) -> Vec<String> {
        lock(&self.queues)
            .flows
            .iter()
            .filter(|(_, f)| !f.open && !f.entries.is_empty())
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// Stops sending a flow's triggers and marks them failed with `reason`.
    pub async fn fail_flow(&self, flow_id: &str, reason: &str) -> Result<(), StoreError> {
        let ids: Vec<String> = {
            let mut q = lock(&self.queues);
            let ids: Vec<String> = q
                .flows
                .get(flow_id)
                .map(|f| f.entries.values().map(|e| e.trigger.id.clone()).collect())
                .unwrap_or_default();
            for id in &ids {
                q.remove(id);
            }
            ids
        };
        for id in ids {
            self.finish(&id, Outcome::Failed(reason.to_string()))
                .await?;
        }
        Ok(())
    }

    /// Applies what pumps reported about executions, read together, in one store transaction:
    /// what they acknowledged stops being sent at once (before the write: a re-send meanwhile
    /// would only be de-duplicated by the pump), and whoever waits on one that ended is told.
    /// A report about an execution the reporting pump was never given changes nothing: it is
    /// counted in `pumphouse_pump_reports_refused_total` and logged (at most once a minute
    /// per flow).
    pub async fn apply_reports(&self, reports: Reports) -> Result<(), StoreError> {
        let Reports {
            reports, outcomes, ..
        } = reports;
        if reports.is_empty() {
            return Ok(());
        }
        {
            let mut q = lock(&self.queues);
            for r in &reports {
                // Only the reporting flow's own trigger: another flow's stays queued.
                let ours = q.index.get(&r.id).is_some_and(|(f, _)| *f == r.flow_id);
                if !ours {
                    continue;
                }
                if let Some(at) = q.remove(&r.id).and_then(|e| e.accepted_at) {
                    self.metrics.delivery.observe(at.elapsed().as_secs_f64());
                }
            }
        }
        let applied = self.store.apply_reports(&reports).await?;
        for ((flow_id, status), n) in &applied.ended {
            self.metrics
                .executions
                .with_label_values(&[flow_id.as_str(), status.as_str()])
                .inc_by(*n);
        }
        for refused in &applied.refused {
            self.metrics
                .pump_reports_refused
                .with_label_values(&[refused.flow_id.as_str(), refused.reason.label()])
                .inc();
            if self.refusal_log.allow(&refused.flow_id) {
                tracing::warn!(
                    flow_id = %refused.flow_id,
                    execution_id = %refused.execution_id,
                    reason = refused.reason.label(),
                    "refused a pump's report about an execution it was not given (further ones for this flow are counted, and logged at most once a minute)"
                );
            }
        }
        let mut waiters = lock(&self.waiters);
        for (r, outcome) in reports.iter().zip(outcomes) {
            let Some(outcome) = outcome else { continue };
            if !applied
                .ended_ids
                .contains(&(r.flow_id.clone(), r.id.clone()))
            {
                continue;
            }
            for w in waiters.remove(&r.id).into_iter().flatten() {
                let _ = w.send(outcome.clone());
            }
        }
        Ok(())
    }

    /// Records how an execution ended (unless it had ended already) and tells whoever waits.
    pub async fn finish(&self, execution_id: &str, outcome: Outcome) -> Result<(), StoreError> {
        lock(&self.queues).remove(execution_id);
        let output;
        let result = match &outcome {
            Outcome::Completed(v) => {
                output = v.to_string();
                Ok(output.as_str())
            }
            Outcome::Failed(e) => Err(e.as_str()),
        };
        let finished = self
            .store
            .finish_execution(execution_id, result, now_ms())
            .await?;
        if let Some(flow_id) = finished {
            let status = if matches!(outcome, Outcome::Completed(_)) {
                "completed"
            } else {
                "failed"
            };
            self.metrics
                .executions
                .with_label_values(&[flow_id.as_str(), status])
                .inc();
        }
        let waiters = lock(&self.waiters).remove(execution_id);
        for w in waiters.into_iter().flatten() {
            let _ = w.send(outcome.clone());
        }
        Ok(())
    }

    /// Waits up to `timeout` for an execution to end. `None` when it is still going.
    pub async fn wait(
        &self,
        execution_id: &str,
        timeout: Duration,
    ) -> Result<Option<Outcome>, StoreError> {
        let outcome = self.wait_inner(execution_id, timeout).await;
        self.prune_waiters(execution_id);
        outcome
    }

    async fn wait_inner(
        &self,
        execution_id: &str,
        timeout: Duration,
    ) -> Result<Option<Outcome>, StoreError> {
        let (tx, rx) = oneshot::channel();
        lock(&self.waiters)
            .entry(execution_id.to_string())
            .or_default()
            .push(tx);
        // It may have ended before the waiter was in place.
        if let Some(done) = self.finished(execution_id).await? {
            return Ok(Some(done));
        }
        // The outcome may also be applied by another replica (the leader reads pump events),
        // so the store is looked at now and then while waiting.
        let until = tokio::time::Instant::now() + timeout;
        let mut rx = rx;
        loop {
            let left = until.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            tokio::select! {
                outcome = &mut rx => return Ok(outcome.ok()),
                _ = tokio::time::sleep(left.min(Duration::from_millis(100))) => {
                    if let Some(done) = self.finished(execution_id).await? {
                        return Ok(Some(done));
                    }
                }
            }
        }
    }

    /// Drops the senders of waiters that gave up.
    fn prune_waiters(&self, execution_id: &str) {
        let mut waiters = lock(&self.waiters);
        if let Some(list) = waiters.get_mut(execution_id) {
            list.retain(|s| !s.is_closed());
            if list.is_empty() {
                waiters.remove(execution_id);
            }
        }
    }

    /// How the execution ended, if it has.
    async fn finished(&self, execution_id: &str) -> Result<Option<Outcome>, StoreError> {
        let Some(e) = self.store.get_execution(execution_id).await? else {
            return Ok(None);
        };
        Ok(match e.status.as_str() {
            "completed" => Some(Outcome::Completed(
                e.output
                    .as_deref()
                    .and_then(|o| serde_json::from_str(o).ok())
                    .unwrap_or(Value::Null),
            )),
            "failed" => Some(Outcome::Failed(e.error_message.unwrap_or_default())),
            _ => None,
        })
    }

    /// One pass: re-sends what is due through open gates, in arrival order, and fails what is
    /// past its deadline. Called every 100 ms by [`Dispatcher::run`]; public so tests can
    /// drive it.
    pub async fn tick(&self) -> Result<(), StoreError> {
        let now = now_ms();
        let mut resend = Vec::new();
        let mut expired = Vec::new();
        {
            let mut q = lock(&self.queues);
            for (flow_id, f) in q.flows.iter_mut() {
                for e in f.entries.values_mut() {
                    if e.deadline_at <= now {
                        expired.push((e.trigger.id.clone(), e.trigger.attempt));
                    } else if f.open && e.next_send_at.is_some_and(|t| t <= now) {
                        e.trigger.attempt += 1;
                        e.next_send_at = Some(now + e.backoff_ms);
                        e.backoff_ms = (e.backoff_ms * 2).min(MAX_RESEND_MS);
                        resend.push((flow_id.clone(), e.trigger.clone()));
                    }
                }
            }
            for (id, _) in &expired {
                q.remove(id);
            }
            q.flows.retain(|_, f| f.open || !f.entries.is_empty());
        }
        for (flow_id, trigger) in resend {
            if self.store.count_attempt(&trigger.id).await? {
                self.publish(&flow_id, &trigger).await;
            } else {
                // Acknowledged through another replica, or failed by a stop: nothing to send.
                self.acknowledged(&trigger.id);
            }
        }
        for (id, attempts) in expired {
            let reason = format!(
                "no pump acknowledged this trigger before its deadline ({attempts} sends); check the flow with `pumphouse flow status`"
            );
            self.finish(&id, Outcome::Failed(reason)).await?;
        }
        Ok(())
    }

    /// Ticks for ever.
    pub async fn run(&self) {
        let mut every = tokio::time::interval(Duration::from_millis(100));
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            if let Err(e) = self.tick().await {
                tracing::warn!(error = %e, "re-delivery pass failed; retrying");
            }
        }
    }
}

/// The writer task: records whatever triggers wait, a group at a time, until the dispatcher is
/// gone. A group is whatever arrived while the previous one was being written, so a lone
/// trigger is written at once and a burst shares one commit.
async fn write_triggers(
    dispatcher: Weak<Dispatcher>,
    mut waiting: mpsc::UnboundedReceiver<Intake>,
) {
    let mut group = Vec::with_capacity(MAX_GROUP);
    while waiting.recv_many(&mut group, MAX_GROUP).await > 0 {
        let Some(dispatcher) = dispatcher.upgrade() else {
            return;
        };
        dispatcher.commit_group(std::mem::take(&mut group)).await;
    }
}

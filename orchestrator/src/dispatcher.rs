//! The dispatcher: accepts triggers durably and re-sends them until a pump acknowledges them.
//!
//! # Guarantees
//! - A trigger is in the store (status `queued`) before [`Dispatcher::accept`] returns, so a
//!   caller that got a 2xx has a trigger that will be delivered or marked failed with a reason.
//! - Until acknowledged, a trigger is re-published with back-off (250 ms doubling to 2 s); after
//!   its deadline it is marked `failed` with a reason that says what to check.
//! - The queue is rebuilt from the store on start-up, so a restart loses nothing.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use pumphouse_pump::Trigger;

use crate::bus::Bus;
use crate::store::{now_ms, NewExecution, Store, StoreError};

const FIRST_RESEND_MS: i64 = 250;
const MAX_RESEND_MS: i64 = 2_000;

struct Entry {
    flow_id: String,
    trigger: Trigger,
    next_send_at: i64,
    backoff_ms: i64,
    deadline_at: i64,
}

#[derive(Default)]
struct Queue {
    /// By sequence number, so re-sends go out in arrival order.
    by_seq: BTreeMap<i64, Entry>,
    seq_of: HashMap<String, i64>,
}

/// What [`Dispatcher::accept`] recorded.
#[derive(Debug, Clone)]
pub struct Accepted {
    pub execution_id: String,
    pub seq: i64,
    /// Pumps that received the first send (0: none was listening; it will be re-sent).
    pub receivers: u64,
}

pub struct Dispatcher {
    store: Store,
    bus: Bus,
    queue: Mutex<Queue>,
}

impl Dispatcher {
    pub fn new(store: Store, bus: Bus) -> Dispatcher {
        Dispatcher {
            store,
            bus,
            queue: Mutex::new(Queue::default()),
        }
    }

    /// Reloads unacknowledged triggers from the store; they are re-sent on the next tick.
    pub async fn load(&self) -> Result<usize, StoreError> {
        let unacked = self.store.unacked_executions().await?;
        let now = now_ms();
        let mut q = self.queue.lock().expect("queue lock");
        for e in &unacked {
            let payload = e
                .payload
                .as_deref()
                .and_then(|p| serde_json::from_str(p).ok())
                .unwrap_or(serde_json::Value::Null);
            q.seq_of.insert(e.id.clone(), e.seq);
            q.by_seq.insert(
                e.seq,
                Entry {
                    flow_id: e.flow_id.clone(),
                    trigger: Trigger {
                        id: e.id.clone(),
                        kind: e.trigger_type.clone(),
                        payload,
                        attempt: e.attempts as u32,
                        seq: e.seq,
                    },
                    next_send_at: now,
                    backoff_ms: FIRST_RESEND_MS,
                    deadline_at: e.deadline_at,
                },
            );
        }
        Ok(unacked.len())
    }

    /// Records a trigger, then publishes it.
    ///
    /// # Errors
    /// Only a store failure: then nothing was recorded and the caller must answer 5xx.
    pub async fn accept(
        &self,
        flow_id: &str,
        kind: &str,
        payload: serde_json::Value,
        deadline: Duration,
    ) -> Result<Accepted, StoreError> {
        let id = uuid::Uuid::new_v4().to_string();
        let now = now_ms();
        let deadline_at = now + deadline.as_millis() as i64;
        let seq = self
            .store
            .insert_execution(&NewExecution {
                id: id.clone(),
                flow_id: flow_id.to_string(),
                trigger_type: kind.to_string(),
                payload: Some(payload.to_string()),
                received_at: now,
                deadline_at,
            })
            .await?;
        let trigger = Trigger {
            id: id.clone(),
            kind: kind.to_string(),
            payload,
            attempt: 1,
            seq,
        };
        {
            let mut q = self.queue.lock().expect("queue lock");
            q.seq_of.insert(id.clone(), seq);
            q.by_seq.insert(
                seq,
                Entry {
                    flow_id: flow_id.to_string(),
                    trigger: trigger.clone(),
                    next_send_at: now + FIRST_RESEND_MS,
                    backoff_ms: FIRST_RESEND_MS,
                    deadline_at,
                },
            );
        }
        let receivers = match self.bus.publish(flow_id, &trigger).await {
            Ok(n) => n,
            Err(e) => {
                // Recorded already; the next tick re-sends it once Redis answers.
                tracing::warn!(execution_id = %id, error = %e, "publishing a trigger failed; it will be re-sent");
                0
            }
        };
        Ok(Accepted {
            execution_id: id,
            seq,
            receivers,
        })
    }

    /// A pump has the trigger: stop re-sending it.
    pub fn acknowledged(&self, execution_id: &str) {
        let mut q = self.queue.lock().expect("queue lock");
        if let Some(seq) = q.seq_of.remove(execution_id) {
            q.by_seq.remove(&seq);
        }
    }

    /// How many triggers wait for an acknowledgement.
    pub fn pending(&self) -> usize {
        self.queue.lock().expect("queue lock").by_seq.len()
    }

    /// Stops re-sending a flow's triggers and marks them failed with `reason`.
    pub async fn fail_flow(&self, flow_id: &str, reason: &str) -> Result<(), StoreError> {
        let ids: Vec<String> = {
            let mut q = self.queue.lock().expect("queue lock");
            let seqs: Vec<i64> = q
                .by_seq
                .iter()
                .filter(|(_, e)| e.flow_id == flow_id)
                .map(|(s, _)| *s)
                .collect();
            let mut ids = Vec::with_capacity(seqs.len());
            for s in seqs {
                if let Some(e) = q.by_seq.remove(&s) {
                    q.seq_of.remove(&e.trigger.id);
                    ids.push(e.trigger.id);
                }
            }
            ids
        };
        for id in ids {
            self.store
                .finish_execution(&id, Err(reason), now_ms())
                .await?;
        }
        Ok(())
    }

    /// One pass: re-sends what is due, in arrival order, and fails what is past its deadline.
    /// Called every 100 ms by [`Dispatcher::run`]; public so tests can drive it.
    pub async fn tick(&self) -> Result<(), StoreError> {
        let now = now_ms();
        let (resend, expired) = {
            let mut q = self.queue.lock().expect("queue lock");
            let mut resend = Vec::new();
            let mut expired = Vec::new();
            for (seq, e) in q.by_seq.iter_mut() {
                if e.deadline_at <= now {
                    expired.push((*seq, e.trigger.id.clone(), e.trigger.attempt));
                } else if e.next_send_at <= now {
                    e.trigger.attempt += 1;
                    e.next_send_at = now + e.backoff_ms;
                    e.backoff_ms = (e.backoff_ms * 2).min(MAX_RESEND_MS);
                    resend.push((e.flow_id.clone(), e.trigger.clone()));
                }
            }
            for (seq, id, _) in &expired {
                q.by_seq.remove(seq);
                q.seq_of.remove(id);
            }
            (resend, expired)
        };
        for (flow_id, trigger) in resend {
            self.store.count_attempt(&trigger.id).await?;
            if let Err(e) = self.bus.publish(&flow_id, &trigger).await {
                tracing::warn!(execution_id = %trigger.id, error = %e, "re-sending a trigger failed; will try again");
            }
        }
        for (_, id, attempts) in expired {
            let reason = format!(
                "no pump acknowledged this trigger before its deadline ({attempts} attempts); check that the flow is running with `pumphouse flow status`"
            );
            self.store.finish_execution(&id, Err(&reason), now).await?;
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

//! The pumphouse pump contract, version 1, as types.
//!
//! The orchestrator and every Rust pump build their messages from this crate, so the two sides can
//! never drift. The same contract is written out for other languages in `docs/pump-contract.md`;
//! a change here is a change there.
//!
//! # Layout
//! - [`env`]: the environment variables the orchestrator sets for a pump.
//! - [`channels`]: the Redis channel and stream names.
//! - [`Trigger`]: what the orchestrator publishes on `trigger:{flow_id}`.
//! - [`PumpEvent`]: what the pump appends to the `pumphouse:events` stream.

use serde::{Deserialize, Serialize};

/// The contract version this crate speaks. Pumps receive it as `PUMP_CONTRACT_VERSION`.
pub const CONTRACT_VERSION: u32 = 1;

/// Environment variable names set by the orchestrator for every pump.
pub mod env {
    /// The flow's id (a UUID). Also the suffix of the trigger channel.
    pub const FLOW_ID: &str = "FLOW_ID";
    /// The tenant's id.
    pub const TENANT_ID: &str = "TENANT_ID";
    /// Unique per pump (a woken, unchanged pump keeps it); the pump echoes it in every event so
    /// stale pumps can be told apart.
    pub const INSTANCE_ID: &str = "INSTANCE_ID";
    /// Base64 (standard alphabet, padded) of the flow's `config` section, as YAML.
    pub const ORGANISM_YAML: &str = "ORGANISM_YAML";
    /// Where the pump reaches Redis: `redis://[user:password@]host:port[/db]`.
    pub const REDIS_URL: &str = "REDIS_URL";
    /// `tenant:{tenant}:flow:{flow}:`; every key the pump touches starts with it.
    pub const TENANT_PREFIX: &str = "TENANT_PREFIX";
    /// The contract version the orchestrator speaks (`1`).
    pub const CONTRACT_VERSION: &str = "PUMP_CONTRACT_VERSION";
    /// Milliseconds between heartbeats.
    pub const HEARTBEAT_MS: &str = "PUMP_HEARTBEAT_MS";
    /// Names reserved by the contract; a flow's own env may not use them.
    pub const RESERVED: &[&str] = &[
        FLOW_ID,
        TENANT_ID,
        INSTANCE_ID,
        ORGANISM_YAML,
        REDIS_URL,
        TENANT_PREFIX,
        CONTRACT_VERSION,
        HEARTBEAT_MS,
    ];
}

/// Redis names shared by the orchestrator and pumps.
pub mod channels {
    /// The pub/sub channel a flow's pump subscribes to for triggers.
    pub fn trigger(flow_id: &str) -> String {
        format!("trigger:{flow_id}")
    }

    /// The Redis stream pumps append their events to (`XADD pumphouse:events * event <json>`).
    pub const EVENTS_STREAM: &str = "pumphouse:events";

    /// The field of each stream entry that holds the JSON event.
    pub const EVENT_FIELD: &str = "event";

    /// The key prefix a flow's pump may use.
    pub fn tenant_prefix(tenant_id: &str, flow_id: &str) -> String {
        format!("tenant:{tenant_id}:flow:{flow_id}:")
    }

    /// The Redis stream a flow's pump appends its events to (contract v2): under the flow's own
    /// prefix, so no pump can read, trim or forge another flow's events.
    pub fn events_stream(tenant_id: &str, flow_id: &str) -> String {
        format!("{}events", tenant_prefix(tenant_id, flow_id))
    }
}

/// One trigger, published as JSON on `trigger:{flow_id}`.
///
/// The same trigger may arrive more than once (it is re-sent until acknowledged); `id` is stable
/// across re-sends and is what a pump de-duplicates on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Trigger {
    /// The execution id; stable across re-deliveries.
    pub id: String,
    /// What caused it: `webhook` or `manual`.
    pub kind: String,
    /// The caller's JSON body (`null` when there was none).
    pub payload: serde_json::Value,
    /// 1 on the first send, then 2, 3, ... on re-sends.
    pub attempt: u32,
    /// Position of this trigger among the flow's triggers, increasing in arrival order.
    pub seq: i64,
}

/// Why a pump stopped working on a trigger.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Failure {
    /// A message for the person reading the execution history.
    pub error: String,
}

/// What a pump reports, as JSON in the `event` field of an entry of `pumphouse:events`.
///
/// Every event names the flow and the pump instance that sent it; the orchestrator ignores events
/// from an instance it no longer runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum PumpEvent {
    /// Sent once, only after the pump's subscription to `trigger:{flow_id}` is confirmed.
    Ready {
        flow_id: String,
        instance_id: String,
        contract_version: u32,
    },
    /// Sent every `PUMP_HEARTBEAT_MS` while the pump lives.
    Heartbeat {
        flow_id: String,
        instance_id: String,
        /// Triggers received and not yet finished.
        in_flight: u32,
        /// Unix milliseconds of the last trigger received or finished (the pump's start if none).
        last_activity_ms: i64,
        /// Triggers finished since the pump started.
        processed: u64,
    },
    /// The trigger arrived. Sent for every copy, duplicates included.
    Ack {
        flow_id: String,
        instance_id: String,
        trigger_id: String,
    },
    /// The pump began running the trigger.
    Started {
        flow_id: String,
        instance_id: String,
        trigger_id: String,
    },
    /// The trigger ran to the end; `output` is the `respond` result (`null` if none).
    Completed {
        flow_id: String,
        instance_id: String,
        trigger_id: String,
        output: serde_json::Value,
    },
    /// The trigger failed; `error` says why.
    Failed {
        flow_id: String,
        instance_id: String,
        trigger_id: String,
        error: String,
    },
    /// The pump received SIGTERM and is finishing in-flight work before it exits.
    Draining {
        flow_id: String,
        instance_id: String,
        in_flight: u32,
    },
}

impl PumpEvent {
    /// The flow the event is about.
    pub fn flow_id(&self) -> &str {
        match self {
            PumpEvent::Ready { flow_id, .. }
            | PumpEvent::Heartbeat { flow_id, .. }
            | PumpEvent::Ack { flow_id, .. }
            | PumpEvent::Started { flow_id, .. }
            | PumpEvent::Completed { flow_id, .. }
            | PumpEvent::Failed { flow_id, .. }
            | PumpEvent::Draining { flow_id, .. } => flow_id,
        }
    }

    /// The pump instance that sent it.
    pub fn instance_id(&self) -> &str {
        match self {
            PumpEvent::Ready { instance_id, .. }
            | PumpEvent::Heartbeat { instance_id, .. }
            | PumpEvent::Ack { instance_id, .. }
            | PumpEvent::Started { instance_id, .. }
            | PumpEvent::Completed { instance_id, .. }
            | PumpEvent::Failed { instance_id, .. }
            | PumpEvent::Draining { instance_id, .. } => instance_id,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_serialize_with_a_snake_case_type_tag_as_the_contract_document_shows() {
        let ev = PumpEvent::Completed {
            flow_id: "f".into(),
            instance_id: "i".into(),
            trigger_id: "t".into(),
            output: serde_json::json!({"ok": true}),
        };
        let text = serde_json::to_string(&ev).unwrap();
        assert_eq!(
            text,
            r#"{"type":"completed","flow_id":"f","instance_id":"i","trigger_id":"t","output":{"ok":true}}"#
        );
        assert_eq!(serde_json::from_str::<PumpEvent>(&text).unwrap(), ev);
    }

    #[test]
    fn trigger_channel_and_prefix_follow_seed_001() {
        assert_eq!(channels::trigger("abc"), "trigger:abc");
        assert_eq!(channels::tenant_prefix("t1", "f1"), "tenant:t1:flow:f1:");
    }
}

/// Human durations as written in manifests and pump configs: `250ms`, `5s`, `15m`, `2h`.
pub mod duration {
    use std::time::Duration;

    /// Parses `<integer><unit>` with unit `ms`, `s`, `m` or `h`.
    ///
    /// # Errors
    /// A message that names the text and the accepted form.
    pub fn parse(text: &str) -> Result<Duration, String> {
        let t = text.trim();
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let n: u64 = num.parse().map_err(|_| {
            format!("`{text}` is not a duration; write a whole number and a unit, like 250ms, 5s, 15m or 2h")
        })?;
        let ms = match unit {
            "ms" => n,
            "s" => n.saturating_mul(1_000),
            "m" => n.saturating_mul(60_000),
            "h" => n.saturating_mul(3_600_000),
            _ => {
                return Err(format!(
                    "`{text}` has no known unit; use ms, s, m or h, like 250ms, 5s, 15m or 2h"
                ))
            }
        };
        Ok(Duration::from_millis(ms))
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn parses_each_unit_and_rejects_what_it_cannot_read() {
            assert_eq!(parse("250ms").unwrap(), Duration::from_millis(250));
            assert_eq!(parse("15m").unwrap(), Duration::from_secs(900));
            assert_eq!(parse("2h").unwrap(), Duration::from_secs(7200));
            assert!(parse("5").unwrap_err().contains("no known unit"));
            assert!(parse("fast").unwrap_err().contains("not a duration"));
        }
    }
}

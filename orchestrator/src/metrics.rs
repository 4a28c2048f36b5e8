//! Prometheus metrics, served at `/metrics`.
//!
//! Labels stay bounded: flows are labelled by their id (bounded by the number of flows; the
//! `pumphouse_flow_info` series maps ids to names), API requests by their route template, never
//! by a raw path or an execution id.

use std::collections::HashMap;
use std::sync::Mutex;

use prometheus::{
    Encoder as _, Histogram, HistogramOpts, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::locking::lock;

pub struct Metrics {
    registry: Registry,
    pub flows: IntGaugeVec,
    pub flow_info: IntGaugeVec,
    pub executions: IntCounterVec,
    pub pump_memory: IntGaugeVec,
    pub pump_memory_limit: IntGaugeVec,
    pub pump_messages: IntCounterVec,
    pub triggers_pending: IntGaugeVec,
    pub crashes: IntCounterVec,
    /// Pumps that exited 2 at start: a config or environment they cannot use. A typo in a
    /// manifest, apart from crashes, so it does not page through `PumpCrash`.
    pub configs_refused: IntCounterVec,
    pub restarts: IntCounterVec,
    pub scale_downs: IntCounterVec,
    pub wakeups: IntCounterVec,
    pub api_requests: IntCounterVec,
    pub pump_reports_refused: IntCounterVec,
    pub cold_start: Histogram,
    pub delivery: Histogram,
    /// The last `processed` count each flow's pump reported, to turn it into increments.
    processed_seen: Mutex<HashMap<String, u64>>,
}

fn gauge(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("a valid metric");
    registry
        .register(Box::new(g.clone()))
        .expect("registered once");
    g
}

fn counter(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("a valid metric");
    registry
        .register(Box::new(c.clone()))
        .expect("registered once");
    c
}

fn histogram(registry: &Registry, name: &str, help: &str, buckets: Vec<f64>) -> Histogram {
    let h = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets))
        .expect("a valid metric");
    registry
        .register(Box::new(h.clone()))
        .expect("registered once");
    h
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// The flow's counters, at zero, from its first start on this server (and its adoption
    /// after a restart): an alert's `increase()` sees the first crash or the first failed
    /// execution only as a change from a value it has already seen.
    pub fn seen_flow(&self, flow_id: &str) {
        for counter in [&self.crashes, &self.restarts, &self.configs_refused] {
            counter.with_label_values(&[flow_id]).inc_by(0);
        }
        for status in ["completed", "failed"] {
            self.executions
                .with_label_values(&[flow_id, status])
                .inc_by(0);
        }
    }

    pub fn new() -> Metrics {
        let r = Registry::new();
        Metrics {
            flows: gauge(&r, "pumphouse_flows", "Flows by status.", &["status"]),
            flow_info: gauge(
                &r,
                "pumphouse_flow_info",
                "1 for each flow, naming it.",
                &["flow", "name", "tenant"],
            ),
            executions: counter(
                &r,
                "pumphouse_executions_total",
                "Finished executions by flow and status.",
                &["flow", "status"],
            ),
            pump_memory: gauge(
                &r,
                "pumphouse_pump_memory_bytes",
                "Memory the flow's pump uses.",
                &["flow"],
            ),
            pump_memory_limit: gauge(
                &r,
                "pumphouse_pump_memory_limit_bytes",
                "The memory limit of the flow's pump.",
                &["flow"],
            ),
            pump_messages: counter(
                &r,
                "pumphouse_pump_messages_total",
                "Triggers the flow's pumps finished, by their heartbeats.",
                &["flow"],
            ),
            triggers_pending: gauge(
                &r,
                "pumphouse_triggers_pending",
                "Triggers accepted and not yet acknowledged by a pump.",
                &["flow"],
            ),
            crashes: counter(
                &r,
                "pumphouse_pump_crashes_total",
                "Pump exits nobody asked for.",
                &["flow"],
            ),
            configs_refused: counter(
                &r,
                "pumphouse_pump_configs_refused_total",
                "Pumps that exited 2 at start: their flow's config or environment could not be used.",
                &["flow"],
            ),
            restarts: counter(
                &r,
                "pumphouse_pump_restarts_total",
                "Pumps restarted after a crash.",
                &["flow"],
            ),
            scale_downs: counter(
                &r,
                "pumphouse_scale_downs_total",
                "Idle pumps scaled to zero.",
                &["flow"],
            ),
            wakeups: counter(
                &r,
                "pumphouse_wakeups_total",
                "Flows woken from zero by a trigger.",
                &["flow"],
            ),
            api_requests: counter(
                &r,
                "pumphouse_api_requests_total",
                "API requests by route template, method and status.",
                &["route", "method", "status"],
            ),
            pump_reports_refused: counter(
                &r,
                "pumphouse_pump_reports_refused_total",
                "Pump reports (ack, started, completed, failed) refused because they name an execution the pump was not given, by reporting flow and reason.",
                &["flow", "reason"],
            ),
            cold_start: histogram(
                &r,
                "pumphouse_cold_start_seconds",
                "From a start or wake to the pump's ready signal.",
                vec![0.025, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0],
            ),
            delivery: histogram(
                &r,
                "pumphouse_delivery_seconds",
                "From a trigger's acceptance to the pump's acknowledgement.",
                vec![
                    0.0005, 0.001, 0.002, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0,
                ],
            ),
            registry: r,
            processed_seen: Mutex::new(HashMap::new()),
        }
    }

    /// A heartbeat said the pump has finished `processed` triggers since it started.
    pub fn pump_processed(&self, flow_id: &str, processed: u64) {
        let mut seen = lock(&self.processed_seen);
        let last = seen.insert(flow_id.to_string(), processed).unwrap_or(0);
        // A smaller count is a new pump that started from zero.
        let delta = if processed >= last {
            processed - last
        } else {
            processed
        };
        if delta > 0 {
            self.pump_messages
                .with_label_values(&[flow_id])
                .inc_by(delta);
        }
    }

    /// The text exposition of every series.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("the text encoder writes to memory");
        String::from_utf8(out).expect("the text format is UTF-8")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heartbeat_counts_become_increments_and_survive_a_pump_restart() {
        let m = Metrics::new();
        m.pump_processed("f", 3);
        m.pump_processed("f", 5);
        m.pump_processed("f", 2); // a new pump
        assert_eq!(m.pump_messages.with_label_values(&["f"]).get(), 7);
        assert!(m
            .render()
            .contains("pumphouse_pump_messages_total{flow=\"f\"} 7"));
    }
}

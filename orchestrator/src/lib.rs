//! pumphouse: a per-flow container orchestrator. One long-lived pump per flow, started through a
//! pluggable backend, fed triggers over Redis, supervised from a durable store.
//!
//! # Layout
//! - [`app`]: builds the service from [`app::ServeConfig`] and runs it.
//! - [`api`]: the HTTP API (axum).
//! - [`manifest`]: the flow manifest, parsed and checked.
//! - [`store`]: tenants, flows, executions and flow events in SQLite or PostgreSQL;
//!   [`flow_cache`] keeps flows read recently for the webhook path.
//! - [`tenants`]: tenants' API tokens and the audit log.
//! - [`backend`]: where pumps run: [`backend::docker`], [`backend::process`].
//! - [`bus`]: Redis pub/sub for triggers, the events stream for what pumps report.
//! - [`trigger_payload`]: what a trigger request's body becomes.
//! - [`dispatcher`]: durable acceptance and re-delivery of triggers.
//! - [`pump_users`]: each pump's own Redis ACL user, limited to its flow's keys and channel.
//! - [`supervisor`]: starts and stops pumps, and applies what pumps and backends report.
//! - [`secrets`]: flow secrets sealed with AES-256-GCM under the master key.
//! - [`leadership`]: which replica runs the supervision loops (a lease with fencing).
//! - [`cli`] and [`client`]: the `pumphouse` command and its API client.
//! - [`locking`]: locks on shared state that a panic cannot poison; [`log_gate`]: warnings an
//!   untrusted pump can cause, at most one a period per flow.
//!
//! The pump contract itself lives in the `pumphouse-pump` crate, shared with the pumps.

pub mod api;
pub mod app;
pub mod backend;
pub mod bus;
pub mod cli;
pub mod client;
pub mod dispatcher;
pub mod flow_cache;
pub mod flow_locks;
pub mod leadership;
pub mod locking;
pub mod log_gate;
pub mod manifest;
pub mod metrics;
pub mod pump_users;
pub mod secrets;
pub mod store;
pub mod supervisor;
pub mod tenants;
pub mod token;
pub mod trigger_payload;

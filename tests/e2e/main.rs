//! End-to-end tests against real Redis, PostgreSQL, Docker and the reference pump.
//! One test binary, a module per feature; the harness is the `pumphouse_e2e` library.

mod api;
mod backend_contract;
mod chaos;
mod cli;
mod flows;
mod hostile_input;
mod hostile_pumps;
mod kubernetes;
mod observability;
mod redis_isolation;
mod replicas;
mod secrets;
mod status_page;
mod store;
mod supervision;
mod tenants;
mod triggers;
mod wake;

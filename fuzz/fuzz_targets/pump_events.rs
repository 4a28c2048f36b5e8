//! Fuzzes what the leader does with a hostile pump's events stream: each line is an entry's
//! `event` text, parsed as the contract's event, dropped when it names another flow than the
//! stream's (as the bus does), folded into reports and applied to a real store. Whatever the
//! pump writes, another flow's execution stays exactly as it was, and nothing panics.
//!
//! `VICTIM` in an input stands for the other flow's execution id, `ATTACKER` for the pump's own
//! flow id (see fuzz/pump_events.dict), so the fuzzer reaches forged reports at once.

#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use pumphouse::dispatcher::Reports;
use pumphouse::store::{now_ms, status, ExecutionRecord, FlowRecord, NewExecution, Store};
use pumphouse_pump::PumpEvent;

struct World {
    rt: tokio::runtime::Runtime,
    store: Store,
    attacker: String,
    victim: ExecutionRecord,
}

fn flow(name: &str) -> FlowRecord {
    FlowRecord {
        id: format!("{name}-flow"),
        tenant_id: "t1".into(),
        name: name.into(),
        manifest: format!("name: {name}\nconfig: {{}}\n"),
        desired_state: "running".into(),
        status: status::RUNNING.into(),
        status_reason: None,
        webhook_token_hash: "x".into(),
        idle_timeout_ms: 60_000,
        keep_alive: true,
        instance_id: None,
        pump_ref: None,
        created_at: 0,
        updated_at: 0,
    }
}

fn world() -> &'static World {
    static WORLD: OnceLock<World> = OnceLock::new();
    WORLD.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        let (store, victim) = rt.block_on(async {
            // A file of this run's own: the store's SQLite set-up is the production one.
            let db = std::env::temp_dir().join(format!("pumphouse-fuzz-{}.db", std::process::id()));
            let _ = std::fs::remove_file(&db);
            let store = Store::connect(&format!("sqlite://{}", db.display()))
                .await
                .expect("a store");
            store.ensure_tenant("t1", "t1").await.expect("a tenant");
            let (attacker, victim) = (flow("attacker"), flow("victim"));
            store.create_flow(&attacker, "fuzz").await.expect("a flow");
            store.create_flow(&victim, "fuzz").await.expect("a flow");
            let row = NewExecution {
                id: "victim-execution".into(),
                flow_id: victim.id.clone(),
                trigger_type: "webhook".into(),
                payload: Some("{}".into()),
                received_at: now_ms(),
                deadline_at: now_ms() + 3_600_000,
            };
            store.insert_executions(&[row]).await.expect("recorded");
            let e = store
                .get_execution("victim-execution")
                .await
                .expect("read")
                .expect("there");
            (store, e)
        });
        World {
            rt,
            store,
            attacker: "attacker-flow".into(),
            victim,
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let w = world();
    let events: Vec<PumpEvent> = text
        .lines()
        .map(|l| {
            l.replace("VICTIM", &w.victim.id)
                .replace("ATTACKER", &w.attacker)
        })
        .filter_map(|l| serde_json::from_str::<PumpEvent>(&l).ok())
        .filter(|ev| ev.flow_id() == w.attacker)
        .collect();
    let (reports, _) = Reports::fold(events, now_ms());
    for r in reports.as_store_reports() {
        assert_eq!(r.flow_id, w.attacker, "a report keeps its stream's flow");
    }
    w.rt.block_on(async {
        // A store refusal is fine; a change to the victim is not.
        let _ = w.store.apply_reports(reports.as_store_reports()).await;
        let now = w
            .store
            .get_execution(&w.victim.id)
            .await
            .expect("read")
            .expect("the victim's execution is there");
        assert_eq!(now, w.victim, "a pump changed another flow's execution");
    });
});

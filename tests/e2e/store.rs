//! One store suite, run against SQLite and PostgreSQL.

use pumphouse::store::{
    now_ms, status, ExecutionReport, FlowRecord, NewExecution, RefusedBecause, RefusedReport,
    Store, StoreError, Transition,
};
use pumphouse_e2e::{PostgresServer, TempDir};

fn flow(name: &str) -> FlowRecord {
    FlowRecord {
        id: uuid::Uuid::new_v4().to_string(),
        tenant_id: "t1".into(),
        name: name.into(),
        manifest: format!("name: {name}\nconfig: {{a: 1}}\n"),
        desired_state: "stopped".into(),
        status: status::STOPPED.into(),
        status_reason: None,
        webhook_token_hash: "abc".into(),
        idle_timeout_ms: 900_000,
        keep_alive: false,
        instance_id: None,
        pump_ref: None,
        created_at: now_ms(),
        updated_at: now_ms(),
    }
}

fn execution(flow_id: &str) -> NewExecution {
    NewExecution {
        id: uuid::Uuid::new_v4().to_string(),
        flow_id: flow_id.into(),
        trigger_type: "webhook".into(),
        payload: Some(r#"{"n":1}"#.into()),
        received_at: now_ms(),
        deadline_at: now_ms() + 30_000,
    }
}

async fn store_suite(store: Store) {
    store.ensure_tenant("t1", "Tenant one").await.unwrap();
    store.ensure_tenant("t1", "Tenant one").await.unwrap();

    // Flows: create, read by id and name, unique names per tenant, list in name order.
    let a = flow("alpha");
    store.create_flow(&a, "test").await.unwrap();
    assert_eq!(store.get_flow(&a.id).await.unwrap().unwrap(), a);
    assert_eq!(
        store
            .get_flow_by_name("t1", "alpha")
            .await
            .unwrap()
            .unwrap()
            .id,
        a.id
    );
    assert!(store
        .get_flow_by_name("t2", "alpha")
        .await
        .unwrap()
        .is_none());
    let dup = store.create_flow(&flow("alpha"), "test").await.unwrap_err();
    assert!(
        matches!(dup, StoreError::NameTaken(ref n) if n == "alpha"),
        "{dup:?}"
    );
    let b = flow("beta");
    store.create_flow(&b, "test").await.unwrap();
    let names: Vec<_> = store
        .list_flows("t1")
        .await
        .unwrap()
        .into_iter()
        .map(|f| f.name)
        .collect();
    assert_eq!(names, ["alpha", "beta"]);

    // Transitions are recorded with reasons, and the instance guard refuses stale pumps.
    let mut t = Transition::new(status::STARTING, "start requested by api", "api");
    t.desired = Some("running");
    t.pump = Some((Some("inst-1"), Some("pid:1")));
    assert!(store.transition(&a.id, t).await.unwrap());
    let mut stale = Transition::new(status::RUNNING, "pump reported ready", "pump");
    stale.only_instance = Some("inst-0");
    assert!(
        !store.transition(&a.id, stale).await.unwrap(),
        "a stale instance changes nothing"
    );
    let mut fresh = Transition::new(status::RUNNING, "pump reported ready", "pump");
    fresh.only_instance = Some("inst-1");
    assert!(store.transition(&a.id, fresh).await.unwrap());
    let got = store.get_flow(&a.id).await.unwrap().unwrap();
    assert_eq!(
        (got.status.as_str(), got.desired_state.as_str()),
        ("running", "running")
    );
    assert_eq!(got.instance_id.as_deref(), Some("inst-1"));
    assert_eq!(got.pump_ref.as_deref(), Some("pid:1"));
    let events = store.flow_events(&a.id, 10).await.unwrap();
    let seen: Vec<_> = events
        .iter()
        .map(|e| (e.from_status.clone(), e.to_status.clone(), e.reason.clone()))
        .collect();
    assert_eq!(
        seen,
        [
            (
                Some("starting".into()),
                "running".into(),
                "pump reported ready".into()
            ),
            (
                Some("stopped".into()),
                "starting".into(),
                "start requested by api".into()
            ),
            (None, "stopped".into(), "created".into()),
        ]
    );
    store.set_pump_ref(&a.id, "inst-0", "pid:99").await.unwrap();
    store.set_pump_ref(&a.id, "inst-1", "pid:2").await.unwrap();
    assert_eq!(
        store
            .get_flow(&a.id)
            .await
            .unwrap()
            .unwrap()
            .pump_ref
            .as_deref(),
        Some("pid:2"),
        "only the current instance's ref is kept"
    );
    assert!(!store
        .transition("no-such-flow", Transition::new(status::ERROR, "x", "api"))
        .await
        .unwrap());
    assert!(store
        .update_manifest(&a.id, "name: alpha\nconfig: {b: 2}\n", 60_000, true, "test")
        .await
        .unwrap());
    let got = store.get_flow(&a.id).await.unwrap().unwrap();
    assert!(got.keep_alive && got.idle_timeout_ms == 60_000 && got.manifest.contains("b: 2"));

    // Executions: sequence in arrival order, queued -> running -> completed, outcome final.
    let e1 = execution(&a.id);
    let e2 = execution(&a.id);
    let s1 = store.insert_execution(&e1).await.unwrap();
    let s2 = store.insert_execution(&e2).await.unwrap();
    assert!(s2 > s1);
    let unacked: Vec<_> = store
        .unacked_executions()
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.id)
        .collect();
    assert_eq!(unacked, [e1.id.clone(), e2.id.clone()]);
    store.count_attempt(&e1.id).await.unwrap();
    store.mark_acked(&e1.id, "inst-1", now_ms()).await.unwrap();
    assert!(store
        .mark_running(&e1.id, "inst-1", now_ms())
        .await
        .unwrap());
    assert!(store
        .finish_execution(&e1.id, Ok(r#"{"ok":true}"#), now_ms())
        .await
        .unwrap()
        .is_some());
    assert!(store
        .finish_execution(&e1.id, Err("late duplicate"), now_ms())
        .await
        .unwrap()
        .is_none());
    let done = store.get_execution(&e1.id).await.unwrap().unwrap();
    assert_eq!(done.status, "completed");
    assert_eq!(done.output.as_deref(), Some(r#"{"ok":true}"#));
    assert_eq!(done.attempts, 2);
    assert!(done.acked_at.is_some() && done.started_at.is_some() && done.completed_at.is_some());
    // A pump that dies holding a trigger hands it back, queued and unacknowledged.
    store.mark_acked(&e2.id, "inst-1", now_ms()).await.unwrap();
    assert!(store
        .mark_running(&e2.id, "inst-1", now_ms())
        .await
        .unwrap());
    assert!(store
        .requeue_instance(&a.id, "inst-other")
        .await
        .unwrap()
        .is_empty());
    let back = store.requeue_instance(&a.id, "inst-1").await.unwrap();
    assert_eq!(back.len(), 1);
    assert_eq!(
        (back[0].id.as_str(), back[0].status.as_str()),
        (e2.id.as_str(), "queued")
    );
    assert!(back[0].acked_at.is_none() && back[0].instance_id.is_none());
    store
        .mark_acked(&e2.id, "inst-gone", now_ms())
        .await
        .unwrap();
    let departed = store.requeue_departed().await.unwrap();
    assert_eq!(
        departed.len(),
        1,
        "acknowledged by a pump no flow runs: handed back"
    );
    assert_eq!(departed[0].id, e2.id);
    store.mark_acked(&e2.id, "inst-1", now_ms()).await.unwrap();
    assert!(
        store.requeue_departed().await.unwrap().is_empty(),
        "the flow's own pump keeps its triggers"
    );
    let mut wake = Transition::new(status::STARTING, "woken", "supervisor");
    wake.only_status = Some(status::IDLE);
    assert!(
        !store.transition(&a.id, wake).await.unwrap(),
        "only an idle flow can be woken"
    );
    assert!(store
        .finish_execution(&e2.id, Err("deadline passed"), now_ms())
        .await
        .unwrap()
        .is_some());
    let failed = store.get_execution(&e2.id).await.unwrap().unwrap();
    assert_eq!(
        (failed.status.as_str(), failed.error_message.as_deref()),
        ("failed", Some("deadline passed"))
    );
    assert!(store.unacked_executions().await.unwrap().is_empty());
    let listed: Vec<_> = store
        .list_executions(&a.id, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.id)
        .collect();
    assert_eq!(listed, [e2.id.clone(), e1.id.clone()], "newest first");
    assert_eq!(store.flows_wanted_running().await.unwrap().len(), 1);

    // A compare-and-set under a race: of many callers waking an idle flow, exactly one wins,
    // round after round.
    for round in 0..10 {
        let mut idle = Transition::new(status::IDLE, "scaled to zero", "reaper");
        idle.pump = Some((Some("inst-1"), None));
        assert!(store.transition(&a.id, idle).await.unwrap());
        let gate = std::sync::Arc::new(tokio::sync::Barrier::new(12));
        let racers: Vec<_> = (0..12)
            .map(|_| {
                let (store, id, gate) = (store.clone(), a.id.clone(), gate.clone());
                tokio::spawn(async move {
                    gate.wait().await;
                    let mut wake =
                        Transition::new(status::STARTING, "woken by a trigger", "supervisor");
                    wake.only_status = Some(status::IDLE);
                    store.transition(&id, wake).await.unwrap()
                })
            })
            .collect();
        let mut winners = 0;
        for r in racers {
            winners += r.await.unwrap() as usize;
        }
        assert_eq!(winners, 1, "round {round}: exactly one wake wins");
    }

    // Delete takes executions and events with it.
    assert!(store.delete_flow(&a.id).await.unwrap());
    assert!(store.get_flow(&a.id).await.unwrap().is_none());
    assert!(store.get_execution(&e1.id).await.unwrap().is_none());
    assert!(store.flow_events(&a.id, 10).await.unwrap().is_empty());
    assert!(!store.delete_flow(&a.id).await.unwrap());
    store.ping().await.unwrap();
    tenancy_suite(&store).await;
}

/// Tenants, API tokens and the audit log.
async fn tenancy_suite(store: &Store) {
    use pumphouse::tenants::{AuditEntry, Tenant};
    let acme = Tenant {
        id: "acme".into(),
        name: "Acme".into(),
        created_at: now_ms(),
    };
    let first = store
        .create_tenant(&acme, "initial", "hash-1")
        .await
        .unwrap();
    assert!(matches!(
        store.create_tenant(&acme, "initial", "hash-9").await,
        Err(StoreError::TenantExists(_))
    ));
    assert!(store.tenant_exists("acme").await.unwrap());
    assert!(!store.tenant_exists("nobody").await.unwrap());
    let second = store
        .create_api_token("acme", "ci", "hash-2")
        .await
        .unwrap();
    assert_eq!(
        store.api_token_by_hash("hash-2").await.unwrap().unwrap().id,
        second.id
    );
    let revoked = store
        .revoke_api_token("acme", &second.id)
        .await
        .unwrap()
        .unwrap();
    assert!(revoked.revoked_at.is_some());
    assert!(store.api_token_by_hash("hash-2").await.unwrap().is_none());
    assert!(
        store
            .revoke_api_token("t1", &first.id)
            .await
            .unwrap()
            .is_none(),
        "another tenant's token"
    );
    assert_eq!(
        store
            .api_token_by_hash("hash-1")
            .await
            .unwrap()
            .unwrap()
            .tenant_id,
        "acme"
    );
    assert_eq!(store.list_api_tokens("acme").await.unwrap().len(), 2);

    for (action, flow) in [
        ("flow.create", Some("f-1")),
        ("token.create", None),
        ("flow.delete", Some("f-1")),
    ] {
        store
            .record_audit(&AuditEntry {
                at: now_ms(),
                tenant_id: "acme".into(),
                actor: "admin".into(),
                action: action.into(),
                flow_id: flow.map(Into::into),
                flow_name: flow.map(|_| "orders".into()),
                detail: None,
            })
            .await
            .unwrap();
    }
    let all = store.list_audit("acme", None, 10).await.unwrap();
    assert_eq!(all.len(), 3);
    assert_eq!(all[0].action, "flow.delete", "newest first");
    let by_name = store.list_audit("acme", Some("orders"), 10).await.unwrap();
    let by_id = store.list_audit("acme", Some("f-1"), 10).await.unwrap();
    assert_eq!(by_name.len(), 2);
    assert_eq!(by_name, by_id);
    assert!(store.list_audit("t1", None, 10).await.unwrap().is_empty());
}

/// Group commit and folded pump reports: what the webhook path and the event reader write.
async fn batch_suite(store: Store) {
    store.ensure_tenant("t1", "Tenant one").await.unwrap();
    let f = flow("batched");
    store.create_flow(&f, "test").await.unwrap();

    // Many triggers in one commit (more than one statement's worth): sequence numbers in the
    // order given, every row there.
    let rows: Vec<NewExecution> = (0..1100).map(|_| execution(&f.id)).collect();
    let seqs = store.insert_executions(&rows).await.unwrap();
    assert_eq!(seqs.len(), rows.len());
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "sequence follows the order given"
    );
    for (row, seq) in rows.iter().zip(&seqs).step_by(97) {
        let got = store.get_execution(&row.id).await.unwrap().unwrap();
        assert_eq!((got.seq, got.status.as_str()), (*seq, "queued"));
    }
    // All or nothing: a group with one bad row records none of it.
    let good = execution(&f.id);
    let clash = NewExecution {
        id: rows[0].id.clone(),
        ..execution(&f.id)
    };
    assert!(store
        .insert_executions(&[good.clone(), clash])
        .await
        .is_err());
    assert!(store.get_execution(&good.id).await.unwrap().is_none());

    // Reports folded per execution, as one read of pump events gives them.
    let t = now_ms();
    let report = |i: usize| ExecutionReport {
        id: rows[i].id.clone(),
        flow_id: f.id.clone(),
        instance_id: Some("inst-1".into()),
        ..ExecutionReport::default()
    };
    let mut reports = vec![
        // ack, started and completed in one read
        ExecutionReport {
            acked_at: Some(t),
            started_at: Some(t + 1),
            finished: Some((Ok(r#"{"n":0}"#.into()), t + 2)),
            ..report(0)
        },
        // only acknowledged
        ExecutionReport {
            acked_at: Some(t),
            ..report(1)
        },
        // only started: acknowledged by the start
        ExecutionReport {
            started_at: Some(t + 5),
            ..report(2)
        },
        // failed with no ack seen
        ExecutionReport {
            instance_id: None,
            finished: Some((Err("boom".into()), t + 3)),
            ..report(3)
        },
        // an execution nobody knows: nothing happens, and it is refused
        ExecutionReport {
            id: "no-such-execution".into(),
            flow_id: f.id.clone(),
            finished: Some((Ok("1".into()), t)),
            ..ExecutionReport::default()
        },
    ];
    // Enough outcomes for more than one statement.
    reports.extend((10..1000).map(|i| ExecutionReport {
        finished: Some((Ok(i.to_string()), t)),
        ..report(i)
    }));
    let applied = store.apply_reports(&reports).await.unwrap();
    assert_eq!(
        applied.refused,
        [RefusedReport {
            flow_id: f.id.clone(),
            execution_id: "no-such-execution".into(),
            reason: RefusedBecause::NotThisFlows
        }]
    );
    assert_eq!(applied.ended_ids.len(), 992);
    assert_eq!(
        applied.ended.into_iter().collect::<Vec<_>>(),
        [
            ((f.id.clone(), "completed".to_string()), 991),
            ((f.id.clone(), "failed".to_string()), 1)
        ],
        "only executions that ended now are counted, by status"
    );
    let e0 = store.get_execution(&rows[0].id).await.unwrap().unwrap();
    assert_eq!(
        (e0.status.as_str(), e0.output.as_deref()),
        ("completed", Some(r#"{"n":0}"#))
    );
    assert_eq!(
        (e0.acked_at, e0.started_at, e0.completed_at),
        (Some(t), Some(t + 1), Some(t + 2))
    );
    assert_eq!(e0.instance_id.as_deref(), Some("inst-1"));
    let e1 = store.get_execution(&rows[1].id).await.unwrap().unwrap();
    assert_eq!((e1.status.as_str(), e1.acked_at), ("queued", Some(t)));
    let e2 = store.get_execution(&rows[2].id).await.unwrap().unwrap();
    assert_eq!(
        (e2.status.as_str(), e2.acked_at, e2.started_at),
        ("running", Some(t + 5), Some(t + 5))
    );
    let e3 = store.get_execution(&rows[3].id).await.unwrap().unwrap();
    assert_eq!(
        (
            e3.status.as_str(),
            e3.error_message.as_deref(),
            e3.started_at
        ),
        ("failed", Some("boom"), Some(t + 3))
    );
    assert_eq!(
        store
            .get_execution(&rows[999].id)
            .await
            .unwrap()
            .unwrap()
            .output
            .as_deref(),
        Some("999")
    );
    // A finished execution stays as it ended: a late outcome, ack or start changes nothing.
    let late = vec![
        ExecutionReport {
            finished: Some((Err("late duplicate".into()), t + 9)),
            ..report(0)
        },
        ExecutionReport {
            acked_at: Some(t + 9),
            instance_id: Some("inst-2".into()),
            ..report(3)
        },
        ExecutionReport {
            started_at: Some(t + 9),
            ..report(10)
        },
        // A running execution acknowledged (and started) by another instance: it moves to that
        // instance, as a lone ack would move it, and keeps its start time.
        ExecutionReport {
            acked_at: Some(t + 9),
            started_at: Some(t + 9),
            instance_id: Some("inst-2".into()),
            ..report(2)
        },
    ];
    let late = store.apply_reports(&late).await.unwrap();
    assert!(late.ended.is_empty());
    assert!(
        late.refused.is_empty(),
        "replays are not refusals: {late:?}"
    );
    let moved = store.get_execution(&rows[2].id).await.unwrap().unwrap();
    assert_eq!(
        (
            moved.status.as_str(),
            moved.instance_id.as_deref(),
            moved.started_at
        ),
        ("running", Some("inst-2"), Some(t + 5))
    );
    assert_eq!(store.get_execution(&rows[0].id).await.unwrap().unwrap(), e0);
    assert_eq!(store.get_execution(&rows[3].id).await.unwrap().unwrap(), e3);
    assert_eq!(
        store
            .get_execution(&rows[10].id)
            .await
            .unwrap()
            .unwrap()
            .status,
        "completed"
    );
    // Unacknowledged now: the 1100 minus those reported on.
    assert_eq!(store.unacked_executions().await.unwrap().len(), 1100 - 994);

    // A pump is untrusted: what it reports about an execution it was never given changes
    // nothing. Another flow's execution, named by this flow's pump:
    let other = flow("victim");
    store.create_flow(&other, "test").await.unwrap();
    let victim = execution(&other.id);
    store
        .insert_executions(std::slice::from_ref(&victim))
        .await
        .unwrap();
    let forged = ExecutionReport {
        id: victim.id.clone(),
        flow_id: f.id.clone(),
        instance_id: Some("inst-1".into()),
        acked_at: Some(t),
        started_at: Some(t),
        finished: Some((Ok(r#""forged""#.into()), t)),
    };
    let applied = store
        .apply_reports(std::slice::from_ref(&forged))
        .await
        .unwrap();
    assert!(applied.ended.is_empty() && applied.ended_ids.is_empty());
    assert_eq!(
        applied.refused.iter().map(|r| r.reason).collect::<Vec<_>>(),
        [RefusedBecause::NotThisFlows]
    );
    for r in [
        ExecutionReport {
            finished: None,
            started_at: None,
            ..forged.clone()
        },
        ExecutionReport {
            finished: None,
            ..forged.clone()
        },
    ] {
        let applied = store.apply_reports(&[r]).await.unwrap();
        assert_eq!(applied.refused.len(), 1, "a forged ack or start is refused");
    }
    let untouched = store.get_execution(&victim.id).await.unwrap().unwrap();
    assert_eq!(
        (
            untouched.status.as_str(),
            untouched.acked_at,
            untouched.instance_id,
            untouched.output
        ),
        ("queued", None, None, None)
    );
    // The victim's own pump, in the same read as the forgery, is applied as if alone.
    let own = ExecutionReport {
        flow_id: other.id.clone(),
        instance_id: Some("victim-inst".into()),
        finished: Some((Ok(r#""real""#.into()), t + 1)),
        ..forged.clone()
    };
    let applied = store.apply_reports(&[forged.clone(), own]).await.unwrap();
    assert_eq!(applied.refused.len(), 1);
    assert!(applied
        .ended_ids
        .contains(&(other.id.clone(), victim.id.clone())));
    let done = store.get_execution(&victim.id).await.unwrap().unwrap();
    assert_eq!(
        (done.output.as_deref(), done.instance_id.as_deref()),
        (Some(r#""real""#), Some("victim-inst"))
    );

    // An outcome alone from an instance that does not hold the execution (an orphaned pump of
    // the same flow) is refused; the holder's own outcome is applied.
    let held = execution(&f.id);
    store
        .insert_executions(std::slice::from_ref(&held))
        .await
        .unwrap();
    let holder = ExecutionReport {
        id: held.id.clone(),
        flow_id: f.id.clone(),
        instance_id: Some("new".into()),
        acked_at: Some(t),
        ..ExecutionReport::default()
    };
    store
        .apply_reports(std::slice::from_ref(&holder))
        .await
        .unwrap();
    let stale = ExecutionReport {
        instance_id: Some("old".into()),
        acked_at: None,
        finished: Some((Ok("1".into()), t)),
        ..holder.clone()
    };
    let applied = store.apply_reports(&[stale]).await.unwrap();
    assert_eq!(
        applied.refused.iter().map(|r| r.reason).collect::<Vec<_>>(),
        [RefusedBecause::OtherInstance]
    );
    let applied = store
        .apply_reports(&[ExecutionReport {
            acked_at: None,
            finished: Some((Ok("2".into()), t)),
            ..holder
        }])
        .await
        .unwrap();
    assert_eq!(applied.ended_ids.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_batch_suite_passes_on_sqlite() {
    let dir = TempDir::new("pumphouse-store-batch");
    let db = dir.0.join("s.db");
    let url = format!("sqlite://{}", db.display());
    let store = Store::connect(&url).await.unwrap();
    let empty = std::fs::metadata(&db).unwrap().len();
    batch_suite(store.clone()).await;
    // The log is copied into the database by the store's own checkpoints (SQLite's automatic
    // ones are off), so the file grows by the 1,100 rows while the store stays open.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while std::fs::metadata(&db).unwrap().len() < empty + 100 * 1024 {
        assert!(
            std::time::Instant::now() < deadline,
            "the write-ahead log was never checkpointed into {}",
            db.display()
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_batch_suite_passes_on_postgresql() {
    let pg = PostgresServer::start();
    batch_suite(Store::connect(&pg.url()).await.unwrap()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_store_suite_passes_on_sqlite() {
    let dir = TempDir::new("pumphouse-store");
    let url = format!("sqlite://{}", dir.0.join("s.db").display());
    store_suite(Store::connect(&url).await.unwrap()).await;
    // Reopening runs no migration twice and keeps the data.
    let again = Store::connect(&url).await.unwrap();
    assert_eq!(again.list_flows("t1").await.unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_store_suite_passes_on_postgresql() {
    let pg = PostgresServer::start();
    store_suite(Store::connect(&pg.url()).await.unwrap()).await;
    let again = Store::connect(&pg.url()).await.unwrap();
    assert_eq!(again.list_flows("t1").await.unwrap().len(), 1);
}

#[tokio::test]
async fn an_unknown_store_url_says_which_ones_work() {
    let err = Store::connect("mysql://x").await.err().unwrap();
    assert!(
        err.to_string().contains("use sqlite://PATH or postgres://"),
        "{err}"
    );
}

/// How many of `holders`, all asking at once at `now`, get the lease `name`, with their fences.
async fn race_for_lease(store: &Store, name: &str, holders: usize, now: i64) -> Vec<(String, i64)> {
    let mut racers = tokio::task::JoinSet::new();
    for i in 0..holders {
        let store = store.clone();
        let (name, holder) = (name.to_string(), format!("racer-{i}"));
        racers.spawn(async move {
            let got = store
                .acquire_lease(&name, &holder, 10_000, now)
                .await
                .unwrap();
            got.map(|fence| (holder, fence))
        });
    }
    let mut winners = Vec::new();
    while let Some(got) = racers.join_next().await {
        winners.extend(got.unwrap());
    }
    winners
}

async fn lease_suite(store: Store) {
    // Times are passed in, so expiry is a matter of arithmetic, not sleeping.
    let t0 = 1_000_000;
    let ttl = 10_000;
    assert_eq!(store.lease_fence("leader").await.unwrap(), None);

    // The first holder gets fence 1; renewing keeps it and moves the expiry.
    assert_eq!(
        store.acquire_lease("leader", "a", ttl, t0).await.unwrap(),
        Some(1)
    );
    assert_eq!(
        store.lease_fence("leader").await.unwrap(),
        Some(("a".into(), 1, t0 + ttl))
    );
    let t1 = t0 + 5_000;
    assert_eq!(
        store.acquire_lease("leader", "a", ttl, t1).await.unwrap(),
        Some(1)
    );
    assert_eq!(
        store.lease_fence("leader").await.unwrap(),
        Some(("a".into(), 1, t1 + ttl)),
        "renewal extends the expiry"
    );

    // Another holder is refused while the lease runs, even past the first expiry.
    assert_eq!(
        store.acquire_lease("leader", "b", ttl, t1).await.unwrap(),
        None
    );
    assert_eq!(
        store
            .acquire_lease("leader", "b", ttl, t0 + ttl)
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        store.lease_fence("leader").await.unwrap(),
        Some(("a".into(), 1, t1 + ttl)),
        "a refused holder changes nothing"
    );

    // Once it has expired the other takes over with the next fence, and the old holder is out.
    let t2 = t1 + ttl;
    assert_eq!(
        store.acquire_lease("leader", "b", ttl, t2).await.unwrap(),
        Some(2)
    );
    assert_eq!(
        store.acquire_lease("leader", "a", ttl, t2).await.unwrap(),
        None
    );
    assert_eq!(
        store.lease_fence("leader").await.unwrap(),
        Some(("b".into(), 2, t2 + ttl))
    );

    // Only the holder can release; after that the lease is free at once.
    assert!(!store.release_lease("leader", "a").await.unwrap());
    assert_eq!(
        store
            .acquire_lease("leader", "a", ttl, t2 + 1)
            .await
            .unwrap(),
        None
    );
    assert!(store.release_lease("leader", "b").await.unwrap());
    assert_eq!(
        store.lease_fence("leader").await.unwrap(),
        Some(("b".into(), 2, 0)),
        "a released lease keeps its fence"
    );
    assert_eq!(
        store
            .acquire_lease("leader", "a", ttl, t2 + 1)
            .await
            .unwrap(),
        Some(3)
    );
    assert!(!store.release_lease("leader", "b").await.unwrap());
    assert!(!store.release_lease("nobody-took-this", "a").await.unwrap());

    // Leases are independent of each other.
    assert_eq!(
        store.acquire_lease("other", "b", ttl, t2).await.unwrap(),
        Some(1)
    );
    assert_eq!(
        store.lease_fence("leader").await.unwrap().map(|l| l.1),
        Some(3)
    );

    // Twenty replicas racing for an expired lease: exactly one wins, with the next fence.
    let t3 = t2 + 1 + ttl;
    let winners = race_for_lease(&store, "leader", 20, t3).await;
    assert_eq!(winners.len(), 1, "exactly one winner: {winners:?}");
    let (winner, fence) = &winners[0];
    assert_eq!(*fence, 4);
    assert_eq!(
        store.lease_fence("leader").await.unwrap(),
        Some((winner.clone(), 4, t3 + 10_000))
    );
    // And for a lease nobody has taken yet (racing inserts rather than updates).
    let winners = race_for_lease(&store, "fresh", 20, t3).await;
    assert_eq!(winners.len(), 1, "exactly one winner: {winners:?}");
    assert_eq!(winners[0].1, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_lease_suite_passes_on_sqlite() {
    let dir = TempDir::new("pumphouse-lease");
    let url = format!("sqlite://{}", dir.0.join("s.db").display());
    lease_suite(Store::connect(&url).await.unwrap()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_lease_suite_passes_on_postgresql() {
    let pg = PostgresServer::start();
    lease_suite(Store::connect(&pg.url()).await.unwrap()).await;
}

/// A write transaction abandoned half-way (its task aborted, as when a leader steps down in the
/// middle of one) does not hold its locks for long: PostgreSQL ends the idle session, and the
/// lease can be renewed again. It used to block every replica's renewal for as long as the
/// connection sat unused in the pool (38 to 57 s in a review's two-replica run).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abandoned_transaction_does_not_hold_the_lease_on_postgresql() {
    let pg = PostgresServer::start();
    let store = Store::connect(&pg.url()).await.unwrap();
    let lease = store
        .acquire_lease("abandoned", "a", 60_000, now_ms())
        .await
        .unwrap();
    assert_eq!(lease, Some(1));
    let mut tx = store.begin_write().await.unwrap();
    sqlx::query("SELECT fence FROM leases WHERE name = 'abandoned' FOR UPDATE")
        .execute(&mut *tx)
        .await
        .unwrap();
    // As an aborted task leaves it: no COMMIT, no ROLLBACK sent.
    std::mem::forget(tx);
    let renewed = tokio::time::timeout(
        pumphouse_e2e::DEADLINE,
        store.acquire_lease("abandoned", "a", 60_000, now_ms()),
    )
    .await;
    assert!(
        matches!(renewed, Ok(Ok(Some(1)))),
        "the renewal waited on the abandoned transaction's lock: {renewed:?}"
    );
}

/// Flow secrets in the store: set, replace, the per-flow limit, delete, a key rotation that is
/// all or nothing, and secrets going with their flow.
async fn secrets_suite(store: Store) {
    use pumphouse::secrets::{reencrypt, MasterKey, ReencryptError};
    use pumphouse::store::SecretPut;
    let key = || MasterKey::from_base64(&MasterKey::generate_base64(), "").unwrap();
    let (k1, k2, k3) = (key(), key(), key());
    store.ensure_tenant("t1", "Tenant one").await.unwrap();
    let (a, b) = (flow("sa"), flow("sb"));
    store.create_flow(&a, "test").await.unwrap();
    store.create_flow(&b, "test").await.unwrap();

    let put = |f: &FlowRecord, name: &str, k: &MasterKey| {
        let sealed = k.seal(&f.id, name, b"value");
        let (store, id, name) = (store.clone(), f.id.clone(), name.to_string());
        async move {
            store
                .put_secret(&id, &name, &sealed, 2, "test")
                .await
                .unwrap()
        }
    };
    assert_eq!(put(&a, "ONE", &k1).await, SecretPut::Created);
    assert_eq!(put(&a, "ONE", &k1).await, SecretPut::Replaced);
    assert_eq!(put(&a, "TWO", &k1).await, SecretPut::Created);
    assert_eq!(put(&a, "THREE", &k1).await, SecretPut::TooMany { limit: 2 });
    assert_eq!(
        put(&a, "TWO", &k1).await,
        SecretPut::Replaced,
        "at the limit, replacing still works"
    );
    assert_eq!(put(&b, "ONE", &k1).await, SecretPut::Created);
    let names: Vec<_> = store
        .secret_names(&a.id)
        .await
        .unwrap()
        .into_iter()
        .map(|s| (s.name, s.key_id))
        .collect();
    assert_eq!(
        names,
        [
            ("ONE".to_string(), k1.id().to_string()),
            ("TWO".to_string(), k1.id().to_string())
        ]
    );
    assert!(store.delete_secret(&a.id, "TWO", "test").await.unwrap());
    assert!(!store.delete_secret(&a.id, "TWO", "test").await.unwrap());
    let reasons: Vec<_> = store
        .flow_events(&a.id, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.reason)
        .collect();
    assert!(
        reasons.contains(&"secret `ONE` set".to_string())
            && reasons.contains(&"secret `TWO` deleted".to_string()),
        "{reasons:?}"
    );

    // Rotation: all resealed under k2 and still opening to the same value.
    let done = reencrypt(&store, &k1, &k2).await.unwrap();
    assert_eq!((done.resealed, done.already), (2, 0));
    for (name, sealed) in store.sealed_secrets(&a.id).await.unwrap() {
        assert_eq!(&*k2.open(&a.id, &name, &sealed).unwrap(), "value");
    }
    // One secret under a third key: the whole rotation fails and changes nothing.
    assert_eq!(put(&b, "ROGUE", &k3).await, SecretPut::Created);
    let before = store.sealed_secrets(&a.id).await.unwrap();
    let err = reencrypt(&store, &k2, &k1).await.unwrap_err();
    assert!(matches!(err, ReencryptError::UnknownKey { .. }), "{err}");
    assert_eq!(store.sealed_secrets(&a.id).await.unwrap(), before);

    // Deleting a flow deletes its secrets.
    assert!(store.delete_flow(&b.id).await.unwrap());
    assert!(store.sealed_secrets(&b.id).await.unwrap().is_empty());
    let mut rewrite = store.rewrite_secrets().await.unwrap();
    assert!(rewrite
        .all()
        .await
        .unwrap()
        .iter()
        .all(|s| s.flow_id == a.id));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_secrets_suite_passes_on_sqlite() {
    let dir = TempDir::new("pumphouse-store");
    let url = format!("sqlite://{}", dir.0.join("s.db").display());
    secrets_suite(Store::connect(&url).await.unwrap()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_secrets_suite_passes_on_postgresql() {
    let pg = PostgresServer::start();
    secrets_suite(Store::connect(&pg.url()).await.unwrap()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_started_orchestrator_keeps_its_sqlite_file_and_wal_private_to_its_user() {
    use pumphouse_e2e::{manifest, Backend, TestApp};
    use std::os::unix::fs::PermissionsExt as _;
    let app = TestApp::spawn(Backend::Process).await;
    app.create_flow(&manifest(
        &pumphouse_e2e::unique("private"),
        "",
        "    - log: x\n",
    ))
    .await;
    let db = app
        .store_url
        .strip_prefix("sqlite://")
        .expect("a SQLite store");
    for file in [db.to_string(), format!("{db}-wal")] {
        let mode = std::fs::metadata(&file)
            .unwrap_or_else(|e| panic!("{file}: {e}"))
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600, "{file} has mode {mode:o}");
    }
}

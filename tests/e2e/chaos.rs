//! Chaos, bounded in count and time, loopback only: a few thousand webhooks across several
//! flows and two replicas while pumps are killed, a replica is killed and restarted, and Redis
//! restarts. Every accepted trigger must complete; duplicates are counted; lost must be zero.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::stream::{self, StreamExt as _};
use pumphouse_e2e::{manifest, Backend, PostgresServer, TestApp, TestFlow};
use serde_json::Value;

const FLOWS: usize = 4;
const CONCURRENCY: usize = 16;

fn webhooks() -> usize {
    std::env::var("CHAOS_WEBHOOKS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000)
}

/// Waits until `progress` reaches `n`.
async fn reached(progress: &AtomicUsize, n: usize) {
    let started = Instant::now();
    while progress.load(Ordering::SeqCst) < n {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "the load stalled at {}",
            progress.load(Ordering::SeqCst)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn kill_a_pump(app: &TestApp, flow: &TestFlow) {
    if let Some(c) = app.container(flow).await {
        if c.state.and_then(|s| s.running) == Some(true) {
            let docker = pumphouse_e2e::docker().await;
            let _ = docker
                .kill_container(
                    &c.id.unwrap(),
                    None::<bollard::query_parameters::KillContainerOptions>,
                )
                .await;
            println!("chaos: killed the pump of {}", flow.name);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_loses_no_accepted_trigger() {
    let total = webhooks();
    let mut app = TestApp::spawn_replicas(
        Backend::Docker,
        2,
        Some(PostgresServer::start()),
        &[
            "--lease-ttl",
            "2s",
            "--restart-backoff",
            "100ms",
            "--crash-limit",
            "20",
            // A start abandoned by a killed leader is relaunched by the next resync past the
            // start timeout (20 s here): sooner than the default 30 s interval.
            "--resync-interval",
            "5s",
        ],
    )
    .await;
    let mut flows = Vec::new();
    for i in 0..FLOWS {
        // Half the flows scale to zero between bursts, so wakes are part of the mix.
        let idle = if i % 2 == 0 {
            "keepAlive: true\n"
        } else {
            "idleTimeout: 2s\n"
        };
        let extra = format!("{idle}deliveryTimeout: 5m\n");
        let f = app
            .create_flow(&manifest(
                &format!("chaos-{i}"),
                &extra,
                "    - append: {key: runs, value: '{{trigger.id}}'}\n    - respond: ok\n",
            ))
            .await;
        app.start(&f).await;
        app.wait_status(&f, "running").await;
        flows.push(f);
    }

    let progress = Arc::new(AtomicUsize::new(0));
    let accepted = Arc::new(std::sync::Mutex::new(Vec::<(usize, String)>::new()));
    let refused = Arc::new(AtomicUsize::new(0));
    let load = {
        let urls: Vec<Vec<String>> = flows
            .iter()
            .map(|f| {
                (0..2)
                    .map(|r| {
                        format!(
                            "{}/api/triggers/{}/webhook/{}",
                            app.replica(r),
                            f.id,
                            f.token
                        )
                    })
                    .collect()
            })
            .collect();
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap();
        let (progress, accepted, refused) = (progress.clone(), accepted.clone(), refused.clone());
        tokio::spawn(async move {
            stream::iter(0..total)
                .for_each_concurrent(CONCURRENCY, |n| {
                    let (flow, replica) = (n % FLOWS, (n / FLOWS) % 2);
                    let url = urls[flow][replica].clone();
                    let (http, progress, accepted, refused) = (
                        http.clone(),
                        progress.clone(),
                        accepted.clone(),
                        refused.clone(),
                    );
                    async move {
                        match http.post(url).body(format!("{{\"n\": {n}}}")).send().await {
                            Ok(r) if r.status().as_u16() == 202 => {
                                let v: Value = r.json().await.unwrap_or(Value::Null);
                                if let Some(id) = v["execution_id"].as_str() {
                                    accepted.lock().unwrap().push((flow, id.to_string()));
                                }
                            }
                            _ => {
                                refused.fetch_add(1, Ordering::SeqCst);
                            }
                        }
                        progress.fetch_add(1, Ordering::SeqCst);
                    }
                })
                .await;
        })
    };

    reached(&progress, total / 8).await;
    kill_a_pump(&app, &flows[0]).await;
    reached(&progress, total / 4).await;
    println!("chaos: killing replica 1");
    app.kill_replica(1);
    reached(&progress, total * 3 / 8).await;
    app.start_replica(1).await;
    println!("chaos: replica 1 is back");
    reached(&progress, total / 2).await;
    println!("chaos: restarting Redis");
    app.redis.stop();
    app.redis.restart().await;
    reached(&progress, total * 5 / 8).await;
    kill_a_pump(&app, &flows[2]).await;
    reached(&progress, total * 3 / 4).await;
    let leader = app.leaders().await;
    if let [l] = leader[..] {
        println!("chaos: killing the leader, replica {l}");
        app.kill_replica(l);
        reached(&progress, total * 7 / 8).await;
        app.start_replica(l).await;
    }
    load.await.unwrap();

    // Every accepted trigger must finish; give the system time to settle, by events.
    let accepted = accepted.lock().unwrap().clone();
    let started = Instant::now();
    let (completed, failed) = loop {
        let mut completed = 0;
        let mut failed = Vec::new();
        // The newest 1000 of each flow in one call; older ones one by one.
        let mut by_id: HashMap<String, String> = HashMap::new();
        for f in &flows {
            let (_, v) = app
                .get(&format!("/api/flows/{}/executions?limit=1000", f.id))
                .await;
            for e in v.as_array().cloned().unwrap_or_default() {
                by_id.insert(
                    e["id"].as_str().unwrap().to_string(),
                    e["status"].as_str().unwrap().to_string(),
                );
            }
        }
        let mut pending = 0;
        for (_, id) in &accepted {
            match by_id.get(id).map(String::as_str) {
                Some("completed") => completed += 1,
                Some("failed") => failed.push(id.clone()),
                Some(_) => pending += 1,
                // Older than the newest 1000 of its flow: look it up alone.
                None => {
                    let flow = &flows[accepted.iter().find(|(_, i)| i == id).unwrap().0];
                    let (_, e) = app
                        .get(&format!("/api/flows/{}/executions/{id}", flow.id))
                        .await;
                    match e["status"].as_str() {
                        Some("completed") => completed += 1,
                        Some("failed") => failed.push(id.clone()),
                        _ => pending += 1,
                    }
                }
            }
        }
        if pending == 0 {
            break (completed, failed);
        }
        if started.elapsed() > Duration::from_secs(60) {
            let stuck = accepted.iter().filter(|(_, id)| {
                !matches!(
                    by_id.get(id).map(String::as_str),
                    Some("completed") | Some("failed")
                )
            });
            for (flow, id) in stuck.take(5) {
                let f = &flows[*flow];
                let (_, e) = app
                    .get(&format!("/api/flows/{}/executions/{id}", f.id))
                    .await;
                let (_, s) = app.get(&format!("/api/flows/{}/status", f.id)).await;
                println!(
                    "chaos: stuck {e}\n  flow {} {} {}",
                    s["status"], s["reason"], s["pump"]
                );
            }
            panic!("{pending} accepted triggers never finished");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };

    let mut runs = 0;
    let mut distinct = HashSet::new();
    let mut redis = redis::Client::open(app.redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    for f in &flows {
        let list: Vec<String> = redis::cmd("LRANGE")
            .arg(format!("tenant:default:flow:{}:runs", f.id))
            .arg(0)
            .arg(-1)
            .query_async(&mut redis)
            .await
            .unwrap();
        runs += list.len();
        distinct.extend(
            list.into_iter()
                .map(|v| serde_json::from_str::<String>(&v).unwrap_or(v)),
        );
    }
    let accepted_ids: HashSet<&String> = accepted.iter().map(|(_, id)| id).collect();
    let ran_accepted = accepted_ids
        .iter()
        .filter(|id| distinct.contains(**id))
        .count();
    let lost = accepted.len() - completed;
    println!(
        "chaos: sent {total}, accepted {}, refused or cut {}, completed {completed}, failed {}, lost {lost}, pump runs {runs}, duplicate runs {}, accepted triggers the pumps ran {ran_accepted}",
        accepted.len(),
        refused.load(Ordering::SeqCst),
        failed.len(),
        runs - distinct.len(),
    );
    for id in failed.iter().take(5) {
        let flow = &flows[accepted.iter().find(|(_, i)| i == id).unwrap().0];
        let (_, e) = app
            .get(&format!("/api/flows/{}/executions/{id}", flow.id))
            .await;
        println!("chaos: failed execution {id}: {e}");
    }
    assert!(
        failed.is_empty(),
        "{} accepted triggers failed",
        failed.len()
    );
    assert_eq!(lost, 0, "every accepted trigger completed");
    assert_eq!(
        ran_accepted,
        accepted.len(),
        "and a pump really ran each of them"
    );
    assert!(accepted.len() > total / 2, "most webhooks were accepted");
}

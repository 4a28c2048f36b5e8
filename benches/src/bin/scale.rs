//! pumphouse at scale on one machine, each figure beside a baseline from the same run:
//! - `fleet`: 1,000 flows registered and 200 pumps started at once on Docker: orchestrator RSS,
//!   pump RSS idle and under load, the time to start them all; then an orchestrator restart
//!   with the 200 running: time to adopt them, and whether any was restarted;
//! - (within `fleet`) mass wake: 100 flows at zero triggered at once, until every trigger is acknowledged;
//! - `reaper`: the orchestrator's CPU with 10,000 idle flows registered against none.
//!
//! Run with `ops/bench-scale.sh [fleet|reaper]...` (release build, release pump image).

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::{stream, StreamExt as _};
use pumphouse_bench::scale::{
    bare_docker_runs, cpu_time, docker, env_number, line, mib, pump_containers, remove_cluster,
    remove_dead_bench_containers, rss_kib, table_header, BarePump, Orchestrator, Redis,
};
use pumphouse_bench::{ms, Samples};

const DEADLINE: Duration = Duration::from_secs(600);

struct Settings {
    image: String,
    flows: usize,
    pumps: usize,
    wake: usize,
    idle_flows: usize,
    window: Duration,
    load: Duration,
    loaded_pumps: usize,
    /// The reaper part's backend (the fleet part is Docker's by definition).
    backend: String,
}

fn manifest(name: &str, image: &str, extra: &str) -> String {
    format!(
        "name: {name}\nimage: {image}\n{extra}rateLimit: {{perSecond: 1000000, burst: 1000000}}\nconfig:\n  steps:\n    - respond: ok\n"
    )
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("a clock after 1970")
        .as_millis() as i64
}

/// Creates flows named `{prefix}-{i}`, 16 requests at a time; returns (id, token) in order.
async fn create_flows(
    orch: &Orchestrator,
    prefix: &str,
    n: usize,
    image: &str,
    extra: &str,
) -> Vec<(String, String)> {
    stream::iter(0..n)
        .map(|i| {
            let text = manifest(&format!("{prefix}-{i}"), image, extra);
            async move { orch.create_flow(&text).await }
        })
        .buffered(16)
        .collect()
        .await
}

/// Waits until every flow in `ids` is `running`; returns each one's time from `t0_ms` to its
/// transition to `running` as the store recorded it (ms precision). Polling the API only tells
/// when a poll saw it, and under a start storm one poll can take seconds.
async fn time_to_running(
    orch: &Orchestrator,
    ids: &[String],
    t0: Instant,
    t0_ms: i64,
) -> Vec<Duration> {
    wait_seen_running(orch, ids, t0).await;
    let pool = sqlx::SqlitePool::connect(&orch.store_url)
        .await
        .expect("the SQLite store");
    let rows: Vec<(String, i64)> = sqlx::query_as(
        "SELECT flow_id, MIN(at) FROM flow_events WHERE to_status = 'running' AND at >= ? GROUP BY flow_id",
    )
    .bind(t0_ms)
    .fetch_all(&pool)
    .await
    .expect("reading the flows' transitions");
    pool.close().await;
    let at: HashMap<String, i64> = rows.into_iter().collect();
    ids.iter()
        .map(|id| {
            let ms = at
                .get(id)
                .unwrap_or_else(|| panic!("flow {id} has no transition to running"));
            Duration::from_millis((ms - t0_ms).max(0) as u64)
        })
        .collect()
}

/// Polls (every 25 ms) until every flow in `ids` has been seen `running`.
async fn wait_seen_running(orch: &Orchestrator, ids: &[String], t0: Instant) {
    let mut seen: HashMap<String, Duration> = HashMap::new();
    while seen.len() < ids.len() {
        let now = orch.statuses().await;
        let at = t0.elapsed();
        for id in ids {
            if now.get(id).map(String::as_str) == Some("running") {
                seen.entry(id.clone()).or_insert(at);
            }
        }
        assert!(
            t0.elapsed() < DEADLINE,
            "{} of {} pumps never became running; log:\n{}",
            ids.len() - seen.len(),
            ids.len(),
            orch.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

fn ms_samples(d: &[Duration]) -> Samples {
    Samples::new(d.iter().map(|d| ms(*d)).collect())
}

fn fmt_ms(v: f64) -> String {
    format!("{v:.0} ms")
}

fn fmt_mib(kib: u64) -> String {
    format!("{:.1} MiB", mib(kib))
}

/// RSS of each running pump container's main process.
async fn pump_rss(d: &bollard::Docker, cluster: &str, flows: &[String]) -> Vec<u64> {
    let containers = pump_containers(d, cluster).await;
    flows
        .iter()
        .filter_map(|f| containers.get(f))
        .filter(|c| c.running && c.pid > 0)
        .filter_map(|c| rss_kib(c.pid))
        .collect()
}

fn pct_kib(v: &[u64], p: f64) -> u64 {
    let mut v = v.to_vec();
    v.sort_unstable();
    if v.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1]
}

/// Sends webhooks to `flows` for `secs`, one sequential caller per flow; returns how many
/// were accepted.
async fn load(orch: &Orchestrator, flows: &[(String, String)], secs: Duration) -> usize {
    let until = Instant::now() + secs;
    let callers = flows.iter().map(|(id, token)| async move {
        let mut n = 0;
        while Instant::now() < until {
            orch.webhook(id, token).await;
            n += 1;
        }
        n
    });
    futures_util::future::join_all(callers).await.iter().sum()
}

async fn fleet(s: &Settings) {
    let d = docker().await;
    let redis = Redis::start();
    let mut orch = Orchestrator::start(&redis, None, &s.image, &[]).await;
    let cluster = orch.cluster.clone();

    // Baselines that need the orchestrator empty.
    orch.terminate();
    let empty_restart = orch.spawn_and_wait().await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_empty = rss_kib(orch.pid()).unwrap_or(0);
    let redis_idle = rss_kib(redis.pid()).unwrap_or(0);

    let spare = s.flows.saturating_sub(s.pumps + s.wake);
    eprintln!(
        "scale: creating {} flows ({} to run, {} to wake, {spare} never started)",
        s.flows, s.pumps, s.wake
    );
    let running = create_flows(&orch, "fleet", s.pumps, &s.image, "keepAlive: true\n").await;
    let wakers = create_flows(&orch, "wake", s.wake, &s.image, "idleTimeout: 1s\n").await;
    create_flows(&orch, "spare", spare, &s.image, "").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_registered = rss_kib(orch.pid()).unwrap_or(0);

    eprintln!("scale: {} bare docker runs at once", s.pumps);
    let bare_start = bare_docker_runs(&s.image, &redis.url(), s.pumps, "subscribed").await;

    eprintln!("scale: starting {} pumps at once", s.pumps);
    let ids: Vec<String> = running.iter().map(|(id, _)| id.clone()).collect();
    let t0_ms = now_ms();
    let t0 = Instant::now();
    futures_util::future::join_all(ids.iter().map(|id| orch.action(id, "start"))).await;
    let start_times = time_to_running(&orch, &ids, t0, t0_ms).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let rss_running = rss_kib(orch.pid()).unwrap_or(0);
    let pumps_idle = pump_rss(&d, &cluster, &ids).await;
    assert_eq!(
        pumps_idle.len(),
        ids.len(),
        "not every pump's RSS could be read"
    );
    let bare = BarePump::start(&redis.url()).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let bare_idle = rss_kib(bare.pid()).unwrap_or(0);

    eprintln!("scale: load on {} pumps for {:?}", s.loaded_pumps, s.load);
    let loaded = &running[..s.loaded_pumps.min(running.len())];
    let loaded_ids: Vec<String> = loaded.iter().map(|(id, _)| id.clone()).collect();
    let mut pumps_loaded_max: HashMap<usize, u64> = HashMap::new();
    let mut orch_loaded_max = 0;
    let sampling = async {
        let until = Instant::now() + s.load;
        while Instant::now() < until {
            for (i, rss) in pump_rss(&d, &cluster, &loaded_ids)
                .await
                .into_iter()
                .enumerate()
            {
                let m = pumps_loaded_max.entry(i).or_default();
                *m = (*m).max(rss);
            }
            orch_loaded_max = orch_loaded_max.max(rss_kib(orch.pid()).unwrap_or(0));
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    };
    let (sent, ()) = tokio::join!(load(&orch, loaded, s.load), sampling);
    let per_pump_rate = sent as f64 / loaded.len() as f64 / s.load.as_secs_f64();
    let bare_loaded = bare_under_load(&redis.url(), &bare, per_pump_rate, s.load).await;
    drop(bare);
    let pumps_loaded: Vec<u64> = pumps_loaded_max.into_values().collect();
    drain(&orch, &loaded_ids).await;

    eprintln!(
        "scale: restarting the orchestrator with {} pumps running",
        s.pumps
    );
    let before_restart = one_webhook_each(&orch, &running).await;
    let before = pump_containers(&d, &cluster).await;
    orch.terminate();
    let t0 = Instant::now();
    let ready = orch.spawn_and_wait().await;
    orch.wait_all(&ids, "running", DEADLINE).await;
    let all_running = t0.elapsed();
    // Adopted means delivering: one webhook to each pump, acknowledged by the same container.
    let after_restart = one_webhook_each(&orch, &running).await;
    let after = pump_containers(&d, &cluster).await;
    let restarted = ids
        .iter()
        .filter(|id| {
            let (b, a) = (before.get(*id), after.get(*id));
            !(b.is_some() && b == a && a.is_some_and(|c| c.running))
        })
        .count();

    let start = ms_samples(&start_times);
    let bare_start = ms_samples(&bare_start);
    println!();
    println!(
        "fleet: {} flows registered, {} pumps on Docker (host network), image {}",
        s.flows, s.pumps, s.image
    );
    table_header();
    line(
        "orchestrator RSS, no flows",
        fmt_mib(rss_empty),
        "redis-server RSS, idle",
        fmt_mib(redis_idle),
        "",
    );
    line(
        &format!("orchestrator RSS, {} flows, no pumps", s.flows),
        fmt_mib(rss_registered),
        "",
        String::new(),
        "",
    );
    line(
        &format!("orchestrator RSS, {} flows, {} pumps", s.flows, s.pumps),
        fmt_mib(rss_running),
        "",
        String::new(),
        "<= 100 MiB",
    );
    line(
        &format!("  same, under load ({sent} webhooks, max)"),
        fmt_mib(orch_loaded_max),
        "",
        String::new(),
        "",
    );
    line(
        "pump RSS idle, p50 of pumps",
        fmt_mib(pct_kib(&pumps_idle, 50.0)),
        "bare pump process, idle",
        fmt_mib(bare_idle),
        "<= 10 MiB",
    );
    line(
        "pump RSS idle, max of pumps",
        fmt_mib(pct_kib(&pumps_idle, 100.0)),
        "",
        String::new(),
        "<= 10 MiB",
    );
    line(
        &format!(
            "pump RSS under load ({per_pump_rate:.0}/s each), max of {}",
            pumps_loaded.len()
        ),
        fmt_mib(pct_kib(&pumps_loaded, 100.0)),
        "bare pump, same rate via PUBLISH",
        fmt_mib(bare_loaded),
        "",
    );
    line(
        &format!("start {} at once: p50 to running", s.pumps),
        fmt_ms(start.pct(50.0)),
        &format!("{} bare docker runs: p50", s.pumps),
        fmt_ms(bare_start.pct(50.0)),
        &format!("ratio {:.2}x", start.pct(50.0) / bare_start.pct(50.0)),
    );
    line(
        &format!("start {} at once: all running", s.pumps),
        fmt_ms(start.pct(100.0)),
        "  to subscribed: all",
        fmt_ms(bare_start.pct(100.0)),
        &format!("ratio {:.2}x", start.pct(100.0) / bare_start.pct(100.0)),
    );
    line(
        &format!("restart with {}: ready (adopted)", s.pumps),
        fmt_ms(ms(ready)),
        "restart, no flows: ready",
        fmt_ms(ms(empty_restart)),
        "<= 5000 ms",
    );
    line(
        "  all shown running",
        fmt_ms(ms(all_running)),
        "",
        String::new(),
        "",
    );
    line(
        "  then one webhook each -> ack: p50",
        fmt_ms(after_restart.pct(50.0)),
        "the same before the restart: p50",
        fmt_ms(before_restart.pct(50.0)),
        "",
    );
    line(
        "  then one webhook each -> ack: p100",
        fmt_ms(after_restart.pct(100.0)),
        "  p100",
        fmt_ms(before_restart.pct(100.0)),
        "",
    );
    line(
        "  pumps restarted (container id/start time)",
        format!("{restarted} of {}", ids.len()),
        "",
        String::new(),
        "0",
    );
    // Free Docker before the wake part: the 200 keep-alive pumps are not needed any more.
    stream::iter(ids.iter())
        .for_each_concurrent(16, |id| orch.action_going_on(id, "stop"))
        .await;
    orch.wait_all(&ids, "stopped", DEADLINE).await;
    remove_cluster(&d, &cluster).await;

    let wake = mass_wake(s, &d, &orch, &redis, &wakers).await;

    println!();
    println!(
        "wake: {} flows at zero (parked containers), one webhook each, all sent at once",
        s.wake
    );
    table_header();
    let (ours, bare) = wake;
    line(
        "webhook -> pump ack: p50",
        fmt_ms(ours.pct(50.0)),
        &format!("{} bare docker runs: p50", s.wake),
        fmt_ms(bare.pct(50.0)),
        &format!("ratio {:.2}x", ours.pct(50.0) / bare.pct(50.0)),
    );
    line(
        "webhook -> pump ack: p100",
        fmt_ms(ours.pct(100.0)),
        "  to subscribed: p100",
        fmt_ms(bare.pct(100.0)),
        &format!("ratio {:.2}x", ours.pct(100.0) / bare.pct(100.0)),
    );
}

/// Publishes triggers straight to a bare pump at `rate` a second for `secs`; returns its peak RSS.
async fn bare_under_load(redis_url: &str, pump: &BarePump, rate: f64, secs: Duration) -> u64 {
    let client = redis::Client::open(redis_url).expect("a URL");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("Redis");
    let channel = pumphouse_pump::channels::trigger(&pump.flow_id);
    let gap = Duration::from_secs_f64(1.0 / rate.max(1.0));
    let t0 = Instant::now();
    let mut peak = 0;
    let mut seq = 0i64;
    while t0.elapsed() < secs {
        seq += 1;
        let trigger = serde_json::json!({"id": uuid::Uuid::new_v4().to_string(), "kind": "webhook",
            "payload": {}, "attempt": 1, "seq": seq});
        let _: i64 = redis::cmd("PUBLISH")
            .arg(&channel)
            .arg(trigger.to_string())
            .query_async(&mut conn)
            .await
            .expect("PUBLISH");
        if seq % 10 == 0 {
            peak = peak.max(rss_kib(pump.pid()).unwrap_or(0));
        }
        tokio::time::sleep(gap).await;
    }
    peak.max(rss_kib(pump.pid()).unwrap_or(0))
}

/// Waits until the newest execution of each flow has finished: the pumps ran the load's
/// backlog, so what comes next is not measured behind it.
async fn drain(orch: &Orchestrator, flows: &[String]) {
    let t0 = Instant::now();
    for flow in flows {
        loop {
            let v: serde_json::Value = orch
                .http
                .get(orch.url(&format!("/api/flows/{flow}/executions?limit=1")))
                .send()
                .await
                .expect("answered")
                .json()
                .await
                .expect("JSON");
            if matches!(v[0]["status"].as_str(), Some("completed" | "failed") | None) {
                break;
            }
            assert!(t0.elapsed() < DEADLINE, "the load's backlog never drained");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// One webhook to each flow, 32 at a time; returns each trigger's time from being recorded
/// (`received_at`) to its pump's acknowledgement (`acked_at`), as the store has them.
async fn one_webhook_each(orch: &Orchestrator, flows: &[(String, String)]) -> Samples {
    let executions: Vec<(String, String)> = stream::iter(flows.iter())
        .map(|(id, token)| async move { (id.clone(), orch.webhook(id, token).await) })
        .buffer_unordered(32)
        .collect()
        .await;
    let acked = acked_times(orch, &executions).await;
    Samples::new(acked.iter().map(|(r, a)| (a - r) as f64).collect())
}

/// Polls executions until each has `acked_at`; returns (`received_at`, `acked_at`) of each, in
/// Unix ms.
async fn acked_times(orch: &Orchestrator, executions: &[(String, String)]) -> Vec<(i64, i64)> {
    let t0 = Instant::now();
    let mut acked: HashMap<&str, (i64, i64)> = HashMap::new();
    while acked.len() < executions.len() {
        let pending: Vec<&(String, String)> = executions
            .iter()
            .filter(|(_, e)| !acked.contains_key(e.as_str()))
            .collect();
        let seen: Vec<(&str, Option<(i64, i64)>)> = stream::iter(pending)
            .map(|(flow, e)| async move {
                let v = orch.execution(flow, e).await;
                let times = v["received_at"].as_i64().zip(v["acked_at"].as_i64());
                (e.as_str(), times)
            })
            .buffer_unordered(16)
            .collect()
            .await;
        for (e, at) in seen {
            if let Some(at) = at {
                acked.insert(e, at);
            }
        }
        assert!(
            t0.elapsed() < DEADLINE,
            "{} triggers were never acknowledged; log:\n{}",
            executions.len() - acked.len(),
            orch.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    acked.into_values().collect()
}

async fn mass_wake(
    s: &Settings,
    d: &bollard::Docker,
    orch: &Orchestrator,
    redis: &Redis,
    wakers: &[(String, String)],
) -> (Samples, Samples) {
    eprintln!("scale: taking {} flows to zero", wakers.len());
    let ids: Vec<String> = wakers.iter().map(|(id, _)| id.clone()).collect();
    stream::iter(ids.iter())
        .for_each_concurrent(32, |id| orch.action(id, "start"))
        .await;
    // Only `idle` is waited for: with a 1 s idle timeout a flow can pass through `running`
    // between two polls, and `idle` comes only after it.
    orch.wait_all(&ids, "idle", DEADLINE).await;
    let t0 = Instant::now();
    loop {
        let containers = pump_containers(d, &orch.cluster).await;
        if ids
            .iter()
            .all(|id| containers.get(id).is_some_and(|c| !c.running))
        {
            break;
        }
        assert!(t0.elapsed() < DEADLINE, "pumps never parked");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;

    eprintln!("scale: waking {} flows at once", wakers.len());
    let sent_at = now_ms();
    let executions: Vec<(String, String)> = futures_util::future::join_all(
        wakers
            .iter()
            .map(|(id, token)| async move { (id.clone(), orch.webhook(id, token).await) }),
    )
    .await;
    let acked = acked_times(orch, &executions).await;
    let ours = Samples::new(acked.iter().map(|(_, a)| (a - sent_at) as f64).collect());

    eprintln!("scale: {} bare docker runs at once", wakers.len());
    let bare = bare_docker_runs(&s.image, &redis.url(), wakers.len(), "subscribed").await;
    (ours, ms_samples(&bare))
}

/// CPU the orchestrator used over `window`, in ms per second of wall time.
async fn cpu_rate(orch: &Orchestrator, window: Duration) -> f64 {
    let c0 = cpu_time(orch.pid()).expect("/proc readable");
    let t0 = Instant::now();
    tokio::time::sleep(window).await;
    let used = cpu_time(orch.pid()).expect("/proc readable") - c0;
    ms(used) / t0.elapsed().as_secs_f64()
}

async fn reaper(s: &Settings) {
    let redis = Redis::start();
    let mut orch = Orchestrator::start(&redis, None, &s.image, &[]).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    eprintln!(
        "scale: reaper, orchestrator CPU with no flows over {:?}",
        s.window
    );
    let empty = cpu_rate(&orch, s.window).await;
    let rss_empty = rss_kib(orch.pid()).unwrap_or(0);

    eprintln!("scale: creating {} flows", s.idle_flows);
    let t0 = Instant::now();
    create_flows(&orch, "idle", s.idle_flows, &s.image, "").await;
    let created = t0.elapsed();
    // Taking 10,000 flows to zero for real means starting and parking 10,000 containers,
    // which this machine cannot hold; a flow at zero is only its row, so it is written so.
    orch.terminate();
    let pool = sqlx::SqlitePool::connect(&orch.store_url)
        .await
        .expect("the SQLite store");
    sqlx::query("UPDATE flows SET status = 'idle', desired_state = 'running'")
        .execute(&pool)
        .await
        .expect("marking the flows idle");
    pool.close().await;

    let ready = orch.spawn_and_wait().await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    eprintln!(
        "scale: reaper, CPU with {} idle flows over {:?}",
        s.idle_flows, s.window
    );
    let idle = cpu_rate(&orch, s.window).await;
    let rss_idle = rss_kib(orch.pid()).unwrap_or(0);

    // The same without the periodic resync, to tell the reaper's ticks from the resync passes.
    orch.terminate();
    let at = orch
        .args
        .iter()
        .position(|a| a == "--log-format")
        .expect("the args");
    orch.args
        .splice(at..at, ["--resync-interval".to_string(), "1h".to_string()]);
    orch.spawn_and_wait().await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    eprintln!(
        "scale: reaper, the same with resync off, over {:?}",
        s.window
    );
    let ticks_only = cpu_rate(&orch, s.window).await;

    let resyncs = s.window.as_secs_f64() / 30.0;
    println!();
    println!(
        "reaper: orchestrator CPU over {:.0} s, {} idle flows (at zero) against none, {} backend; a housekeeping tick every 100 ms, a store sweep every 1 s, a resync every 30 s",
        s.window.as_secs_f64(),
        s.idle_flows,
        s.backend
    );
    table_header();
    line(
        &format!("CPU, {} idle flows (ms per s)", s.idle_flows),
        format!("{idle:.2}"),
        "no flows",
        format!("{empty:.2}"),
        "",
    );
    line(
        "  per 100 ms tick (ms)",
        format!("{:.3}", idle / 10.0),
        "",
        format!("{:.3}", empty / 10.0),
        "",
    );
    line(
        "  without the 30 s resync (ms per s)",
        format!("{ticks_only:.2}"),
        "",
        String::new(),
        "",
    );
    line(
        "  one resync pass, by difference (ms)",
        format!(
            "{:.0}",
            (idle - ticks_only) * s.window.as_secs_f64() / resyncs
        ),
        "",
        String::new(),
        "",
    );
    line(
        "orchestrator RSS",
        fmt_mib(rss_idle),
        "no flows",
        fmt_mib(rss_empty),
        "",
    );
    line(
        "restart to ready (includes a resync)",
        fmt_ms(ms(ready)),
        "",
        String::new(),
        "",
    );
    line(
        &format!("creating {} flows through the API", s.idle_flows),
        format!("{:.0}/s", s.idle_flows as f64 / created.as_secs_f64()),
        "",
        String::new(),
        "",
    );
}

fn usage() -> ! {
    eprintln!(
        "usage: scale [fleet] [reaper]   (none: both; fleet includes the mass wake)
  BENCH_PUMP_IMAGE (pumphouse/pump:bench), BENCH_FLOWS (1000), BENCH_PUMPS (200),
  BENCH_WAKE (100), BENCH_IDLE_FLOWS (10000), BENCH_WINDOW_SECS (60), BENCH_LOAD_SECS (5),
  BENCH_LOADED_PUMPS (20), BENCH_BACKEND (docker; process for the reaper part only)"
    );
    std::process::exit(2)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let mut sections: Vec<String> = std::env::args().skip(1).collect();
    if sections
        .iter()
        .any(|a| !matches!(a.as_str(), "fleet" | "reaper"))
    {
        usage();
    }
    if sections.is_empty() {
        sections = vec!["fleet".into(), "reaper".into()];
    }
    let s = Settings {
        image: std::env::var("BENCH_PUMP_IMAGE").unwrap_or_else(|_| "pumphouse/pump:bench".into()),
        flows: env_number("BENCH_FLOWS", 1000),
        pumps: env_number("BENCH_PUMPS", 200),
        wake: env_number("BENCH_WAKE", 100),
        idle_flows: env_number("BENCH_IDLE_FLOWS", 10_000),
        window: Duration::from_secs(env_number("BENCH_WINDOW_SECS", 60) as u64),
        load: Duration::from_secs(env_number("BENCH_LOAD_SECS", 5) as u64),
        loaded_pumps: env_number("BENCH_LOADED_PUMPS", 20),
        backend: std::env::var("BENCH_BACKEND").unwrap_or_else(|_| "docker".into()),
    };
    if s.backend == "docker" || sections.iter().any(|x| x == "fleet") {
        remove_dead_bench_containers(&docker().await).await;
    }
    for section in &sections {
        match section.as_str() {
            // The mass wake runs inside fleet, on its orchestrator and among its 1,000 flows.
            "fleet" => fleet(&s).await,
            _ => reaper(&s).await,
        }
    }
}

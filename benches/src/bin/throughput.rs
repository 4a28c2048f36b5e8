//! Webhook throughput with warm pumps, every accepted trigger durably recorded, on SQLite and
//! on PostgreSQL, beside a baseline server (`webhook_baseline`: axum plus one Redis PUBLISH per
//! request) on the same machine in the same run. Load from `wrk` on loopback, spread over
//! several flows whose rate limits are set out of the way.
//!
//! Run with `ops/bench-scale.sh throughput` (release build, release pump image, wrk).

use std::process::{Command, Stdio};
use std::time::Duration;

use futures_util::{stream, StreamExt as _};
use pumphouse_bench::scale::{
    docker, env_number, remove_dead_bench_containers, Orchestrator, Postgres, Redis,
};
use pumphouse_e2e::{free_port, TempDir};

/// What wrk reported for one run.
#[derive(Debug, Default)]
struct WrkRun {
    requests: u64,
    non_2xx: u64,
    errors: u64,
    secs: f64,
    p50_ms: f64,
    p99_ms: f64,
}

impl WrkRun {
    fn accepted_per_sec(&self) -> f64 {
        (self.requests - self.non_2xx) as f64 / self.secs
    }
}

/// `1.23ms`, `456.00us`, `1.20s` -> ms.
fn wrk_ms(text: &str) -> Option<f64> {
    let (num, scale) = if let Some(v) = text.strip_suffix("us") {
        (v, 0.001)
    } else if let Some(v) = text.strip_suffix("ms") {
        (v, 1.0)
    } else if let Some(v) = text.strip_suffix('s') {
        (v, 1000.0)
    } else {
        return None;
    };
    num.parse::<f64>().ok().map(|n| n * scale)
}

fn parse_wrk(out: &str) -> WrkRun {
    let mut r = WrkRun::default();
    for l in out.lines().map(str::trim) {
        let words: Vec<&str> = l.split_whitespace().collect();
        match words.as_slice() {
            ["50%", v] => r.p50_ms = wrk_ms(v).unwrap_or(f64::NAN),
            ["99%", v] => r.p99_ms = wrk_ms(v).unwrap_or(f64::NAN),
            [n, "requests", "in", secs, ..] => {
                r.requests = n.parse().unwrap_or(0);
                r.secs = secs
                    .trim_end_matches(',')
                    .trim_end_matches('s')
                    .parse()
                    .unwrap_or(f64::NAN);
            }
            ["Non-2xx", "or", "3xx", "responses:", n] => r.non_2xx = n.parse().unwrap_or(0),
            ["Socket", "errors:", rest @ ..] => {
                r.errors = rest
                    .iter()
                    .filter_map(|w| w.trim_end_matches(',').parse::<u64>().ok())
                    .sum()
            }
            _ => {}
        }
    }
    r
}

struct Load {
    secs: usize,
    connections: usize,
    threads: usize,
}

/// Runs wrk against `base` with POSTs cycling over `paths`.
fn wrk(base: &str, paths: &[String], load: &Load) -> WrkRun {
    let dir = TempDir::new("pumphouse-bench-wrk");
    let script = dir.0.join("webhooks.lua");
    let list: Vec<String> = paths.iter().map(|p| format!("\"{p}\"")).collect();
    std::fs::write(
        &script,
        format!(
            "paths = {{ {} }}\ni = 0\nrequest = function()\n  i = i + 1\n  return wrk.format(\"POST\", paths[(i % #paths) + 1], {{[\"Content-Type\"] = \"application/json\"}}, '{{\"n\":1}}')\nend\n",
            list.join(", ")
        ),
    )
    .expect("writing the wrk script");
    let out = Command::new("wrk")
        .args([
            "-t",
            &load.threads.to_string(),
            "-c",
            &load.connections.to_string(),
        ])
        .args(["-d", &format!("{}s", load.secs), "--latency", "-s"])
        .arg(&script)
        .arg(base)
        .stderr(Stdio::inherit())
        .output()
        .expect("running wrk (apt-get install -y wrk)");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "wrk failed:\n{text}");
    let run = parse_wrk(&text);
    assert!(run.requests > 0, "wrk sent nothing:\n{text}");
    run
}

fn manifest(i: usize, image: &str) -> String {
    format!(
        "name: hot-{i}\nimage: {image}\nkeepAlive: true\nrateLimit: {{perSecond: 1000000, burst: 1000000}}\nconfig:\n  steps:\n    - respond: ok\n"
    )
}

/// One store: an orchestrator with `flows` warm pumps under wrk; checks that the store holds
/// at least every accepted trigger.
async fn pumphouse(
    backend: &str,
    store: Option<&str>,
    image: &str,
    flows: usize,
    load: &Load,
) -> (WrkRun, u64) {
    let redis = Redis::start();
    let orch = Orchestrator::start_on(backend, &redis, store, image, &[]).await;
    let created: Vec<(String, String)> = stream::iter(0..flows)
        .map(|i| {
            let text = manifest(i, image);
            let orch = &orch;
            async move { orch.create_flow(&text).await }
        })
        .buffered(8)
        .collect()
        .await;
    let ids: Vec<String> = created.iter().map(|(id, _)| id.clone()).collect();
    for id in &ids {
        orch.action(id, "start").await;
    }
    orch.wait_all(&ids, "running", Duration::from_secs(120))
        .await;
    // Warm every pump and connection before measuring.
    for (id, token) in &created {
        for _ in 0..20 {
            orch.webhook(id, token).await;
        }
    }
    let paths: Vec<String> = created
        .iter()
        .map(|(id, token)| format!("/api/triggers/{id}/webhook/{token}"))
        .collect();
    let store_url = orch.store_url.clone();
    let (before, _) = count_executions(&store_url).await;
    let run = wrk(&orch.base, &paths, load);
    let (after, unacked) = count_executions(&store_url).await;
    eprintln!("throughput: {unacked} triggers not yet acknowledged by a pump when wrk ended");
    (run, after - before)
}

/// How many executions the store holds, and how many of them no pump has acknowledged yet.
async fn count_executions(store_url: &str) -> (u64, u64) {
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(store_url)
        .await
        .expect("the store for counting");
    let count = |sql: &'static str| {
        let pool = pool.clone();
        async move {
            let n: i64 = sqlx::query_scalar(sql)
                .fetch_one(&pool)
                .await
                .expect("counting executions");
            n as u64
        }
    };
    let total = count("SELECT COUNT(*) FROM executions").await;
    let unacked = count("SELECT COUNT(*) FROM executions WHERE acked_at IS NULL").await;
    let resent =
        count("SELECT CAST(COALESCE(SUM(attempts - 1), 0) AS BIGINT) FROM executions").await;
    pool.close().await;
    eprintln!(
        "throughput: store: {total} executions, {unacked} not acknowledged, {resent} re-sends"
    );
    (total, unacked)
}

fn baseline(paths: &[String], load: &Load) -> WrkRun {
    let redis = Redis::start();
    let port = free_port();
    let bin = std::env::current_exe()
        .expect("own path")
        .with_file_name("webhook_baseline");
    let mut child = Command::new(&bin)
        .args([&port.to_string(), &redis.url()])
        .spawn()
        .unwrap_or_else(|e| panic!("starting {}: {e}", bin.display()));
    let started = std::time::Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the baseline never listened"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let run = wrk(&format!("http://127.0.0.1:{port}"), paths, load);
    let _ = child.kill();
    let _ = child.wait();
    run
}

fn row(name: &str, r: &WrkRun, base: &WrkRun, note: &str) {
    println!(
        "{name:<34} {:>10.0} {:>9} {:>7} {:>8.2} {:>8.2} {:>8.2}   {note}",
        r.accepted_per_sec(),
        r.non_2xx,
        r.errors,
        r.p50_ms,
        r.p99_ms,
        r.accepted_per_sec() / base.accepted_per_sec(),
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let mut stores: Vec<String> = std::env::args().skip(1).collect();
    if stores
        .iter()
        .any(|a| !matches!(a.as_str(), "sqlite" | "postgres"))
    {
        eprintln!(
            "usage: throughput [sqlite] [postgres]   (none: both)
  BENCH_PUMP_IMAGE (pumphouse/pump:bench), BENCH_HOT_FLOWS (8), BENCH_WRK_SECS (15),
  BENCH_WRK_CONNECTIONS (64), BENCH_WRK_THREADS (1), BENCH_BACKEND (docker; or process)"
        );
        std::process::exit(2);
    }
    if stores.is_empty() {
        stores = vec!["sqlite".into(), "postgres".into()];
    }
    let image = std::env::var("BENCH_PUMP_IMAGE").unwrap_or_else(|_| "pumphouse/pump:bench".into());
    let flows = env_number("BENCH_HOT_FLOWS", 8);
    let load = Load {
        secs: env_number("BENCH_WRK_SECS", 15),
        connections: env_number("BENCH_WRK_CONNECTIONS", 64),
        threads: env_number("BENCH_WRK_THREADS", 1),
    };
    let backend = std::env::var("BENCH_BACKEND").unwrap_or_else(|_| "docker".into());
    if backend == "docker" {
        remove_dead_bench_containers(&docker().await).await;
    }

    let fake: Vec<String> = (0..flows)
        .map(|i| format!("/api/triggers/{}/webhook/t{i}", uuid::Uuid::new_v4()))
        .collect();
    eprintln!("throughput: baseline");
    let base = baseline(&fake, &load);
    let mut runs = Vec::new();
    for store in &stores {
        eprintln!("throughput: pumphouse on {store}");
        let pg = (store == "postgres").then(Postgres::start);
        let (run, recorded) = pumphouse(
            &backend,
            pg.as_ref().map(|p| p.url()).as_deref(),
            &image,
            flows,
            &load,
        )
        .await;
        runs.push((store.clone(), run, recorded));
    }

    println!();
    println!(
        "throughput: wrk -t{} -c{} -d{}s on loopback, POSTs spread over {flows} flows with warm pumps ({backend}); \
         SQLite WAL synchronous=NORMAL, PostgreSQL fsync=on synchronous_commit=on; Redis AOF everysec",
        load.threads, load.connections, load.secs
    );
    println!(
        "{:<34} {:>10} {:>9} {:>7} {:>8} {:>8} {:>8}",
        "", "accepted/s", "non-2xx", "errors", "p50 ms", "p99 ms", "ratio"
    );
    row("baseline: axum + Redis PUBLISH", &base, &base, "");
    for (store, run, recorded) in &runs {
        let accepted = run.requests - run.non_2xx;
        row(
            &format!("pumphouse, {store}"),
            run,
            &base,
            &format!(
                "{recorded} recorded of {accepted} accepted{}; targets >= 10000/s, ratio >= 0.50",
                if *recorded >= accepted { "" } else { " (LOST)" }
            ),
        );
    }
}

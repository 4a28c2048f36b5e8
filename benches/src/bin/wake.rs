//! Wake and delivery latency, each beside its baseline from the same run:
//! - cold, Docker: webhook for a flow at zero -> the new pump acknowledges it, against a bare
//!   `docker run` of the same image to its first output line;
//! - cold, process backend: the same, against a bare start of the pump binary to its first line;
//! - warm: webhook -> the running pump acknowledges it, against a bare Redis PUBLISH -> a
//!   subscriber's receipt.
//!
//! Run with `ops/bench-wake.sh` (release build, release pump image). Loopback only.

use std::process::Stdio;
use std::time::{Duration, Instant};

use futures_util::StreamExt as _;
use pumphouse_bench::scale::pump_env;
use pumphouse_bench::{header, ms, row, AckWatcher, Samples};
use pumphouse_e2e::{manifest, pump_binary, Backend, TestApp, TestFlow, DEADLINE};
use tokio::io::{AsyncBufReadExt as _, BufReader};

const COLD_STEPS: &str = "    - respond: ok\n";

fn env_number(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Waits until the reaper has taken the flow to zero and its pump has stopped (the Docker
/// backend keeps the stopped container, to restart it on the next wake).
async fn at_zero(app: &TestApp, flow: &TestFlow) {
    let started = Instant::now();
    loop {
        let (_, s) = app.get(&format!("/api/flows/{}/status", flow.id)).await;
        if s["status"] == "idle" && s["pump"]["state"] != "running" {
            return;
        }
        assert!(
            started.elapsed() < DEADLINE,
            "the flow never reached zero: {s}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn webhook_to_ack(app: &TestApp, flow: &TestFlow, watcher: &AckWatcher) -> Duration {
    pumphouse_bench::webhook_to_ack(app, flow, watcher, DEADLINE).await
}

/// Spawns `cmd` and returns the time to its first line on stderr (where the pump prints its
/// first line), then ends it.
async fn to_first_line(mut cmd: tokio::process::Command) -> Duration {
    cmd.stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let t0 = Instant::now();
    let mut child = cmd.spawn().expect("spawning the baseline");
    let mut lines = BufReader::new(child.stderr.take().expect("stderr")).lines();
    let first = lines.next_line().await.expect("reading the first line");
    let took = t0.elapsed();
    assert!(first.is_some(), "the baseline printed nothing");
    let _ = child.start_kill();
    let _ = child.wait().await;
    took
}

async fn bare_docker_run(image: &str, redis_url: &str, i: usize) -> Duration {
    let name = format!("pumphouse-bench-bare-{}-{i}", std::process::id());
    let mut cmd = tokio::process::Command::new("docker");
    cmd.args(["run", "--rm", "--network", "host", "--name", &name]);
    for (k, v) in pump_env(redis_url, "bare") {
        cmd.arg("-e").arg(format!("{k}={v}"));
    }
    cmd.arg(image);
    let took = to_first_line(cmd).await;
    let _ = tokio::process::Command::new("docker")
        .args(["rm", "-f", &name])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .await;
    took
}

async fn bare_process(redis_url: &str) -> Duration {
    let mut cmd = tokio::process::Command::new(pump_binary());
    cmd.env_clear().envs(pump_env(redis_url, "bare"));
    to_first_line(cmd).await
}

/// The flow's events stream (flows here are the default tenant's).
fn events_stream(flow: &TestFlow) -> String {
    pumphouse_pump::channels::events_stream("default", &flow.id)
}

/// `runs` cold starts on `backend`, interleaved with `runs` baseline starts.
async fn cold(backend: Backend, image: &str, runs: usize) -> (Samples, Samples) {
    let image_owned = image.to_string();
    let app = TestApp::spawn_with(backend, move |c| {
        c.pump_image = image_owned;
        c.heartbeat = Duration::from_millis(200);
    })
    .await;
    let flow = app
        .create_flow(&manifest("cold", "idleTimeout: 1s\n", COLD_STEPS))
        .await;
    let watcher = AckWatcher::start(&app.redis.url(), &events_stream(&flow)).await;
    app.start(&flow).await;
    app.wait_status(&flow, "running").await;
    let mut ours = Vec::new();
    let mut bare = Vec::new();
    for i in 0..runs {
        at_zero(&app, &flow).await;
        ours.push(ms(webhook_to_ack(&app, &flow, &watcher).await));
        bare.push(ms(match backend {
            Backend::Docker => bare_docker_run(image, &app.redis.url(), i).await,
            Backend::Process => bare_process(&app.redis.url()).await,
            Backend::Kubernetes => panic!("this benchmark measures Docker and process pumps"),
        }));
    }
    (Samples::new(ours), Samples::new(bare))
}

async fn warm(image: &str, runs: usize) -> (Samples, Samples) {
    let image_owned = image.to_string();
    let app = TestApp::spawn_with(Backend::Docker, move |c| c.pump_image = image_owned).await;
    let flow = app
        .create_flow(&manifest("warm", "keepAlive: true\n", COLD_STEPS))
        .await;
    let watcher = AckWatcher::start(&app.redis.url(), &events_stream(&flow)).await;
    app.start(&flow).await;
    app.wait_status(&flow, "running").await;
    for _ in 0..50 {
        webhook_to_ack(&app, &flow, &watcher).await; // warm the connections
    }
    let mut ours = Vec::new();
    for _ in 0..runs {
        ours.push(ms(webhook_to_ack(&app, &flow, &watcher).await));
    }

    let client = redis::Client::open(app.redis.url()).expect("a URL");
    let mut publisher = client
        .get_multiplexed_async_connection()
        .await
        .expect("Redis");
    let mut sub = client.get_async_pubsub().await.expect("Redis");
    sub.subscribe("bench:baseline").await.expect("SUBSCRIBE");
    let mut messages = sub.on_message();
    let mut bare = Vec::new();
    for i in 0..runs + 50 {
        let t0 = Instant::now();
        let _: i64 = redis::cmd("PUBLISH")
            .arg("bench:baseline")
            .arg(i)
            .query_async(&mut publisher)
            .await
            .expect("PUBLISH");
        messages.next().await.expect("a message");
        if i >= 50 {
            bare.push(ms(t0.elapsed()));
        }
    }
    (Samples::new(ours), Samples::new(bare))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let runs = env_number("BENCH_COLD_RUNS", 20);
    let warm_runs = env_number("BENCH_WARM_RUNS", 1000);
    let image = std::env::var("BENCH_PUMP_IMAGE").unwrap_or_else(|_| "pumphouse/pump:bench".into());
    println!("pumphouse wake benchmark: {runs} cold runs per backend, {warm_runs} warm runs, image {image}");
    println!(
        "reproduce: ops/bench-wake.sh   (BENCH_COLD_RUNS, BENCH_WARM_RUNS to change the counts)\n"
    );

    let (cold_docker, bare_docker) = cold(Backend::Docker, &image, runs).await;
    let (cold_proc, bare_proc) = cold(Backend::Process, &image, runs).await;
    let (warm_ours, warm_bare) = warm(&image, warm_runs).await;

    let p = [50.0, 95.0, 100.0];
    header(&p);
    row("cold docker: webhook at zero -> pump ack", &cold_docker, &p);
    row(
        "  baseline: bare docker run -> first line",
        &bare_docker,
        &p,
    );
    println!(
        "  ratio at p50: {:.2}x, at p95: {:.2}x (target p50 <= 1.3x)\n",
        cold_docker.pct(50.0) / bare_docker.pct(50.0),
        cold_docker.pct(95.0) / bare_docker.pct(95.0)
    );
    row("cold process: webhook at zero -> pump ack", &cold_proc, &p);
    row("  baseline: bare pump start -> first line", &bare_proc, &p);
    println!(
        "  ratio at p50: {:.2}x, at p95: {:.2}x\n",
        cold_proc.pct(50.0) / bare_proc.pct(50.0),
        cold_proc.pct(95.0) / bare_proc.pct(95.0)
    );
    let p = [50.0, 99.0, 100.0];
    header(&p);
    row("warm: webhook -> pump ack", &warm_ours, &p);
    row("  baseline: PUBLISH -> subscriber receipt", &warm_bare, &p);
    println!("  target: warm p50 <= 2 ms, p99 <= 10 ms");
}

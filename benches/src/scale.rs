//! Pieces of the at-scale benchmarks: an orchestrator run as its own release process (so its
//! RSS and CPU time can be read and it can be restarted for real), Redis and PostgreSQL with
//! production-like durability, /proc readings, Docker look-ups by label, and bare `docker run`
//! baselines started all at once.
//!
//! The end-to-end harness tunes its servers for tests (PostgreSQL without fsync, Redis with
//! `appendfsync always`, half-second heartbeats); figures taken on those would not be what a
//! deployment sees, so the servers here are started with the settings an operator would use.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use pumphouse::backend::labels;
use pumphouse_e2e::{free_port, pump_binary, pumphouse_binary, unique, TempDir};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt as _, BufReader};

/// Label put on every bare baseline container, so a clean-up can find them all.
pub const BARE_LABEL: &str = "pumphouse-bench";

/// Prefix of the `cluster` label of the orchestrators the benchmarks start; the leftovers of a
/// bench process that is gone are removed by [`remove_dead_bench_containers`].
pub const CLUSTER_PREFIX: &str = "bench";

/// An environment variable as a number, or `default`.
pub fn env_number(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The pids of a process's children, from /proc.
fn children_of(parent: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            // `pid (comm) state ppid ...`; comm may hold spaces, so read after the last ')'.
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|s| {
                    s.rsplit_once(')')?
                        .1
                        .split_whitespace()
                        .nth(1)?
                        .parse::<u32>()
                        .ok()
                })
                == Some(parent)
        })
        .collect()
}

/// Resident set size of a process, in KiB, from /proc.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// User plus system CPU time a process has used, from /proc/<pid>/stat.
pub fn cpu_time(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces; the fields after its closing parenthesis do not.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line, 12 and 13 after the name.
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(Duration::from_secs_f64(ticks as f64 / clock_ticks() as f64))
}

fn clock_ticks() -> u64 {
    static TICKS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100)
    })
}

/// MiB, for tables.
pub fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn wait_for_port(port: u16, what: &str) {
    let started = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{what} never listened on 127.0.0.1:{port}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A private redis-server with AOF and `appendfsync everysec` (Redis's own default for AOF),
/// and a password on `default`, as production runs it. Killed on drop.
pub struct Redis {
    pub port: u16,
    password: String,
    child: Child,
    _dir: TempDir,
}

impl Redis {
    pub fn start() -> Redis {
        let dir = TempDir::new("pumphouse-bench-redis");
        let port = free_port();
        let password = uuid::Uuid::new_v4().simple().to_string();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--requirepass", &password])
            .args(["--appendonly", "yes", "--appendfsync", "everysec"])
            .arg("--dir")
            .arg(&dir.0)
            // Redis rewrites its process title, so a clean-up after a killed run finds it by
            // this file (ops/bench-scale.sh does).
            .arg("--pidfile")
            .arg(dir.0.join("redis.pid"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting redis-server (apt-get install -y redis-server)");
        wait_for_port(port, "redis-server");
        Redis {
            port,
            password,
            child,
            _dir: dir,
        }
    }

    pub fn url(&self) -> String {
        format!("redis://default:{}@127.0.0.1:{}", self.password, self.port)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A private PostgreSQL 15 cluster with fsync and synchronous commit on (the harness turns
/// fsync off for speed; a benchmark of durable writes must not). Stopped and removed on drop.
pub struct Postgres {
    dir: PathBuf,
    pub port: u16,
}

fn pg_tool(name: &str) -> PathBuf {
    let p = PathBuf::from(format!("/usr/lib/postgresql/15/bin/{name}"));
    assert!(
        p.exists(),
        "{} is missing; apt-get install -y postgresql",
        p.display()
    );
    p
}

fn as_postgres(program: &Path) -> Command {
    // PostgreSQL refuses to run as root.
    let root = std::fs::read_to_string("/proc/self/status")
        .map(|s| s.lines().any(|l| l.starts_with("Uid:\t0\t")))
        .unwrap_or(false);
    if root {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

impl Postgres {
    pub fn start() -> Postgres {
        let dir = std::env::temp_dir().join(unique("pumphouse-bench-pg"));
        std::fs::create_dir_all(&dir).expect("creating the PostgreSQL directory");
        let _ = Command::new("chown")
            .args(["postgres:postgres", dir.to_str().expect("utf-8")])
            .status();
        let data = dir.join("data");
        let data_s = data.to_str().expect("utf-8").to_string();
        let ok = as_postgres(&pg_tool("initdb"))
            .args(["-D", &data_s, "-A", "trust", "-U", "postgres", "-E", "UTF8"])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "initdb failed");
        let port = free_port();
        let opts = format!(
            "-p {port} -k {} -c listen_addresses=127.0.0.1 -c max_connections=200 -c fsync=on -c synchronous_commit=on",
            dir.display()
        );
        let ok = as_postgres(&pg_tool("pg_ctl"))
            .args(["-D", &data_s, "-o", &opts, "-l"])
            .arg(dir.join("log"))
            .args(["-w", "start"])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "pg_ctl start failed; see {}/log", dir.display());
        Postgres { dir, port }
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let data = self.dir.join("data");
        let _ = as_postgres(&pg_tool("pg_ctl"))
            .args(["-D", data.to_str().unwrap_or(""), "-m", "immediate", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `pumphouse serve` (the release binary beside this one) as a child process with the
/// default settings but for the ones a benchmark names. Killed on drop, and its pumps removed.
pub struct Orchestrator {
    pub base: String,
    pub cluster: String,
    pub http: reqwest::Client,
    pub store_url: String,
    docker_backend: bool,
    /// The command line; change it between [`Orchestrator::terminate`] and
    /// [`Orchestrator::spawn_and_wait`] to restart with other settings.
    pub args: Vec<String>,
    child: Option<Child>,
    log: PathBuf,
    _dir: TempDir,
}

impl Orchestrator {
    /// Starts it with the Docker backend (host networking) on `store` (a URL; `None` for a
    /// fresh SQLite file) and waits until it is ready.
    pub async fn start(redis: &Redis, store: Option<&str>, image: &str, extra: &[&str]) -> Self {
        Self::start_on("docker", redis, store, image, extra).await
    }

    /// The same with another backend (`process`: pumps as child processes).
    pub async fn start_on(
        backend: &str,
        redis: &Redis,
        store: Option<&str>,
        image: &str,
        extra: &[&str],
    ) -> Self {
        let dir = TempDir::new("pumphouse-bench-orch");
        let store = store.map_or_else(
            || format!("sqlite://{}", dir.0.join("pumphouse.db").display()),
            str::to_string,
        );
        let port = free_port();
        let cluster = format!("{CLUSTER_PREFIX}-{}", unique("").trim_start_matches('-'));
        let mut args: Vec<String> = [
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--store",
            &store,
            "--redis",
            &redis.url(),
            "--backend",
            backend,
            "--docker-network",
            "host",
            "--pump-image",
            image,
            "--pump-binary",
            pump_binary().to_str().expect("utf-8"),
            "--cluster",
            &cluster,
            "--log-format",
            "json",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut o = Orchestrator {
            base: format!("http://127.0.0.1:{port}"),
            cluster,
            http: reqwest::Client::builder()
                .pool_max_idle_per_host(64)
                .build()
                .expect("an HTTP client"),
            args,
            store_url: store,
            docker_backend: backend == "docker",
            child: None,
            log: dir.0.join("server.log"),
            _dir: dir,
        };
        o.spawn_and_wait().await;
        o
    }

    /// Spawns the process and waits until `/readyz` answers 2xx; returns how long that took.
    pub async fn spawn_and_wait(&mut self) -> Duration {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("the server log");
        let t0 = Instant::now();
        self.child = Some(
            Command::new(pumphouse_binary())
                .args(&self.args)
                .stdout(Stdio::null())
                .stderr(out)
                .spawn()
                .expect("starting pumphouse serve"),
        );
        let ready = format!("{}/readyz", self.base);
        loop {
            if let Ok(r) = self.http.get(&ready).send().await {
                if r.status().is_success() {
                    return t0.elapsed();
                }
            }
            assert!(
                t0.elapsed() < Duration::from_secs(120),
                "pumphouse serve never got ready; its log:\n{}",
                self.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// SIGTERM (a graceful stop: pumps keep running) and wait for the exit.
    pub fn terminate(&mut self) {
        if let Some(mut c) = self.child.take() {
            pumphouse_e2e::signal(c.id(), "TERM");
            let _ = c.wait();
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("a running orchestrator").id()
    }

    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Creates a flow; returns its id and webhook token.
    pub async fn create_flow(&self, manifest: &str) -> (String, String) {
        let resp = self
            .http
            .post(self.url("/api/flows"))
            .body(manifest.to_string())
            .send()
            .await
            .expect("POST /api/flows answered");
        let code = resp.status().as_u16();
        let body: Value = resp.json().await.expect("JSON");
        assert_eq!(code, 201, "creating a flow: {body}");
        (
            body["flow"]["id"].as_str().expect("an id").to_string(),
            body["webhook_token"].as_str().expect("a token").to_string(),
        )
    }

    /// POSTs to a flow action (`start`, `stop`), expecting 2xx.
    pub async fn action(&self, flow_id: &str, action: &str) {
        self.post_action(flow_id, action, false).await
    }

    /// The same, but a 503 (the request timed out and goes on in the background, as 200 stops
    /// at once on a busy engine do) is fine too.
    pub async fn action_going_on(&self, flow_id: &str, action: &str) {
        self.post_action(flow_id, action, true).await
    }

    async fn post_action(&self, flow_id: &str, action: &str, going_on_is_fine: bool) {
        let resp = self
            .http
            .post(self.url(&format!("/api/flows/{flow_id}/{action}")))
            .send()
            .await
            .expect("the action answered");
        let code = resp.status();
        assert!(
            code.is_success()
                || (going_on_is_fine && code == reqwest::StatusCode::SERVICE_UNAVAILABLE),
            "{action} {flow_id}: {code} {}",
            resp.text().await.unwrap_or_default()
        );
    }

    /// Every flow's status, by id.
    pub async fn statuses(&self) -> HashMap<String, String> {
        let v: Value = self
            .http
            .get(self.url("/api/flows"))
            .send()
            .await
            .expect("GET /api/flows answered")
            .json()
            .await
            .expect("JSON");
        v.as_array()
            .expect("a list of flows")
            .iter()
            .map(|f| {
                (
                    f["id"].as_str().unwrap_or_default().to_string(),
                    f["status"].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect()
    }

    /// Waits until every flow in `ids` has `status`; returns when that was first seen.
    pub async fn wait_all(&self, ids: &[String], status: &str, deadline: Duration) -> Instant {
        let started = Instant::now();
        loop {
            let now = self.statuses().await;
            let missing = ids
                .iter()
                .filter(|id| now.get(*id).map(String::as_str) != Some(status))
                .count();
            if missing == 0 {
                return Instant::now();
            }
            assert!(
                started.elapsed() < deadline,
                "{missing} of {} flows never became {status}; log:\n{}",
                ids.len(),
                self.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Sends one webhook; returns the execution id.
    pub async fn webhook(&self, flow_id: &str, token: &str) -> String {
        let resp = self
            .http
            .post(self.url(&format!("/api/triggers/{flow_id}/webhook/{token}")))
            .body("{}")
            .send()
            .await
            .expect("the webhook answered");
        let code = resp.status().as_u16();
        let body: Value = resp.json().await.expect("JSON");
        assert_eq!(code, 202, "webhook: {body}");
        body["execution_id"]
            .as_str()
            .expect("an execution id")
            .to_string()
    }

    /// One execution as the API shows it.
    pub async fn execution(&self, flow_id: &str, id: &str) -> Value {
        self.http
            .get(self.url(&format!("/api/flows/{flow_id}/executions/{id}")))
            .send()
            .await
            .expect("answered")
            .json()
            .await
            .expect("JSON")
    }
}

impl Drop for Orchestrator {
    /// Kills the orchestrator first (it would restart pumps it sees go), then removes its
    /// pumps; this runs while a panic unwinds too.
    fn drop(&mut self) {
        // Process pumps are the orchestrator's children; once it is gone they would belong to
        // init and outlive the bench, so they are found now and killed after it.
        let pumps = match (&self.child, self.docker_backend) {
            (Some(c), false) => children_of(c.id()),
            _ => Vec::new(),
        };
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        for pid in pumps {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
        if !self.docker_backend {
            return;
        }
        let cluster = self.cluster.clone();
        // A runtime of its own on a thread of its own: drop may run inside another runtime.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime");
            // Bounded: an engine that stopped answering must not hang the bench for ever; the
            // script's clean-up and the next run's `remove_dead_bench_containers` retry.
            let removed = rt.block_on(async {
                tokio::time::timeout(Duration::from_secs(120), async {
                    remove_cluster(&docker().await, &cluster).await
                })
                .await
            });
            if removed.is_err() {
                eprintln!("bench: the Docker engine did not remove cluster {cluster}'s pumps within 120 s");
            }
        })
        .join();
    }
}

/// A pump container as Docker reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Container {
    pub id: String,
    pub started_at: String,
    pub pid: u32,
    pub running: bool,
}

pub async fn docker() -> bollard::Docker {
    let d = bollard::Docker::connect_with_socket_defaults()
        .expect("a Docker client")
        .negotiate_version()
        .await
        .expect("the Docker engine answers");
    d.ping().await.expect("the Docker engine answers");
    d
}

/// Ids of every container, running or not, with `label` (`key=value` or `key`).
async fn ids_labelled(docker: &bollard::Docker, label: String) -> Vec<String> {
    pumphouse_e2e::labelled(docker, label)
        .await
        .into_iter()
        .filter_map(|c| c.id)
        .collect()
}

/// The pump containers of one orchestrator's cluster, by flow id, inspected.
pub async fn pump_containers(
    docker: &bollard::Docker,
    cluster: &str,
) -> HashMap<String, Container> {
    let ids = ids_labelled(docker, format!("{}={cluster}", labels::CLUSTER)).await;
    let inspections = futures_util::future::join_all(ids.iter().map(|id| {
        docker.inspect_container(
            id,
            None::<bollard::query_parameters::InspectContainerOptions>,
        )
    }))
    .await;
    inspections
        .into_iter()
        .filter_map(Result::ok)
        .filter_map(|c| {
            let flow = c
                .config
                .as_ref()?
                .labels
                .as_ref()?
                .get(labels::FLOW)?
                .clone();
            let state = c.state.as_ref()?;
            Some((
                flow,
                Container {
                    id: c.id.clone()?,
                    started_at: state.started_at.clone().unwrap_or_default(),
                    pid: state.pid.unwrap_or(0).max(0) as u32,
                    running: state.running.unwrap_or(false),
                },
            ))
        })
        .collect()
}

async fn force_remove(docker: &bollard::Docker, ids: Vec<String>) {
    // A few at a time: 200 removals at once make dockerd itself the bottleneck for minutes.
    for chunk in ids.chunks(16) {
        futures_util::future::join_all(
            chunk
                .iter()
                .map(|id| pumphouse_e2e::force_remove(docker, id)),
        )
        .await;
    }
}

/// Removes every container of `cluster`.
pub async fn remove_cluster(docker: &bollard::Docker, cluster: &str) {
    let ids = ids_labelled(docker, format!("{}={cluster}", labels::CLUSTER)).await;
    force_remove(docker, ids).await;
}

/// Removes bench pumps and bare baselines left by bench processes that are gone (a run that
/// was killed), so they do not skew this run's figures.
pub async fn remove_dead_bench_containers(docker: &bollard::Docker) {
    use bollard::query_parameters::ListContainersOptionsBuilder;
    let filters = HashMap::from([(
        "label".to_string(),
        vec![format!(
            "{}={}",
            labels::MANAGED_BY,
            labels::MANAGED_BY_VALUE
        )],
    )]);
    let all = docker
        .list_containers(Some(
            ListContainersOptionsBuilder::default()
                .all(true)
                .filters(&filters)
                .build(),
        ))
        .await
        .unwrap_or_default();
    let mut dead = Vec::new();
    for c in all {
        let labels = c.labels.unwrap_or_default();
        let pid = labels
            .get(labels::CLUSTER)
            .and_then(|c| c.strip_prefix(&format!("{CLUSTER_PREFIX}-")))
            .and_then(|r| r.split('-').next());
        if let (Some(pid), Some(id)) = (pid, c.id) {
            if !Path::new(&format!("/proc/{pid}")).exists() {
                dead.push(id);
            }
        }
    }
    dead.extend(ids_labelled(docker, format!("{BARE_LABEL}-pid")).await);
    force_remove(docker, dead).await;
}

/// The environment a pump needs to start, for bare runs outside the orchestrator.
pub fn pump_env(redis_url: &str, flow_id: &str) -> Vec<(String, String)> {
    use base64::Engine as _;
    let config = base64::engine::general_purpose::STANDARD.encode("steps:\n  - respond: ok\n");
    vec![
        ("FLOW_ID".into(), flow_id.into()),
        ("INSTANCE_ID".into(), "bench".into()),
        ("TENANT_ID".into(), "bench".into()),
        (
            "TENANT_PREFIX".into(),
            format!("tenant:bench:flow:{flow_id}:"),
        ),
        ("REDIS_URL".into(), redis_url.into()),
        ("ORGANISM_YAML".into(), config),
    ]
}

/// Starts `n` bare `docker run --rm --network host` of `image` at once; returns each one's
/// time from the common start to its first output line containing `until` (`subscribed`: the
/// pump listens for triggers), then removes them. `t0` is taken before the first spawn, so the figures include the contention
/// of starting them together, as the orchestrator's do.
pub async fn bare_docker_runs(
    image: &str,
    redis_url: &str,
    n: usize,
    until: &str,
) -> Vec<Duration> {
    let tag = format!(
        "{}-{}",
        std::process::id(),
        &uuid::Uuid::new_v4().simple().to_string()[..6]
    );
    let t0 = Instant::now();
    let runs = (0..n).map(|i| {
        let name = format!("pumphouse-bench-bare-{tag}-{i}");
        let mut cmd = tokio::process::Command::new("docker");
        cmd.args(["run", "--rm", "--network", "host", "--name", &name])
            .args([
                "--label",
                &format!("{BARE_LABEL}-pid={}", std::process::id()),
            ]);
        for (k, v) in pump_env(redis_url, &format!("bare-{i}")) {
            cmd.arg("-e").arg(format!("{k}={v}"));
        }
        cmd.arg(image)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        async move {
            let mut child = cmd.spawn().expect("spawning docker run");
            let mut lines = BufReader::new(child.stderr.take().expect("stderr")).lines();
            loop {
                match lines.next_line().await {
                    Ok(Some(l)) if l.contains(until) => break,
                    Ok(Some(_)) => {}
                    other => panic!("bare docker run {name} ended before `{until}`: {other:?}"),
                }
            }
            let took = t0.elapsed();
            (took, child, lines)
        }
    });
    let done = futures_util::future::join_all(runs).await;
    let times = done.iter().map(|(t, _, _)| *t).collect();
    for (_, mut child, _) in done {
        let _ = child.start_kill();
        let _ = child.wait().await;
    }
    let d = docker().await;
    force_remove(
        &d,
        ids_labelled(&d, format!("{BARE_LABEL}-pid={}", std::process::id())).await,
    )
    .await;
    times
}

/// The reference pump run as a bare process, connected and subscribed: its idle RSS is the
/// floor for the containerised pumps'. Killed on drop.
pub struct BarePump {
    child: tokio::process::Child,
    _lines: tokio::io::Lines<BufReader<tokio::process::ChildStderr>>,
    pub flow_id: String,
}

impl BarePump {
    pub async fn start(redis_url: &str) -> BarePump {
        let flow_id = format!("bare-{}", std::process::id());
        let mut child = tokio::process::Command::new(pump_binary())
            .env_clear()
            .envs(pump_env(redis_url, &flow_id))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawning the pump");
        let mut lines = BufReader::new(child.stderr.take().expect("stderr")).lines();
        loop {
            match lines.next_line().await {
                Ok(Some(l)) if l.contains("subscribed") => break,
                Ok(Some(_)) => {}
                other => panic!("the bare pump ended before subscribing: {other:?}"),
            }
        }
        BarePump {
            child,
            _lines: lines,
            flow_id,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id().expect("a running pump")
    }
}

/// Prints a table row of a figure beside its baseline.
pub fn line(name: &str, ours: String, baseline_name: &str, baseline: String, note: &str) {
    println!("{name:<46} {ours:>12}   {baseline_name:<34} {baseline:>10}   {note}");
}

pub fn table_header() {
    println!(
        "{:<46} {:>12}   {:<45}   target",
        "figure", "pumphouse", "baseline (same run)"
    );
}

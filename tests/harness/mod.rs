//! The end-to-end harness: starts private Redis and PostgreSQL servers on free loopback ports,
//! an orchestrator on port 0, and removes what it started when dropped.
//!
//! Nothing is shared between tests: each gets its own Redis, its own SQLite file or PostgreSQL
//! cluster, and its own `cluster` label for pump containers. A missing dependency fails loudly
//! with the command that fixes it. Set `TEST_LOG=1` to see the orchestrator's logs.

pub mod kubernetes;

use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Once;
use std::time::{Duration, Instant};

use pumphouse::app::{Application, ServeConfig};
use pumphouse::backend::BackendKind;
use serde_json::{json, Value};

/// How long any one wait in a test may take before the test fails.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// The pump image the Docker tests run; built by `ops/build-images.sh`.
pub const PUMP_IMAGE: &str = "pumphouse/pump:dev";

static TRACING: Once = Once::new();

fn init_tracing() {
    TRACING.call_once(|| {
        if let Ok(filter) = std::env::var("TEST_LOG") {
            let filter = if filter == "1" {
                "info".to_string()
            } else {
                filter
            };
            let _ = tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
                .with_test_writer()
                .try_init();
        }
    });
}

/// A loopback port nobody listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("binding a loopback port")
}

/// A short unique name for this test's resources.
pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    )
}

fn require_program(name: &str, fix: &str) -> PathBuf {
    let candidates = [
        PathBuf::from(format!("/usr/bin/{name}")),
        PathBuf::from(format!("/usr/local/bin/{name}")),
        PathBuf::from(format!("/usr/lib/postgresql/15/bin/{name}")),
    ];
    candidates
        .into_iter()
        .find(|p| p.exists())
        .unwrap_or_else(|| panic!("`{name}` is not installed; {fix}"))
}

/// A private redis-server, killed on drop. Its `default` user needs a password, as in
/// production: otherwise a pump could sign in as `default` and its own user would limit nothing.
pub struct RedisServer {
    pub port: u16,
    /// The `default` (admin) user's password; [`RedisServer::url`] carries it.
    pub password: String,
    child: Child,
    /// Holds the append-only file, so a restart keeps streams and consumer groups, as a
    /// production Redis with persistence would.
    dir: TempDir,
    /// Where it listens: loopback, and for Kubernetes pumps the test node's address too.
    bind: String,
}

impl RedisServer {
    pub async fn start() -> RedisServer {
        Self::start_bound("127.0.0.1".to_string()).await
    }

    /// Listening on `addr` as well as loopback: pods on the test Kubernetes node reach the host
    /// at the node's address, never at its loopback.
    pub async fn start_reachable_from(addr: &str) -> RedisServer {
        Self::start_bound(format!("127.0.0.1 {addr}")).await
    }

    async fn start_bound(bind: String) -> RedisServer {
        let dir = TempDir::new("pumphouse-redis");
        let port = free_port();
        let password = uuid::Uuid::new_v4().simple().to_string();
        let child = Self::spawn(port, &password, &dir.0, &bind);
        let server = RedisServer {
            port,
            password,
            child,
            dir,
            bind,
        };
        server.wait_ready().await;
        server
    }

    fn spawn(port: u16, password: &str, dir: &Path, bind: &str) -> Child {
        let bin = require_program(
            "redis-server",
            "run ops/test.sh (it installs it) or `apt-get install -y redis-server`",
        );
        Command::new(bin)
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                bind,
                "--save",
                "",
                "--requirepass",
                password,
            ])
            .args(["--appendonly", "yes", "--appendfsync", "always"])
            .arg("--dir")
            .arg(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting redis-server")
    }

    async fn wait_ready(&self) {
        let client = redis::Client::open(self.url()).expect("a valid URL");
        let started = Instant::now();
        loop {
            if let Ok(mut c) = client.get_multiplexed_async_connection().await {
                let pong: redis::RedisResult<String> = redis::cmd("PING").query_async(&mut c).await;
                if pong.is_ok() {
                    return;
                }
            }
            assert!(
                started.elapsed() < DEADLINE,
                "redis-server on port {} never answered PING",
                self.port
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Shuts Redis down as an operator would (SIGTERM: it writes its data and exits).
    pub fn stop(&mut self) {
        signal(self.child.id(), "TERM");
        let _ = self.child.wait();
    }

    /// Starts it again on the same port with the same data.
    pub async fn restart(&mut self) {
        self.child = Self::spawn(self.port, &self.password, &self.dir.0, &self.bind);
        self.wait_ready().await;
    }

    /// Signs in as the admin user.
    pub fn url(&self) -> String {
        self.url_at("127.0.0.1")
    }

    /// Signs in as the admin user at `host` (one it listens on).
    pub fn url_at(&self, host: &str) -> String {
        format!("redis://default:{}@{host}:{}", self.password, self.port)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends `SIGname` to a process, through kill(1) so the harness needs no unsafe code.
pub fn signal(pid: u32, name: &str) {
    let ok = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "kill -{name} {pid} failed");
}

/// A private PostgreSQL cluster with one database, stopped and removed on drop. PostgreSQL
/// refuses to run as root, so as root it runs as the `postgres` user.
pub struct PostgresServer {
    dir: PathBuf,
    pub port: u16,
    pg_ctl: PathBuf,
}

impl PostgresServer {
    pub fn start() -> PostgresServer {
        let fix = "run ops/test.sh (it installs it) or `apt-get install -y postgresql`";
        let initdb = require_program("initdb", fix);
        let pg_ctl = require_program("pg_ctl", fix);
        let dir = std::env::temp_dir().join(unique("pumphouse-pg"));
        std::fs::create_dir_all(&dir).expect("creating the PostgreSQL directory");
        let as_root = nix_is_root();
        if as_root {
            let ok = Command::new("chown")
                .args(["postgres:postgres", dir.to_str().expect("utf-8 path")])
                .status()
                .is_ok_and(|s| s.success());
            assert!(
                ok,
                "cannot chown {} to the postgres user; is the postgres user there? {fix}",
                dir.display()
            );
        }
        let data = dir.join("data");
        let data_s = data.to_str().expect("utf-8 path");
        run_as_postgres(
            &initdb,
            &[
                "-D",
                data_s,
                "-A",
                "trust",
                "-U",
                "postgres",
                "--no-sync",
                "-E",
                "UTF8",
            ],
        );
        let server = PostgresServer {
            dir,
            port: free_port(),
            pg_ctl,
        };
        server.start_again();
        server
    }

    /// Runs pg_ctl on this cluster (as the postgres user when root) and asserts it succeeded.
    fn ctl(&self, args: &[&str]) {
        let data = self.dir.join("data");
        let mut all = vec!["-D", data.to_str().expect("utf-8 path")];
        all.extend_from_slice(args);
        run_as_postgres(&self.pg_ctl, &all);
    }

    /// Starts the server on its port and waits until it accepts connections.
    pub fn start_again(&self) {
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -F -c max_connections=200",
            self.port,
            self.dir.display()
        );
        let log = self.dir.join("log");
        self.ctl(&[
            "-o",
            &opts,
            "-l",
            log.to_str().expect("utf-8"),
            "-w",
            "start",
        ]);
    }

    /// Stops the server as an operator would (fast: sessions are cut) and waits until it has.
    pub fn stop(&self) {
        self.ctl(&["-m", "fast", "-w", "stop"]);
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for PostgresServer {
    fn drop(&mut self) {
        let data = self.dir.join("data");
        let _ = as_postgres(&self.pg_ctl)
            .args(["-D", data.to_str().unwrap_or(""), "-m", "immediate", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Runs a PostgreSQL tool (see [`as_postgres`]) and asserts it succeeded.
fn run_as_postgres(program: &Path, args: &[&str]) {
    let out = as_postgres(program)
        .args(args)
        .output()
        .expect("running a PostgreSQL tool");
    assert!(
        out.status.success(),
        "{} {args:?} failed: {}",
        program.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `program`, run as the postgres user when this process is root (PostgreSQL refuses root).
fn as_postgres(program: &Path) -> Command {
    if nix_is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

/// Whether this process runs as root, read from /proc so no unsafe libc call is needed.
fn nix_is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(1).map(|u| u == "0"))
        })
        .unwrap_or(false)
}

/// The reference pump binary cargo built beside this test (target/<profile>/deps/e2e-x) or
/// beside this benchmark (target/<profile>/wake).
pub fn pump_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("the test's own path");
    let dirs = [exe.parent(), exe.parent().and_then(Path::parent)];
    let found = dirs
        .into_iter()
        .flatten()
        .map(|d| d.join("pump"))
        .find(|p| p.is_file());
    found.unwrap_or_else(|| {
        panic!(
            "the reference pump is not built beside {}; run `cargo build -p pumphouse-pump` (ops/test.sh does)",
            exe.display()
        )
    })
}

/// The `pumphouse` binary cargo built beside this test.
pub fn pumphouse_binary() -> PathBuf {
    let bin = pump_binary().with_file_name("pumphouse");
    assert!(
        bin.exists(),
        "`pumphouse` is not built at {}; run `cargo build` (ops/test.sh does)",
        bin.display()
    );
    bin
}

/// Connects to the Docker engine, failing loudly when it does not answer, and removes pump
/// containers left by earlier test processes that are no longer alive.
pub async fn docker() -> bollard::Docker {
    let docker = bollard::Docker::connect_with_socket_defaults()
        .expect("a Docker client")
        .negotiate_version()
        .await
        .unwrap_or_else(|e| panic!("the Docker engine does not answer ({e}); start it with ops/test.sh, which starts dockerd"));
    docker.ping().await.unwrap_or_else(|e| {
        panic!("the Docker engine does not answer ({e}); start it with ops/test.sh, which starts dockerd")
    });
    remove_dead_test_containers(&docker).await;
    docker
}

/// Every container, running or not, carrying `label` (`key=value`).
pub async fn labelled(
    docker: &bollard::Docker,
    label: String,
) -> Vec<bollard::models::ContainerSummary> {
    use bollard::query_parameters::ListContainersOptionsBuilder;
    let filters = std::collections::HashMap::from([("label".to_string(), vec![label])]);
    docker
        .list_containers(Some(
            ListContainersOptionsBuilder::default()
                .all(true)
                .filters(&filters)
                .build(),
        ))
        .await
        .unwrap_or_default()
}

/// Removes a container, running or not; one that is gone already is fine.
pub async fn force_remove(docker: &bollard::Docker, id: &str) {
    use bollard::query_parameters::RemoveContainerOptionsBuilder;
    let opts = RemoveContainerOptionsBuilder::default().force(true).build();
    let _ = docker.remove_container(id, Some(opts)).await;
}

async fn remove_dead_test_containers(docker: &bollard::Docker) {
    use pumphouse::backend::labels;
    let ours = format!("{}={}", labels::MANAGED_BY, labels::MANAGED_BY_VALUE);
    for c in labelled(docker, ours).await {
        let cluster = c
            .labels
            .as_ref()
            .and_then(|l| l.get(labels::CLUSTER))
            .cloned()
            .unwrap_or_default();
        // Test clusters are named test-<pid>-<random>; a dead pid means a finished test process.
        let Some(pid) = cluster
            .strip_prefix("test-")
            .and_then(|r| r.split('-').next())
        else {
            continue;
        };
        if let (false, Some(id)) = (Path::new(&format!("/proc/{pid}")).exists(), c.id) {
            force_remove(docker, &id).await;
        }
    }
}

/// Which backend a test's orchestrator uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Docker,
    Process,
    /// Pods on the suite's Kubernetes node; only as a `pumphouse serve` process, made by
    /// [`TestApp::spawn_kubernetes`].
    Kubernetes,
}

/// A running orchestrator with its own Redis and store.
pub struct TestApp {
    pub base: String,
    pub http: reqwest::Client,
    pub redis: RedisServer,
    pub cluster: String,
    pub backend: Backend,
    pub store_url: String,
    /// Replica 0 is `base`; more exist with `spawn_replicas`.
    bases: Vec<String>,
    dir: TempDir,
    servers: Vec<Server>,
    docker: Option<bollard::Docker>,
    postgres: Option<PostgresServer>,
    /// The in-process orchestrator's supervisor, so tests can drive single steps.
    pub supervisor: Option<std::sync::Arc<pumphouse::supervisor::Supervisor>>,
}

/// Where the orchestrator under test runs.
enum Server {
    /// In this test's runtime: fast, and its state is reachable.
    InProcess(tokio::task::JoinHandle<()>),
    /// As `pumphouse serve`, so a test can kill it for real and start it again.
    Process {
        child: Option<Child>,
        args: Vec<String>,
        /// Set for it beyond the test's own environment (KUBECONFIG, for Kubernetes).
        env: Vec<(String, String)>,
        /// The process group of each `pumphouse serve` started, which its process-backend
        /// pumps share: a killed orchestrator leaves them running (as it would in use), so the
        /// test's end kills the groups.
        groups: Vec<u32>,
    },
}

/// A directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(prefix: &str) -> TempDir {
        let dir = std::env::temp_dir().join(unique(prefix));
        std::fs::create_dir_all(&dir).expect("creating a temp dir");
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        // A failed test keeps its directory (orchestrator logs among it) for the post-mortem.
        if std::thread::panicking() {
            eprintln!("kept for inspection: {}", self.0.display());
            return;
        }
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A flow the harness created, with its one-time webhook token.
#[derive(Debug, Clone)]
pub struct TestFlow {
    pub id: String,
    pub name: String,
    pub token: String,
}

impl TestApp {
    pub async fn spawn(backend: Backend) -> TestApp {
        Self::spawn_with(backend, |_| {}).await
    }

    /// Starts an orchestrator; `tweak` may change its configuration first.
    pub async fn spawn_with(backend: Backend, tweak: impl FnOnce(&mut ServeConfig)) -> TestApp {
        init_tracing();
        let docker = match backend {
            Backend::Docker => Some(docker().await),
            Backend::Process => None,
            Backend::Kubernetes => {
                panic!("a Kubernetes orchestrator runs as a process: TestApp::spawn_kubernetes")
            }
        };
        let redis = RedisServer::start().await;
        let dir = TempDir::new("pumphouse-test");
        let store_url = format!("sqlite://{}", dir.0.join("pumphouse.db").display());
        let cluster = unique("test");
        let mut config = ServeConfig::local(&store_url, &redis.url());
        config.listen = "127.0.0.1:0".parse().expect("an address");
        config.backend = match backend {
            Backend::Docker => BackendKind::Docker,
            Backend::Process | Backend::Kubernetes => BackendKind::Process,
        };
        config.pump_binary = Some(pump_binary());
        config.pump_image = PUMP_IMAGE.into();
        config.docker_network = "host".into();
        config.cluster = cluster.clone();
        config.heartbeat = Duration::from_millis(500);
        config.start_timeout = Duration::from_secs(20);
        tweak(&mut config);
        if let Some(docker) = &docker {
            let image = docker.inspect_image(&config.pump_image).await;
            assert!(
                image.is_ok(),
                "the pump image {} is missing; build it with ops/build-images.sh (ops/test.sh does)",
                config.pump_image
            );
        }
        let store_url = config.store_url.clone();
        let app = Application::build(config)
            .await
            .expect("the orchestrator starts");
        let base = format!("http://127.0.0.1:{}", app.port());
        let base_copy = base.clone();
        let supervisor = Some(app.state().supervisor.clone());
        let server = tokio::spawn(async move {
            let _ = app.run_until_stopped(std::future::pending()).await;
        });
        TestApp {
            base,
            http: reqwest::Client::new(),
            redis,
            cluster,
            backend,
            store_url,
            dir,
            bases: vec![base_copy],
            servers: vec![Server::InProcess(server)],
            docker,
            postgres: None,
            supervisor,
        }
    }

    /// Starts the orchestrator as a `pumphouse serve` process, with `extra` arguments.
    pub async fn spawn_process(backend: Backend, extra: &[&str]) -> TestApp {
        Self::spawn_replicas(backend, 1, None, extra).await
    }

    /// Starts `replicas` orchestrator processes sharing one Redis, one store and one cluster
    /// label: the store is a private PostgreSQL when `postgres` is given, else SQLite.
    pub async fn spawn_replicas(
        backend: Backend,
        replicas: usize,
        postgres: Option<PostgresServer>,
        extra: &[&str],
    ) -> TestApp {
        let redis = RedisServer::start().await;
        Self::spawn_processes(
            backend,
            replicas,
            postgres,
            extra,
            redis,
            unique("test"),
            &[],
        )
        .await
    }

    /// Starts `pumphouse serve --backend kubernetes` signed in with `kubeconfig` (the chart's
    /// ServiceAccount), its pumps pods in `namespace` on the suite's node, which reach this
    /// test's Redis at the node's address `node_ip`.
    pub async fn spawn_kubernetes(
        kubeconfig: &Path,
        namespace: &str,
        node_ip: &str,
        extra: &[&str],
    ) -> TestApp {
        let redis = RedisServer::start_reachable_from(node_ip).await;
        let pump_redis = redis.url_at(node_ip);
        let mut args = vec!["--kube-namespace", namespace, "--pump-redis", &pump_redis];
        args.extend(extra);
        // Kubernetes names carry the cluster: 16 characters at most.
        let cluster = format!("t{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
        let kubeconfig = kubeconfig.to_str().expect("a UTF-8 path").to_string();
        Self::spawn_processes(
            Backend::Kubernetes,
            1,
            None,
            &args,
            redis,
            cluster,
            &[("KUBECONFIG".to_string(), kubeconfig)],
        )
        .await
    }

    async fn spawn_processes(
        backend: Backend,
        replicas: usize,
        postgres: Option<PostgresServer>,
        extra: &[&str],
        redis: RedisServer,
        cluster: String,
        env: &[(String, String)],
    ) -> TestApp {
        let docker = match backend {
            Backend::Docker => Some(docker().await),
            Backend::Process | Backend::Kubernetes => None,
        };
        let dir = TempDir::new("pumphouse-test");
        let store_url = match &postgres {
            Some(pg) => pg.url(),
            None => format!("sqlite://{}", dir.0.join("pumphouse.db").display()),
        };
        let mut servers = Vec::new();
        let mut bases = Vec::new();
        for i in 0..replicas {
            let port = free_port();
            let mut args: Vec<String> = [
                "serve",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--store",
                &store_url,
                "--redis",
                &redis.url(),
                "--backend",
                match backend {
                    Backend::Docker => "docker",
                    Backend::Process => "process",
                    Backend::Kubernetes => "kubernetes",
                },
                "--pump-binary",
                pump_binary().to_str().expect("a UTF-8 path"),
                "--pump-image",
                PUMP_IMAGE,
                "--docker-network",
                "host",
                "--cluster",
                &cluster,
                "--replica",
                &format!("replica-{i}"),
                "--heartbeat",
                "500ms",
                "--start-timeout",
                "20s",
                "--log-format",
                "json",
            ]
            .iter()
            .map(|a| a.to_string())
            .collect();
            // A setting in `extra` replaces the harness's own (clap refuses one given twice).
            for flag in extra.iter().filter(|a| a.starts_with("--")) {
                if let Some(at) = args.iter().position(|a| a == flag) {
                    args.drain(at..at + 2);
                }
            }
            args.extend(extra.iter().map(|a| a.to_string()));
            servers.push(Server::Process {
                child: None,
                args,
                env: env.to_vec(),
                groups: Vec::new(),
            });
            bases.push(format!("http://127.0.0.1:{port}"));
        }
        let mut app = TestApp {
            base: bases[0].clone(),
            bases,
            http: reqwest::Client::new(),
            redis,
            cluster,
            backend,
            store_url,
            dir,
            servers,
            docker,
            postgres,
            supervisor: None,
        };
        for i in 0..replicas {
            app.start_replica(i).await;
        }
        app
    }

    /// (Re)starts the `pumphouse serve` process and waits until it is ready.
    pub async fn start_server(&mut self) {
        self.start_replica(0).await;
    }

    /// (Re)starts replica `i` and waits until it is ready.
    pub async fn start_replica(&mut self, i: usize) {
        let log = self.dir.0.join(format!("server-{i}.log"));
        let Server::Process {
            child,
            args,
            env,
            groups,
        } = &mut self.servers[i]
        else {
            panic!("start_replica needs orchestrators made by spawn_process or spawn_replicas");
        };
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("the server log");
        let started = Command::new(pumphouse_binary())
            .args(args.iter())
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(out)
            .process_group(0)
            .spawn()
            .expect("starting pumphouse serve");
        groups.push(started.id());
        *child = Some(started);
        let ready = format!("{}/readyz", self.bases[i]);
        let started = Instant::now();
        loop {
            if let Ok(r) = self.http.get(&ready).send().await {
                if r.status().is_success() {
                    return;
                }
            }
            let log = std::fs::read_to_string(&log).unwrap_or_default();
            assert!(
                started.elapsed() < DEADLINE,
                "pumphouse serve never got ready; its log:\n{log}"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// The process id of replica `i` (a `pumphouse serve` process), while it runs.
    pub fn replica_pid(&self, i: usize) -> Option<u32> {
        match &self.servers[i] {
            Server::Process { child, .. } => child.as_ref().map(|c| c.id()),
            Server::InProcess(_) => None,
        }
    }

    /// Kills the orchestrator process with SIGKILL: no chance to clean up.
    pub fn kill_server(&mut self) {
        self.kill_replica(0);
    }

    /// Kills replica `i` with SIGKILL.
    pub fn kill_replica(&mut self, i: usize) {
        if let Server::Process { child, .. } = &mut self.servers[i] {
            if let Some(mut c) = child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }

    /// Sends SIGTERM to the orchestrator process and returns how it exited.
    pub fn terminate_server(&mut self) -> std::process::ExitStatus {
        let Server::Process { child, .. } = &mut self.servers[0] else {
            panic!("terminate_server needs an orchestrator made by spawn_process");
        };
        let mut c = child.take().expect("a running server");
        signal(c.id(), "TERM");
        c.wait().expect("waiting for pumphouse serve")
    }

    /// The base URL of replica `i`.
    pub fn replica(&self, i: usize) -> &str {
        &self.bases[i]
    }

    /// Which replicas say they lead, by their `/readyz`.
    pub async fn leaders(&self) -> Vec<usize> {
        let mut leaders = Vec::new();
        for (i, base) in self.bases.iter().enumerate() {
            if let Ok(r) = self.http.get(format!("{base}/readyz")).send().await {
                if let Ok(v) = r.json::<Value>().await {
                    if v["role"] == "leader" {
                        leaders.push(i);
                    }
                }
            }
        }
        leaders
    }

    /// The PostgreSQL server the store lives on, for a test that stops it.
    pub fn postgres(&self) -> &PostgresServer {
        self.postgres
            .as_ref()
            .expect("a test with a PostgreSQL store")
    }

    /// The orchestrator process's log so far.
    pub fn server_log(&self) -> String {
        std::fs::read_to_string(self.dir.0.join("server-0.log")).unwrap_or_default()
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        let resp = self
            .http
            .get(self.url(path))
            .send()
            .await
            .expect("GET answered");
        read(resp).await
    }

    pub async fn post(&self, path: &str, body: &str) -> (u16, Value) {
        let resp = self
            .http
            .post(self.url(path))
            .body(body.to_string())
            .send()
            .await
            .expect("POST answered");
        read(resp).await
    }

    /// Any request, with a bearer token when given.
    pub async fn call_as(
        &self,
        token: Option<&str>,
        method: reqwest::Method,
        path: &str,
        body: &str,
    ) -> (u16, Value) {
        let mut req = self
            .http
            .request(method, self.url(path))
            .body(body.to_string());
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        read(req.send().await.expect("the server answered")).await
    }

    /// Creates a flow from a manifest and returns it with its webhook token.
    pub async fn create_flow(&self, manifest: &str) -> TestFlow {
        let (code, body) = self.post("/api/flows", manifest).await;
        assert_eq!(code, 201, "creating a flow: {body}");
        let token = body["webhook_token"]
            .as_str()
            .expect("a webhook token")
            .to_string();
        TestFlow {
            id: body["flow"]["id"].as_str().expect("an id").to_string(),
            name: body["flow"]["name"].as_str().expect("a name").to_string(),
            token,
        }
    }

    pub async fn start(&self, flow: &TestFlow) {
        let (code, body) = self
            .post(&format!("/api/flows/{}/start", flow.id), "")
            .await;
        assert!(
            code == 202 || code == 200,
            "starting {}: {code} {body}",
            flow.name
        );
    }

    /// Waits until the flow's status is `want`, failing the test at the deadline with the
    /// status it has instead.
    pub async fn wait_status(&self, flow: &TestFlow, want: &str) -> Value {
        let started = Instant::now();
        loop {
            let (_, s) = self.get(&format!("/api/flows/{}/status", flow.id)).await;
            if s["status"] == want {
                return s;
            }
            assert!(
                started.elapsed() < DEADLINE,
                "flow {} never became {want}; status now: {s:#}",
                flow.name
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn webhook(&self, flow: &TestFlow, body: &Value) -> (u16, Value) {
        self.post(
            &format!("/api/triggers/{}/webhook/{}", flow.id, flow.token),
            &body.to_string(),
        )
        .await
    }

    /// Waits until an execution has finished (completed or failed) and returns it.
    pub async fn wait_execution(&self, flow: &TestFlow, execution_id: &str) -> Value {
        let started = Instant::now();
        loop {
            let (code, e) = self
                .get(&format!("/api/flows/{}/executions/{execution_id}", flow.id))
                .await;
            assert_eq!(code, 200, "reading execution {execution_id}: {e}");
            if e["status"] == "completed" || e["status"] == "failed" {
                return e;
            }
            assert!(
                started.elapsed() < DEADLINE,
                "execution {execution_id} never finished; now: {e:#}"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Waits until an execution has `status` (`running`, say) and returns it.
    pub async fn wait_execution_status(
        &self,
        flow: &TestFlow,
        execution_id: &str,
        status: &str,
    ) -> Value {
        let started = Instant::now();
        loop {
            let (_, e) = self
                .get(&format!("/api/flows/{}/executions/{execution_id}", flow.id))
                .await;
            if e["status"] == status {
                return e;
            }
            assert!(
                started.elapsed() < DEADLINE,
                "execution {execution_id} never became {status}: {e}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn executions(&self, flow: &TestFlow) -> Vec<Value> {
        let (code, v) = self
            .get(&format!("/api/flows/{}/executions", flow.id))
            .await;
        assert_eq!(code, 200, "{v}");
        v.as_array().cloned().unwrap_or_default()
    }

    /// The flow's container, if the Docker backend has one.
    pub async fn container(
        &self,
        flow: &TestFlow,
    ) -> Option<bollard::models::ContainerInspectResponse> {
        let docker = self.docker.as_ref().expect("a Docker test");
        let name = format!("pumphouse-{}-{}", self.cluster, flow.id);
        docker
            .inspect_container(
                &name,
                None::<bollard::query_parameters::InspectContainerOptions>,
            )
            .await
            .ok()
    }

    /// Waits until the flow's status shows no pump: the backend has none for it.
    pub async fn wait_no_pump(&self, flow: &TestFlow) {
        let started = Instant::now();
        loop {
            let (_, s) = self.get(&format!("/api/flows/{}/status", flow.id)).await;
            if s["pump"].is_null() {
                return;
            }
            assert!(
                started.elapsed() < DEADLINE,
                "flow {} still has a pump: {s:#}",
                flow.name
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The environment the flow's running pump was given (the container's env, or the
    /// process's /proc environ): what a pump, hostile or not, holds.
    pub async fn pump_env(&self, flow: &TestFlow) -> Vec<String> {
        match self.backend {
            Backend::Docker => self
                .container(flow)
                .await
                .and_then(|c| c.config)
                .and_then(|c| c.env)
                .expect("the pump container has an env"),
            Backend::Kubernetes => panic!(
                "a Kubernetes pump's secret env is in its Secret, not readable from its pod; read the Secret as admin"
            ),
            Backend::Process => {
                let (_, s) = self.get(&format!("/api/flows/{}/status", flow.id)).await;
                let pid = s["pump"]["pump_ref"]
                    .as_str()
                    .and_then(|r| r.strip_prefix("pid:"))
                    .unwrap_or_else(|| panic!("a process pump has a pid: {s:#}"))
                    .to_string();
                let raw =
                    std::fs::read(format!("/proc/{pid}/environ")).expect("the pump's environ");
                raw.split(|b| *b == 0)
                    .filter(|v| !v.is_empty())
                    .map(|v| String::from_utf8_lossy(v).into_owned())
                    .collect()
            }
        }
    }

    /// One variable of the flow's running pump's environment.
    pub async fn pump_var(&self, flow: &TestFlow, name: &str) -> String {
        let prefix = format!("{name}=");
        self.pump_env(flow)
            .await
            .iter()
            .find_map(|v| v.strip_prefix(&prefix))
            .unwrap_or_else(|| panic!("the pump has no {name}"))
            .to_string()
    }

    /// The text of `/metrics`.
    pub async fn metrics_text(&self) -> String {
        let resp = self
            .http
            .get(self.url("/metrics"))
            .send()
            .await
            .expect("the server answered");
        assert_eq!(resp.status().as_u16(), 200, "GET /metrics");
        resp.text().await.expect("a text body")
    }

    /// Everything the flow's pump container printed so far, stdout and stderr.
    pub async fn pump_log(&self, flow: &TestFlow) -> String {
        use futures_util::StreamExt as _;
        let docker = self.docker.as_ref().expect("a Docker test");
        let name = format!("pumphouse-{}-{}", self.cluster, flow.id);
        let opts = bollard::query_parameters::LogsOptions {
            stdout: true,
            stderr: true,
            ..Default::default()
        };
        let mut frames = docker.logs(&name, Some(opts));
        let mut log = String::new();
        while let Some(Ok(frame)) = frames.next().await {
            log.push_str(&String::from_utf8_lossy(&frame.into_bytes()));
        }
        log
    }
}

async fn read(resp: reqwest::Response) -> (u16, Value) {
    let code = resp.status().as_u16();
    let text = resp.text().await.unwrap_or_default();
    let value = serde_json::from_str(&text).unwrap_or(json!(text));
    (code, value)
}

impl Drop for TestApp {
    fn drop(&mut self) {
        for server in &mut self.servers {
            match server {
                Server::InProcess(task) => task.abort(),
                Server::Process { child, groups, .. } => {
                    if let Some(c) = child.as_mut() {
                        let _ = c.kill();
                        let _ = c.wait();
                    }
                    for group in groups.iter() {
                        let _ = Command::new("kill")
                            .args(["-KILL", "--", &format!("-{group}")])
                            .stderr(Stdio::null())
                            .status();
                    }
                }
            }
        }
        // Servers first: the store goes after them.
        self.postgres.take();
        if let Some(docker) = self.docker.take() {
            // Remove this test's pumps; a blocking pass is fine at the end of a test.
            let cluster = self.cluster.clone();
            let handle = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("a runtime");
                rt.block_on(async move {
                    let label = format!("{}={cluster}", pumphouse::backend::labels::CLUSTER);
                    for c in labelled(&docker, label).await {
                        if let Some(id) = c.id {
                            force_remove(&docker, &id).await;
                        }
                    }
                });
            });
            let _ = handle.join();
        }
    }
}

/// A flow row as the store keeps it, `running` and kept alive, for tests that drive the store
/// or the dispatcher directly (no pump behind it).
pub fn running_flow_record(tenant_id: &str, name: &str) -> pumphouse::store::FlowRecord {
    use pumphouse::store::{now_ms, status, FlowRecord};
    FlowRecord {
        id: uuid::Uuid::new_v4().to_string(),
        tenant_id: tenant_id.into(),
        name: name.into(),
        manifest: format!("name: {name}\nconfig: {{}}\n"),
        desired_state: "running".into(),
        status: status::RUNNING.into(),
        status_reason: None,
        webhook_token_hash: "h".into(),
        idle_timeout_ms: 60_000,
        keep_alive: true,
        instance_id: None,
        pump_ref: None,
        created_at: now_ms(),
        updated_at: now_ms(),
    }
}

/// A manifest for the reference pump with the given steps (YAML list items, indented by 4).
pub fn manifest(name: &str, extra: &str, steps: &str) -> String {
    format!("name: {name}\n{extra}config:\n  steps:\n{steps}")
}

/// Runs a container labelled as one of `cluster`'s pumps, for a flow that does not exist: what
/// an orchestrator must treat as an orphan. Returns its id.
pub async fn run_labelled_container(docker: &bollard::Docker, cluster: &str) -> String {
    use bollard::models::{ContainerCreateBody, HostConfig};
    use bollard::query_parameters::{CreateContainerOptionsBuilder, StartContainerOptions};
    use pumphouse::backend::labels;
    let flow_id = uuid::Uuid::new_v4().to_string();
    let labels = std::collections::HashMap::from([
        (
            labels::MANAGED_BY.to_string(),
            labels::MANAGED_BY_VALUE.to_string(),
        ),
        (labels::CLUSTER.to_string(), cluster.to_string()),
        (labels::FLOW.to_string(), flow_id.clone()),
        (labels::INSTANCE.to_string(), "orphan".to_string()),
    ]);
    let body = ContainerCreateBody {
        image: Some(PUMP_IMAGE.to_string()),
        // No FLOW_ID: the pump exits at once, which is fine; an orphan need not run.
        labels: Some(labels),
        host_config: Some(HostConfig {
            network_mode: Some("host".into()),
            ..Default::default()
        }),
        ..Default::default()
    };
    let name = format!("pumphouse-{cluster}-{flow_id}");
    let id = docker
        .create_container(
            Some(CreateContainerOptionsBuilder::default().name(&name).build()),
            body,
        )
        .await
        .expect("creating the orphan")
        .id;
    docker
        .start_container(&id, None::<StartContainerOptions>)
        .await
        .expect("starting the orphan");
    id
}

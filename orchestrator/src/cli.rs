//! The `pumphouse` command line: `serve` runs the orchestrator; the other commands talk to one
//! over its API.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use clap::{Args, Parser, Subcommand};
use serde_json::Value;

use crate::app::{Application, ServeConfig};
use crate::backend::BackendKind;
use crate::client::Client;

#[derive(Debug, Parser)]
#[command(name = "pumphouse", version, about = "Per-flow container orchestrator")]
struct Cli {
    /// The pumphouse API to talk to.
    #[arg(
        long,
        global = true,
        env = "PUMPHOUSE_API",
        default_value = "http://127.0.0.1:8080"
    )]
    api: String,
    /// `table` for people, `json` for scripts (the API's own answer).
    #[arg(long, short = 'o', global = true, default_value = "table", value_parser = ["table", "json"])]
    output: String,
    /// API token, when the server requires one.
    #[arg(long, global = true, env = "PUMPHOUSE_TOKEN", hide_env_values = true)]
    token: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the orchestrator.
    Serve(Box<ServeArgs>),
    /// Manage flows.
    #[command(subcommand)]
    Flow(FlowCommand),
    /// Send a trigger to a flow, as its "Run" button would.
    Trigger {
        /// The flow's name or id.
        name: String,
        /// JSON payload.
        #[arg(long)]
        data: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
enum FlowCommand {
    /// Create the flow a manifest describes, or update it if it exists.
    Apply {
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
    },
    /// List flows.
    Ls,
    /// Start a flow's pump and wait until it is ready.
    Start {
        name: String,
        /// Return at once instead of waiting for the pump to be ready.
        #[arg(long)]
        no_wait: bool,
        /// How long to wait for the pump.
        #[arg(long, default_value = "60s", value_parser = parse_duration)]
        timeout: Duration,
    },
    /// Stop a flow's pump.
    Stop { name: String },
    /// Show a flow's status, its pump and its recent events.
    Status { name: String },
    /// Show the last lines of a flow's pump log.
    Logs {
        name: String,
        #[arg(long, default_value_t = 100)]
        tail: usize,
        /// Keep printing new lines as the pump writes them.
        #[arg(short = 'f', long)]
        follow: bool,
    },
    /// Show a flow's recent executions.
    Executions {
        name: String,
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
    /// Delete a flow, stopping its pump.
    Rm { name: String },
    /// Give a flow a new webhook token; the old one stops working at once.
    RotateToken { name: String },
}

#[derive(Debug, Args)]
struct ServeArgs {
    #[arg(long, env = "PUMPHOUSE_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// sqlite://FILE (created when missing) or postgres://USER:PASSWORD@HOST/DB.
    #[arg(
        long,
        env = "PUMPHOUSE_STORE",
        default_value = "sqlite://pumphouse.db",
        hide_env_values = true
    )]
    store: String,
    #[arg(
        long,
        env = "PUMPHOUSE_REDIS",
        default_value = "redis://127.0.0.1:6379",
        hide_env_values = true
    )]
    redis: String,
    /// REDIS_URL for pumps, when they reach Redis at another address than the orchestrator.
    #[arg(long, env = "PUMPHOUSE_PUMP_REDIS", hide_env_values = true)]
    pump_redis: Option<String>,
    /// auto (Docker if its socket answers, else process), docker, process, or kubernetes (in
    /// builds with the `kubernetes` feature).
    #[arg(long, env = "PUMPHOUSE_BACKEND", default_value = "auto")]
    backend: BackendKind,
    /// Docker socket; DOCKER_HOST or /var/run/docker.sock by default.
    #[arg(long, env = "PUMPHOUSE_DOCKER_SOCKET")]
    docker_socket: Option<String>,
    /// Network mode for pump containers: host, bridge or a network's name.
    #[arg(long, env = "PUMPHOUSE_DOCKER_NETWORK", default_value = "host")]
    docker_network: String,
    #[arg(
        long,
        env = "PUMPHOUSE_PUMP_IMAGE",
        default_value = "pumphouse/pump:dev"
    )]
    pump_image: String,
    /// The pump program for the process backend; `pump` beside this binary by default.
    #[arg(long, env = "PUMPHOUSE_PUMP_BINARY")]
    pump_binary: Option<PathBuf>,
    /// Label value naming this deployment's pumps.
    #[arg(long, env = "PUMPHOUSE_CLUSTER", default_value = "default")]
    cluster: String,
    /// Kubernetes backend: the namespace pumps run in; the orchestrator's own (or the
    /// kubeconfig's) by default.
    #[arg(long, env = "PUMPHOUSE_KUBE_NAMESPACE")]
    kube_namespace: Option<String>,
    /// Kubernetes backend: an image pull secret in the pumps' namespace, for private images.
    #[arg(long, env = "PUMPHOUSE_KUBE_IMAGE_PULL_SECRET")]
    kube_image_pull_secret: Option<String>,
    #[arg(long, env = "PUMPHOUSE_HEARTBEAT", default_value = "5s", value_parser = parse_duration)]
    heartbeat: Duration,
    /// A pump that has not reported ready after this long puts its flow in `error`.
    #[arg(long, env = "PUMPHOUSE_START_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    start_timeout: Duration,
    /// First wait before restarting a crashed pump; doubles with each crash.
    #[arg(long, env = "PUMPHOUSE_RESTART_BACKOFF", default_value = "500ms", value_parser = parse_duration)]
    restart_backoff: Duration,
    /// This many crashes within --crash-window put the flow in `error` (a crash loop).
    #[arg(long, env = "PUMPHOUSE_CRASH_LIMIT", default_value_t = 5)]
    crash_limit: usize,
    #[arg(long, env = "PUMPHOUSE_CRASH_WINDOW", default_value = "2m", value_parser = parse_duration)]
    crash_window: Duration,
    /// How often every flow is reconciled against the backend (missed events, orphans).
    #[arg(long, env = "PUMPHOUSE_RESYNC_INTERVAL", default_value = "30s", value_parser = parse_duration)]
    resync_interval: Duration,
    /// How long the leader's lease lasts unrenewed; a dead leader is replaced within about
    /// this long (PostgreSQL with several replicas).
    #[arg(long, env = "PUMPHOUSE_LEASE_TTL", default_value = "10s", value_parser = parse_duration)]
    lease_ttl: Duration,
    /// This replica's name in the leader lease; the host name by default.
    #[arg(long, env = "PUMPHOUSE_REPLICA")]
    replica: Option<String>,
    /// Bearer token required on the management API. Without it the API is open.
    #[arg(long, env = "PUMPHOUSE_API_TOKEN", hide_env_values = true)]
    api_token: Option<String>,
    /// Base URL used in the webhook URLs handed out.
    #[arg(long, env = "PUMPHOUSE_PUBLIC_URL")]
    public_url: Option<String>,
    /// `json` (one object a line) or `text`; `text` when stderr is a terminal by default.
    #[arg(long, env = "PUMPHOUSE_LOG_FORMAT")]
    log_format: Option<String>,
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    pumphouse_pump::duration::parse(text)
}

/// Runs the command line; the exit code says whether it worked.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let client = Client::new(&cli.api, cli.token.clone());
    match cli.command {
        Command::Serve(args) => serve(*args).await,
        Command::Flow(cmd) => flow(&client, cmd, cli.output == "json").await,
        Command::Trigger { name, data } => {
            let body = match data {
                Some(d) => {
                    serde_json::from_str::<Value>(&d).context(
                        "--data is not JSON; quote it, like --data '{\"name\": \"ada\"}'",
                    )?;
                    Some((d.into_bytes(), "application/json"))
                }
                None => None,
            };
            let v = client
                .call(
                    reqwest::Method::POST,
                    &format!("/api/triggers/{name}/inject"),
                    body,
                )
                .await?;
            println!(
                "accepted: execution {} (see it with `pumphouse flow executions {name}`)",
                v["execution_id"].as_str().unwrap_or("?")
            );
            Ok(())
        }
    }
}

fn init_tracing(format: Option<&str>) -> anyhow::Result<()> {
    use std::io::IsTerminal as _;
    let filter = tracing_subscriber::EnvFilter::try_from_env("PUMPHOUSE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let json = match format {
        Some("json") => true,
        Some("text") => false,
        Some(other) => bail!("--log-format `{other}` is not known; use json or text"),
        None => !std::io::stderr().is_terminal(),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().flatten_event(true).init();
    } else {
        builder.init();
    }
    Ok(())
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    init_tracing(args.log_format.as_deref())?;
    let config = ServeConfig {
        listen: args.listen,
        store_url: args.store,
        redis_url: args.redis,
        pump_redis_url: args.pump_redis,
        backend: args.backend,
        docker_socket: args.docker_socket,
        docker_network: args.docker_network,
        pump_image: args.pump_image,
        pump_binary: args.pump_binary,
        cluster: args.cluster,
        kube_namespace: args.kube_namespace,
        kube_image_pull_secret: args.kube_image_pull_secret,
        heartbeat: args.heartbeat,
        start_timeout: args.start_timeout,
        restart_backoff: args.restart_backoff,
        crash_limit: args.crash_limit,
        crash_window: args.crash_window,
        resync_interval: args.resync_interval,
        lease_ttl: args.lease_ttl,
        replica: args.replica,
        api_token: args.api_token,
        public_url: args.public_url,
    };
    let app = Application::build(config).await?;
    app.run_until_stopped(shutdown_signal()).await?;
    tracing::info!("stopped serving; pumps keep running");
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    tracing::info!("shutting down: finishing requests in flight");
}

/// `95_000` -> `1m ago`.
fn ago(ms: i64) -> String {
    let s = ms.max(0) / 1000;
    match s {
        0..=59 => format!("{s}s ago"),
        60..=3599 => format!("{}m ago", s / 60),
        3600..=86_399 => format!("{}h ago", s / 3600),
        _ => format!("{}d ago", s / 86_400),
    }
}

async fn flow(client: &Client, cmd: FlowCommand, json: bool) -> anyhow::Result<()> {
    match cmd {
        FlowCommand::Apply { file } => {
            let text = std::fs::read(&file)
                .with_context(|| format!("cannot read the manifest {}", file.display()))?;
            let name = crate::manifest::Manifest::parse(&String::from_utf8_lossy(&text))
                .map(|m| m.name)
                .map_err(|e| {
                    anyhow::anyhow!(
                        "{}: {}{}",
                        file.display(),
                        e.message,
                        e.line.map(|l| format!(" (line {l})")).unwrap_or_default()
                    )
                })?;
            let existing = client.get("/api/flows").await?;
            let found = existing
                .as_array()
                .and_then(|flows| flows.iter().find(|f| f["name"] == name.as_str()).cloned());
            match found {
                Some(f) => {
                    let id = f["id"].as_str().unwrap_or(&name).to_string();
                    let v = client
                        .call(
                            reqwest::Method::PUT,
                            &format!("/api/flows/{id}"),
                            Some((text, "application/yaml")),
                        )
                        .await?;
                    println!("flow {name} updated");
                    if v["restart_required"].as_bool() == Some(true) {
                        println!("its pump runs the old manifest until you run: pumphouse flow stop {name} && pumphouse flow start {name}");
                    }
                }
                None => {
                    let v = client
                        .call(
                            reqwest::Method::POST,
                            "/api/flows",
                            Some((text, "application/yaml")),
                        )
                        .await?;
                    println!(
                        "flow {name} created (id {})",
                        v["flow"]["id"].as_str().unwrap_or("?")
                    );
                    println!("webhook URL (shown only now; keep it secret):");
                    println!("  {}", v["webhook_url"].as_str().unwrap_or("?"));
                    println!("start it with: pumphouse flow start {name}");
                }
            }
            Ok(())
        }
        FlowCommand::Ls => {
            let flows = client.get("/api/flows").await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&flows)?);
                return Ok(());
            }
            let list = flows.as_array().cloned().unwrap_or_default();
            if list.is_empty() {
                println!("no flows yet; create one with `pumphouse flow apply -f FLOW.yaml`");
                return Ok(());
            }
            let now = crate::store::now_ms();
            println!(
                "{:<28} {:<9} {:<8} {:<14} ID",
                "NAME", "STATUS", "DESIRED", "LAST ACTIVITY"
            );
            for f in list {
                println!(
                    "{:<28} {:<9} {:<8} {:<14} {}",
                    f["name"].as_str().unwrap_or(""),
                    f["status"].as_str().unwrap_or(""),
                    f["desired_state"].as_str().unwrap_or(""),
                    ago(now - f["last_activity_at"].as_i64().unwrap_or(now)),
                    f["id"].as_str().unwrap_or("")
                );
            }
            Ok(())
        }
        FlowCommand::Start {
            name,
            no_wait,
            timeout,
        } => {
            client.post(&format!("/api/flows/{name}/start")).await?;
            if no_wait {
                println!("flow {name} is starting");
                return Ok(());
            }
            let started = Instant::now();
            loop {
                let s = client.get(&format!("/api/flows/{name}/status")).await?;
                match s["status"].as_str() {
                    Some("running") => {
                        println!("flow {name} is running");
                        return Ok(());
                    }
                    Some("error") => bail!(
                        "flow {name} failed to start: {}",
                        s["reason"].as_str().unwrap_or("no reason given")
                    ),
                    _ if started.elapsed() > timeout => bail!(
                        "flow {name} is still {} after {timeout:?}; see `pumphouse flow status {name}` and `pumphouse flow logs {name}`",
                        s["status"].as_str().unwrap_or("?")
                    ),
                    _ => tokio::time::sleep(Duration::from_millis(200)).await,
                }
            }
        }
        FlowCommand::Stop { name } => {
            client.post(&format!("/api/flows/{name}/stop")).await?;
            println!("flow {name} stopped");
            Ok(())
        }
        FlowCommand::Status { name } => {
            let s = client.get(&format!("/api/flows/{name}/status")).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&s)?);
                return Ok(());
            }
            println!(
                "flow:     {} ({})",
                s["name"].as_str().unwrap_or(""),
                s["id"].as_str().unwrap_or("")
            );
            println!(
                "status:   {} (desired: {})",
                s["status"].as_str().unwrap_or(""),
                s["desired_state"].as_str().unwrap_or("")
            );
            if let Some(reason) = s["reason"].as_str() {
                println!("reason:   {reason}");
            }
            println!("backend:  {}", s["backend"].as_str().unwrap_or(""));
            if s["pump"].is_object() {
                let p = &s["pump"];
                println!(
                    "pump:     {} {}",
                    p["pump_ref"].as_str().unwrap_or(""),
                    p["state"].as_str().unwrap_or("")
                );
            }
            if s["heartbeat"].is_object() {
                let h = &s["heartbeat"];
                println!(
                    "heartbeat: in flight {}, processed {}",
                    h["in_flight"], h["processed"]
                );
            }
            println!("recent events:");
            for e in s["events"].as_array().into_iter().flatten() {
                println!(
                    "  {} {} -> {}: {}",
                    e["at"],
                    e["from_status"].as_str().unwrap_or("-"),
                    e["to_status"].as_str().unwrap_or(""),
                    e["reason"].as_str().unwrap_or("")
                );
            }
            Ok(())
        }
        FlowCommand::Logs {
            name,
            tail,
            follow: true,
        } => {
            client
                .follow(
                    &format!("/api/flows/{name}/logs?tail={tail}&follow=true"),
                    |line| println!("{line}"),
                )
                .await?;
            Ok(())
        }
        FlowCommand::Logs { name, tail, .. } => {
            let v = client
                .get(&format!("/api/flows/{name}/logs?tail={tail}"))
                .await?;
            for line in v["lines"].as_array().into_iter().flatten() {
                println!("{}", line.as_str().unwrap_or(""));
            }
            Ok(())
        }
        FlowCommand::Executions { name, limit } => {
            let v = client
                .get(&format!("/api/flows/{name}/executions?limit={limit}"))
                .await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&v)?);
                return Ok(());
            }
            println!(
                "{:<36} {:<8} {:<9} {:>8} OUTPUT/ERROR",
                "ID", "TRIGGER", "STATUS", "MS"
            );
            for e in v.as_array().into_iter().flatten() {
                let detail = if e["status"] == "failed" {
                    e["error"].as_str().unwrap_or("").to_string()
                } else {
                    e["output"].to_string()
                };
                println!(
                    "{:<36} {:<8} {:<9} {:>8} {}",
                    e["id"].as_str().unwrap_or(""),
                    e["trigger_type"].as_str().unwrap_or(""),
                    e["status"].as_str().unwrap_or(""),
                    e["duration_ms"]
                        .as_i64()
                        .map(|d| d.to_string())
                        .unwrap_or_default(),
                    detail
                );
            }
            Ok(())
        }
        FlowCommand::RotateToken { name } => {
            let v = client
                .post(&format!("/api/flows/{name}/webhook-token"))
                .await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&v)?);
                return Ok(());
            }
            println!("new webhook URL for {name} (shown only now; the old one no longer works):");
            println!("  {}", v["webhook_url"].as_str().unwrap_or("?"));
            Ok(())
        }
        FlowCommand::Rm { name } => {
            client
                .call(reqwest::Method::DELETE, &format!("/api/flows/{name}"), None)
                .await?;
            println!("flow {name} deleted");
            Ok(())
        }
    }
}

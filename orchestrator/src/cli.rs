//! The `pumphouse` command line: `serve` runs the orchestrator; the other commands talk to one
//! over its API.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use clap::{Args, CommandFactory as _, FromArgMatches as _, Parser, Subcommand};
use serde_json::Value;

use crate::app::{Application, ServeConfig};
use crate::backend::BackendKind;
use crate::client::Client;
use crate::secrets::MasterKey;

/// `println!` for what the CLI prints as its answer. Rust ignores SIGPIPE, so `println!` into a
/// closed pipe (`pumphouse flow ls | head -1`) panics; a CLI in a pipeline should stop quietly,
/// as coreutils do, with the status a SIGPIPE death reports (141).
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        if let Err(e) = writeln!(std::io::stdout(), $($arg)*) {
            crate::cli::stdout_failed(&e);
        }
    }};
}

/// What a failed write of the answer does: a reader gone ends the CLI quietly; anything else
/// (a full disk) is said.
pub(crate) fn stdout_failed(e: &std::io::Error) -> ! {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        std::process::exit(141);
    }
    eprintln!("pumphouse: cannot write to standard output: {e}");
    std::process::exit(1);
}

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
    /// Manage tenants and their API tokens (the admin token; a tenant may manage its own tokens).
    #[command(subcommand)]
    Tenant(TenantCommand),
    /// Show who changed what: the audit log of your tenant.
    Audit {
        /// Only this flow (name or id), deleted or not.
        #[arg(long)]
        flow: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// The master key that seals flow secrets: make one, rotate it.
    #[command(subcommand)]
    Secrets(SecretsCommand),
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
    /// Set, list or delete a flow's secrets (environment variables stored encrypted).
    #[command(subcommand)]
    Secret(SecretCommand),
}

#[derive(Debug, Subcommand)]
enum SecretCommand {
    /// Set a secret, reading its value from stdin (never from the command line, which `ps`
    /// shows): `pumphouse flow secret set hello API_KEY < api.key`.
    Set {
        /// The flow's name or id.
        flow: String,
        /// The variable the pump sees.
        name: String,
        /// Keep one trailing newline of the input, which is dropped by default.
        #[arg(long)]
        keep_newline: bool,
    },
    /// List a flow's secrets by name (values are never shown).
    Ls { flow: String },
    /// Delete a secret.
    Rm { flow: String, name: String },
}

#[derive(Debug, Subcommand)]
enum SecretsCommand {
    /// Print a new random master key (base64 of 32 bytes) for --master-key-file.
    NewKey,
    /// Re-seal every flow secret in a store from an old master key to a new one, in one
    /// transaction; then restart the servers with the new key.
    ReEncrypt {
        /// The store, as `pumphouse serve --store` names it.
        #[arg(
            long,
            env = "PUMPHOUSE_STORE",
            hide_env_values = true,
            required_unless_present = "store_file"
        )]
        store: Option<String>,
        /// A file holding the store URL, as `pumphouse serve --store-file`.
        #[arg(long, env = "PUMPHOUSE_STORE_FILE", conflicts_with = "store")]
        store_file: Option<PathBuf>,
        /// File holding the key the secrets are sealed with now.
        #[arg(long)]
        from_key_file: PathBuf,
        /// File holding the new key.
        #[arg(long)]
        to_key_file: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum TenantCommand {
    /// Create a tenant; prints its first API token, shown only then.
    Create {
        /// 1 to 40 lower-case letters, digits and dashes.
        id: String,
        #[arg(long)]
        name: Option<String>,
    },
    /// List tenants.
    Ls,
    /// List a tenant's API tokens (never the tokens themselves).
    Tokens { tenant: String },
    /// Give a tenant a new API token, shown only now.
    AddToken { tenant: String, name: String },
    /// Revoke an API token at once.
    RevokeToken { tenant: String, token_id: String },
}

#[derive(Debug, Args)]
struct ServeArgs {
    #[arg(long, env = "PUMPHOUSE_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// sqlite://FILE (created when missing, mode 0600) or postgres://USER:PASSWORD@HOST/DB.
    /// A URL with a password belongs in PUMPHOUSE_STORE or --store-file: every user of the
    /// host can read a command line.
    #[arg(
        long,
        env = "PUMPHOUSE_STORE",
        default_value = "sqlite://pumphouse.db",
        hide_env_values = true
    )]
    store: String,
    /// A file holding the --store URL (one trailing newline is dropped).
    #[arg(long, env = "PUMPHOUSE_STORE_FILE", conflicts_with = "store")]
    store_file: Option<PathBuf>,
    /// The Redis URL, as an admin user (it makes a Redis user per pump). With a password, give
    /// it in PUMPHOUSE_REDIS or --redis-file rather than on the command line.
    #[arg(
        long,
        env = "PUMPHOUSE_REDIS",
        default_value = "redis://127.0.0.1:6379",
        hide_env_values = true
    )]
    redis: String,
    /// A file holding the --redis URL (one trailing newline is dropped).
    #[arg(long, env = "PUMPHOUSE_REDIS_FILE", conflicts_with = "redis")]
    redis_file: Option<PathBuf>,
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
    /// Kubernetes backend: how long one request to the API server may wait for an answer.
    /// A followed log (`flow logs -f`) is not one: it lasts as long as the caller listens.
    #[arg(long, env = "PUMPHOUSE_KUBE_REQUEST_TIMEOUT", default_value = "295s", value_parser = parse_duration)]
    kube_request_timeout: Duration,
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
    /// The admin's bearer token: manages tenants and acts on the default tenant's flows.
    /// Without it, callers without a token act as the admin (development only). Better given
    /// in PUMPHOUSE_ADMIN_TOKEN or --admin-token-file than on the command line.
    #[arg(long, env = "PUMPHOUSE_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
    /// A file holding the admin token (one trailing newline is dropped).
    #[arg(
        long,
        env = "PUMPHOUSE_ADMIN_TOKEN_FILE",
        conflicts_with = "admin_token"
    )]
    admin_token_file: Option<PathBuf>,
    /// The bearer token GET /metrics requires (Prometheus: `authorization.credentials_file`);
    /// the admin token is taken too. Without it /metrics takes the admin token only, and is
    /// open only on a server without --admin-token.
    #[arg(long, env = "PUMPHOUSE_METRICS_TOKEN", hide_env_values = true)]
    metrics_token: Option<String>,
    /// A file holding the metrics token (one trailing newline is dropped).
    #[arg(
        long,
        env = "PUMPHOUSE_METRICS_TOKEN_FILE",
        conflicts_with = "metrics_token"
    )]
    metrics_token_file: Option<PathBuf>,
    /// Base URL used in the webhook URLs handed out.
    #[arg(long, env = "PUMPHOUSE_PUBLIC_URL")]
    public_url: Option<String>,
    /// How long a caller waits for an answer (plus any `?wait=`); past it the caller gets 503
    /// and the change still completes.
    #[arg(long, env = "PUMPHOUSE_REQUEST_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    request_timeout: Duration,
    /// File holding the master key for flow secrets (base64 of 32 bytes; make one with
    /// `pumphouse secrets new-key`). The key itself may be given in PUMPHOUSE_MASTER_KEY
    /// instead; there is no flag for it, since the command line is visible to every user.
    #[arg(long, env = "PUMPHOUSE_MASTER_KEY_FILE")]
    master_key_file: Option<PathBuf>,
    /// `json` (one object a line) or `text`; `text` when stderr is a terminal by default.
    #[arg(long, env = "PUMPHOUSE_LOG_FORMAT")]
    log_format: Option<String>,
    /// Warnings about secrets given on the command line, made while parsing it and logged once
    /// logging is set up.
    #[arg(skip)]
    exposed: Vec<String>,
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    pumphouse_pump::duration::parse(text)
}

/// Runs the command line; the exit code says whether it worked.
pub fn main() -> ExitCode {
    let matches = Cli::command().get_matches();
    let mut cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    if let (Command::Serve(args), Some(serve)) =
        (&mut cli.command, matches.subcommand_matches("serve"))
    {
        args.exposed = secrets_on_command_line(serve);
    }
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
        Command::Tenant(cmd) => tenant(&client, cmd, cli.output == "json").await,
        Command::Audit { flow, limit } => {
            let mut path = format!("/api/audit?limit={limit}");
            if let Some(f) = flow {
                path.push_str(&format!("&flow={}", urlencoding(&f)));
            }
            let log = client.get(&path).await?;
            if cli.output == "json" {
                outln!("{}", serde_json::to_string_pretty(&log)?);
                return Ok(());
            }
            outln!("{:<24} {:<26} {:<20} WHO", "WHEN (UTC)", "ACTION", "FLOW");
            for e in log.as_array().cloned().unwrap_or_default() {
                let what = match e["detail"].as_str() {
                    Some(d) => format!("{} {d}", e["action"].as_str().unwrap_or("")),
                    None => e["action"].as_str().unwrap_or("").to_string(),
                };
                outln!(
                    "{:<24} {:<26} {:<20} {}",
                    crate::api::status_page::utc(e["at"].as_i64().unwrap_or(0)),
                    what,
                    e["flow_name"].as_str().unwrap_or("-"),
                    e["actor"].as_str().unwrap_or("")
                );
            }
            Ok(())
        }
        Command::Secrets(cmd) => secrets_command(cmd).await,
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
            outln!(
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
    for warning in &args.exposed {
        tracing::warn!("SECURITY: {warning}");
    }
    let store_url = match &args.store_file {
        Some(file) => read_setting_file(file, "--store-file")?,
        None => args.store,
    };
    let redis_url = match &args.redis_file {
        Some(file) => read_setting_file(file, "--redis-file")?,
        None => args.redis,
    };
    let admin_token = match &args.admin_token_file {
        Some(file) => Some(read_setting_file(file, "--admin-token-file")?),
        None => args.admin_token,
    };
    let metrics_token = match &args.metrics_token_file {
        Some(file) => Some(read_setting_file(file, "--metrics-token-file")?),
        // Empty counts as unset, as compose passes `${PUMPHOUSE_METRICS_TOKEN:-}` through.
        None => args.metrics_token.filter(|t| !t.is_empty()),
    };
    let config = ServeConfig {
        listen: args.listen,
        store_url,
        redis_url,
        pump_redis_url: args.pump_redis,
        backend: args.backend,
        docker_socket: args.docker_socket,
        docker_network: args.docker_network,
        pump_image: args.pump_image,
        pump_binary: args.pump_binary,
        cluster: args.cluster,
        kube_namespace: args.kube_namespace,
        kube_image_pull_secret: args.kube_image_pull_secret,
        kube_request_timeout: args.kube_request_timeout,
        heartbeat: args.heartbeat,
        start_timeout: args.start_timeout,
        restart_backoff: args.restart_backoff,
        crash_limit: args.crash_limit,
        crash_window: args.crash_window,
        resync_interval: args.resync_interval,
        lease_ttl: args.lease_ttl,
        replica: args.replica,
        admin_token,
        metrics_token,
        public_url: args.public_url,
        request_timeout: args.request_timeout,
        master_key: master_key(args.master_key_file.as_deref())?.map(std::sync::Arc::new),
    };
    let app = Application::build(config).await?;
    app.run_until_stopped(shutdown_signal()).await?;
    tracing::info!("stopped serving; pumps keep running");
    Ok(())
}

/// A setting given as a file (`--store-file` and the like): its text without one trailing
/// newline. Errors name the file and the flag, never what the file holds.
fn read_setting_file(path: &std::path::Path, flag: &str) -> anyhow::Result<String> {
    let mut text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read {flag} {}", path.display()))?;
    if text.ends_with('\n') {
        text.pop();
        if text.ends_with('\r') {
            text.pop();
        }
    }
    if text.trim().is_empty() {
        bail!("{flag} {} is empty", path.display());
    }
    Ok(text)
}

/// Whether a store or Redis URL carries a password: `scheme://USER:PASSWORD@HOST`, or
/// libpq's `?password=` parameter.
fn url_has_password(url: &str) -> bool {
    let Some((_, rest)) = url.split_once("://") else {
        return false;
    };
    let (before_query, query) = rest.split_once('?').unwrap_or((rest, ""));
    let in_userinfo = before_query.rfind('@').is_some_and(|at| {
        before_query[..at]
            .split_once(':')
            .is_some_and(|(_, password)| !password.is_empty())
    });
    let in_query = query.split('&').any(|kv| {
        kv.split_once('=')
            .is_some_and(|(k, v)| k == "password" && !v.is_empty())
    });
    in_userinfo || in_query
}

/// What `serve` was given on its command line that holds a secret, each as a warning saying
/// where to give it instead. Every user of the host reads a command line (`ps`,
/// `/proc/PID/cmdline`), unlike the environment or a file of mode 0600. The warnings name the
/// flag, never the value: they are logged.
fn secrets_on_command_line(serve: &clap::ArgMatches) -> Vec<String> {
    use clap::parser::ValueSource;
    let given = |id: &str| serve.value_source(id) == Some(ValueSource::CommandLine);
    let read_by_all = "every user of this host can read it (ps, /proc/PID/cmdline)";
    let mut found = Vec::new();
    for (id, flag, instead) in [
        ("store", "--store", "PUMPHOUSE_STORE or --store-file"),
        ("redis", "--redis", "PUMPHOUSE_REDIS or --redis-file"),
        ("pump_redis", "--pump-redis", "PUMPHOUSE_PUMP_REDIS"),
    ] {
        let url = serve.get_one::<String>(id);
        if given(id) && url.is_some_and(|u| url_has_password(u)) {
            found.push(format!(
                "the {flag} URL on the command line carries a password, and {read_by_all}; give it in {instead}"
            ));
        }
    }
    for (id, flag, instead) in [
        (
            "admin_token",
            "--admin-token",
            "PUMPHOUSE_ADMIN_TOKEN or --admin-token-file",
        ),
        (
            "metrics_token",
            "--metrics-token",
            "PUMPHOUSE_METRICS_TOKEN or --metrics-token-file",
        ),
    ] {
        if given(id) {
            found.push(format!(
                "{flag} is on the command line, and {read_by_all}; give it in {instead}"
            ));
        }
    }
    found
}

/// The server's master key: from the file, or from PUMPHOUSE_MASTER_KEY, never both.
fn master_key(file: Option<&std::path::Path>) -> anyhow::Result<Option<MasterKey>> {
    let from_env = std::env::var("PUMPHOUSE_MASTER_KEY")
        .ok()
        .filter(|v| !v.trim().is_empty())
        .map(zeroize::Zeroizing::new);
    match (file, from_env) {
        (Some(_), Some(_)) => {
            bail!("both --master-key-file and PUMPHOUSE_MASTER_KEY are set; keep one of them")
        }
        (Some(path), None) => Ok(Some(MasterKey::from_file(path)?)),
        (None, Some(text)) => Ok(Some(MasterKey::from_base64(
            &text,
            " in PUMPHOUSE_MASTER_KEY",
        )?)),
        (None, None) => Ok(None),
    }
}

async fn secrets_command(cmd: SecretsCommand) -> anyhow::Result<()> {
    match cmd {
        SecretsCommand::NewKey => {
            outln!("{}", &*MasterKey::generate_base64());
            Ok(())
        }
        SecretsCommand::ReEncrypt {
            store,
            store_file,
            from_key_file,
            to_key_file,
        } => {
            let store = match (store, store_file) {
                (_, Some(file)) => read_setting_file(&file, "--store-file")?,
                (Some(url), None) => url,
                (None, None) => {
                    bail!("name the store with --store, PUMPHOUSE_STORE or --store-file")
                }
            };
            let from = MasterKey::from_file(&from_key_file)?;
            let to = MasterKey::from_file(&to_key_file)?;
            let store = crate::store::Store::connect(&store).await?;
            let done = crate::secrets::reencrypt(&store, &from, &to).await?;
            outln!(
                "re-encrypted {} secret(s) from key {} to key {}; {} already under the new key",
                done.resealed,
                from.id(),
                to.id(),
                done.already
            );
            outln!("now restart every server with --master-key-file {} (a server still on the old key cannot start flows with secrets)", to_key_file.display());
            Ok(())
        }
    }
}

async fn secret_command(client: &Client, cmd: SecretCommand, json: bool) -> anyhow::Result<()> {
    match cmd {
        SecretCommand::Set {
            flow,
            name,
            keep_newline,
        } => {
            use std::io::{IsTerminal as _, Read as _};
            let mut stdin = std::io::stdin();
            if stdin.is_terminal() {
                // Typed at a terminal, the value would echo on the screen and stay in scrollback.
                bail!("pipe the value in rather than typing it: `pumphouse flow secret set {flow} {name} < FILE`, or `printf %s \"$VALUE\" | pumphouse flow secret set {flow} {name}`");
            }
            let mut value = zeroize::Zeroizing::new(Vec::new());
            stdin
                .read_to_end(&mut value)
                .context("cannot read the secret's value from stdin")?;
            if !keep_newline {
                let ending = if value.ends_with(b"\r\n") {
                    2
                } else {
                    usize::from(value.ends_with(b"\n"))
                };
                let keep = value.len() - ending;
                value.truncate(keep);
            }
            let v = client
                .call(
                    reqwest::Method::PUT,
                    &format!("/api/flows/{flow}/secrets/{name}"),
                    Some((value.to_vec(), "application/octet-stream")),
                )
                .await?;
            if json {
                outln!("{}", serde_json::to_string_pretty(&v)?);
                return Ok(());
            }
            outln!(
                "secret {name} of flow {flow} {}; {}",
                v["change"].as_str().unwrap_or("set"),
                v["note"].as_str().unwrap_or("")
            );
            Ok(())
        }
        SecretCommand::Ls { flow } => {
            let v = client.get(&format!("/api/flows/{flow}/secrets")).await?;
            if json {
                outln!("{}", serde_json::to_string_pretty(&v)?);
                return Ok(());
            }
            let list = v["secrets"].as_array().cloned().unwrap_or_default();
            if list.is_empty() {
                outln!("flow {flow} has no secrets; set one with `pumphouse flow secret set {flow} NAME < FILE`");
                return Ok(());
            }
            let server_key = v["master_key_id"].as_str();
            let now = crate::store::now_ms();
            outln!("{:<32} {:<14} KEY", "NAME", "UPDATED");
            for s in list {
                let key = s["key_id"].as_str().unwrap_or("");
                let stale = match server_key {
                    Some(k) if k != key => {
                        " (not this server's key: run `pumphouse secrets re-encrypt`)"
                    }
                    _ => "",
                };
                outln!(
                    "{:<32} {:<14} {key}{stale}",
                    s["name"].as_str().unwrap_or(""),
                    ago(now - s["updated_at"].as_i64().unwrap_or(now)),
                );
            }
            Ok(())
        }
        SecretCommand::Rm { flow, name } => {
            let v = client
                .call(
                    reqwest::Method::DELETE,
                    &format!("/api/flows/{flow}/secrets/{name}"),
                    None,
                )
                .await?;
            outln!(
                "secret {name} of flow {flow} deleted; {}",
                v["note"].as_str().unwrap_or("")
            );
            Ok(())
        }
    }
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

/// Percent-encodes a query value (names may hold anything a manifest allows).
fn urlencoding(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

async fn tenant(client: &Client, cmd: TenantCommand, json: bool) -> anyhow::Result<()> {
    let print_json = |v: &Value| -> anyhow::Result<bool> {
        if json {
            outln!("{}", serde_json::to_string_pretty(v)?);
        }
        Ok(json)
    };
    match cmd {
        TenantCommand::Create { id, name } => {
            let body = serde_json::json!({"id": id, "name": name});
            let v = client
                .call(
                    reqwest::Method::POST,
                    "/api/tenants",
                    Some((body.to_string().into_bytes(), "application/json")),
                )
                .await?;
            if !print_json(&v)? {
                outln!("tenant {id} created");
                outln!("its API token (shown only now; keep it secret):");
                outln!("  {}", v["api_token"].as_str().unwrap_or("?"));
                outln!("use it with: PUMPHOUSE_TOKEN=<token> pumphouse flow ls");
            }
        }
        TenantCommand::Ls => {
            let v = client.get("/api/tenants").await?;
            if !print_json(&v)? {
                outln!("{:<24} {:<24} CREATED (UTC)", "ID", "NAME");
                for t in v.as_array().cloned().unwrap_or_default() {
                    outln!(
                        "{:<24} {:<24} {}",
                        t["id"].as_str().unwrap_or(""),
                        t["name"].as_str().unwrap_or(""),
                        crate::api::status_page::utc(t["created_at"].as_i64().unwrap_or(0))
                    );
                }
            }
        }
        TenantCommand::Tokens { tenant } => {
            let v = client.get(&format!("/api/tenants/{tenant}/tokens")).await?;
            if !print_json(&v)? {
                outln!(
                    "{:<38} {:<20} {:<24} REVOKED (UTC)",
                    "ID",
                    "NAME",
                    "CREATED (UTC)"
                );
                for t in v.as_array().cloned().unwrap_or_default() {
                    outln!(
                        "{:<38} {:<20} {:<24} {}",
                        t["id"].as_str().unwrap_or(""),
                        t["name"].as_str().unwrap_or(""),
                        crate::api::status_page::utc(t["created_at"].as_i64().unwrap_or(0)),
                        t["revoked_at"]
                            .as_i64()
                            .map(crate::api::status_page::utc)
                            .unwrap_or_else(|| "-".into())
                    );
                }
            }
        }
        TenantCommand::AddToken { tenant, name } => {
            let body = serde_json::json!({ "name": name });
            let v = client
                .call(
                    reqwest::Method::POST,
                    &format!("/api/tenants/{tenant}/tokens"),
                    Some((body.to_string().into_bytes(), "application/json")),
                )
                .await?;
            if !print_json(&v)? {
                outln!(
                    "token {name} ({}) created for tenant {tenant}",
                    v["token"]["id"].as_str().unwrap_or("?")
                );
                outln!("the token (shown only now; keep it secret):");
                outln!("  {}", v["api_token"].as_str().unwrap_or("?"));
            }
        }
        TenantCommand::RevokeToken { tenant, token_id } => {
            let v = client
                .call(
                    reqwest::Method::DELETE,
                    &format!("/api/tenants/{tenant}/tokens/{token_id}"),
                    None,
                )
                .await?;
            if !print_json(&v)? {
                outln!("token {token_id} of tenant {tenant} revoked; it is refused from now on");
            }
        }
    }
    Ok(())
}

async fn flow(client: &Client, cmd: FlowCommand, json: bool) -> anyhow::Result<()> {
    match cmd {
        FlowCommand::Secret(cmd) => secret_command(client, cmd, json).await,
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
                    outln!("flow {name} updated");
                    if v["restart_required"].as_bool() == Some(true) {
                        outln!("its pump runs the old manifest until you run: pumphouse flow stop {name} && pumphouse flow start {name}");
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
                    outln!(
                        "flow {name} created (id {})",
                        v["flow"]["id"].as_str().unwrap_or("?")
                    );
                    outln!("webhook URL (shown only now; keep it secret):");
                    outln!("  {}", v["webhook_url"].as_str().unwrap_or("?"));
                    outln!("start it with: pumphouse flow start {name}");
                }
            }
            Ok(())
        }
        FlowCommand::Ls => {
            let flows = client.get("/api/flows").await?;
            if json {
                outln!("{}", serde_json::to_string_pretty(&flows)?);
                return Ok(());
            }
            let list = flows.as_array().cloned().unwrap_or_default();
            if list.is_empty() {
                outln!("no flows yet; create one with `pumphouse flow apply -f FLOW.yaml`");
                return Ok(());
            }
            let now = crate::store::now_ms();
            outln!(
                "{:<28} {:<9} {:<8} {:<14} ID",
                "NAME",
                "STATUS",
                "DESIRED",
                "LAST ACTIVITY"
            );
            for f in list {
                outln!(
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
                outln!("flow {name} is starting");
                return Ok(());
            }
            let started = Instant::now();
            loop {
                let s = client.get(&format!("/api/flows/{name}/status")).await?;
                match s["status"].as_str() {
                    Some("running") => {
                        outln!("flow {name} is running");
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
            outln!("flow {name} stopped");
            Ok(())
        }
        FlowCommand::Status { name } => {
            let s = client.get(&format!("/api/flows/{name}/status")).await?;
            if json {
                outln!("{}", serde_json::to_string_pretty(&s)?);
                return Ok(());
            }
            outln!(
                "flow:     {} ({})",
                s["name"].as_str().unwrap_or(""),
                s["id"].as_str().unwrap_or("")
            );
            outln!(
                "status:   {} (desired: {})",
                s["status"].as_str().unwrap_or(""),
                s["desired_state"].as_str().unwrap_or("")
            );
            if let Some(reason) = s["reason"].as_str() {
                outln!("reason:   {reason}");
            }
            outln!("backend:  {}", s["backend"].as_str().unwrap_or(""));
            if s["pump"].is_object() {
                let p = &s["pump"];
                outln!(
                    "pump:     {} {}",
                    p["pump_ref"].as_str().unwrap_or(""),
                    p["state"].as_str().unwrap_or("")
                );
            }
            if let Some(why) = s["pump_error"].as_str() {
                outln!("pump:     unknown: {why}");
            }
            if s["heartbeat"].is_object() {
                let h = &s["heartbeat"];
                outln!(
                    "heartbeat: in flight {}, processed {}",
                    h["in_flight"],
                    h["processed"]
                );
            }
            outln!("recent events:");
            for e in s["events"].as_array().into_iter().flatten() {
                outln!(
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
                    |line| outln!("{line}"),
                )
                .await?;
            Ok(())
        }
        FlowCommand::Logs { name, tail, .. } => {
            let v = client
                .get(&format!("/api/flows/{name}/logs?tail={tail}"))
                .await?;
            for line in v["lines"].as_array().into_iter().flatten() {
                outln!("{}", line.as_str().unwrap_or(""));
            }
            Ok(())
        }
        FlowCommand::Executions { name, limit } => {
            let v = client
                .get(&format!("/api/flows/{name}/executions?limit={limit}"))
                .await?;
            if json {
                outln!("{}", serde_json::to_string_pretty(&v)?);
                return Ok(());
            }
            outln!(
                "{:<36} {:<8} {:<9} {:>8} OUTPUT/ERROR",
                "ID",
                "TRIGGER",
                "STATUS",
                "MS"
            );
            for e in v.as_array().into_iter().flatten() {
                let detail = if e["status"] == "failed" {
                    e["error"].as_str().unwrap_or("").to_string()
                } else {
                    e["output"].to_string()
                };
                outln!(
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
                outln!("{}", serde_json::to_string_pretty(&v)?);
                return Ok(());
            }
            outln!("new webhook URL for {name} (shown only now; the old one no longer works):");
            outln!("  {}", v["webhook_url"].as_str().unwrap_or("?"));
            Ok(())
        }
        FlowCommand::Rm { name } => {
            client
                .call(reqwest::Method::DELETE, &format!("/api/flows/{name}"), None)
                .await?;
            outln!("flow {name} deleted");
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn serve_matches(args: &[&str]) -> Result<clap::ArgMatches, clap::Error> {
        let argv = ["pumphouse", "serve"].iter().chain(args);
        let all = Cli::command().try_get_matches_from(argv)?;
        Ok(all
            .subcommand_matches("serve")
            .expect("the serve command")
            .clone())
    }

    fn warnings(args: &[&str]) -> Vec<String> {
        secrets_on_command_line(&serve_matches(args).expect("valid arguments"))
    }

    #[test]
    fn a_store_password_on_the_command_line_is_warned_about_without_being_shown() {
        let w = warnings(&["--store", "postgres://ph:hunter2@db/ph"]);
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].contains("--store"), "{}", w[0]);
        assert!(w[0].contains("PUMPHOUSE_STORE or --store-file"), "{}", w[0]);
        assert!(w[0].contains("ps"), "says who can read it: {}", w[0]);
        assert!(!w[0].contains("hunter2"), "the warning shows the password");
    }

    #[test]
    fn redis_urls_and_tokens_on_the_command_line_are_warned_about_without_being_shown() {
        let w = warnings(&[
            "--redis",
            "redis://:s3cret@r:6379",
            "--pump-redis",
            "redis://pumps:s3cret@r:6379",
            "--admin-token",
            "t0ken-a",
            "--metrics-token",
            "t0ken-m",
        ]);
        let all = w.join("\n");
        for flag in [
            "--redis ",
            "--pump-redis ",
            "--admin-token ",
            "--metrics-token ",
        ] {
            assert!(all.contains(flag), "{flag} missing from {all}");
        }
        assert_eq!(w.len(), 4, "{all}");
        for secret in ["s3cret", "t0ken-a", "t0ken-m"] {
            assert!(!all.contains(secret), "a warning shows {secret}: {all}");
        }
    }

    #[test]
    fn urls_without_a_password_and_defaults_are_not_warned_about() {
        assert_eq!(warnings(&[]), Vec::<String>::new());
        let w = warnings(&[
            "--store",
            "sqlite:///var/lib/pumphouse/ph.db",
            "--redis",
            "redis://admin@127.0.0.1:6379",
        ]);
        assert_eq!(w, Vec::<String>::new());
    }

    #[test]
    fn a_password_is_found_in_the_userinfo_or_the_query() {
        assert!(url_has_password("postgres://ph:pw@db/ph"));
        assert!(url_has_password("redis://:pw@r:6379"));
        assert!(url_has_password("postgres://ph:p@ss@db/ph"));
        assert!(url_has_password("postgres://db/ph?user=ph&password=pw"));
        assert!(!url_has_password("postgres://ph@db/ph"));
        assert!(!url_has_password("postgres://ph:@db/ph"));
        assert!(!url_has_password("redis://r:6379"));
        assert!(!url_has_password("sqlite://ph.db?mode=rwc"));
    }

    #[test]
    fn a_setting_file_loses_one_trailing_newline_and_errors_name_the_file() {
        let dir = std::env::temp_dir().join(format!("pumphouse-cli-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("store-url");
        std::fs::write(&file, "postgres://ph:pw@db/ph\n").unwrap();
        assert_eq!(
            read_setting_file(&file, "--store-file").unwrap(),
            "postgres://ph:pw@db/ph"
        );
        std::fs::write(&file, "token\r\n").unwrap();
        assert_eq!(read_setting_file(&file, "--x-file").unwrap(), "token");

        let missing = dir.join("missing");
        let e = format!(
            "{:#}",
            read_setting_file(&missing, "--redis-file").unwrap_err()
        );
        assert!(
            e.contains("--redis-file") && e.contains(&missing.display().to_string()),
            "{e}"
        );
        std::fs::write(&file, "\n").unwrap();
        let e = format!(
            "{:#}",
            read_setting_file(&file, "--store-file").unwrap_err()
        );
        assert!(e.contains("is empty") && e.contains("store-url"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_setting_and_its_file_are_not_given_together() {
        assert!(serve_matches(&["--store-file", "/run/secrets/store"]).is_ok());
        assert!(serve_matches(&["--redis-file", "/run/secrets/redis"]).is_ok());
        for (flag, file) in [
            ("--store", "--store-file"),
            ("--redis", "--redis-file"),
            ("--admin-token", "--admin-token-file"),
            ("--metrics-token", "--metrics-token-file"),
        ] {
            let e = serve_matches(&[flag, "x", file, "/f"]).unwrap_err();
            assert_eq!(
                e.kind(),
                clap::error::ErrorKind::ArgumentConflict,
                "{flag} with {file}"
            );
        }
    }
}

//! Builds the orchestrator from its configuration and runs it: store, Redis bus, backend,
//! supervisor loops and the HTTP server, sharing one state.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::api::{self, AppState};
use crate::backend::docker::{DockerBackend, DockerConfig};
use crate::backend::process::ProcessBackend;
use crate::backend::{Backend, BackendError, BackendKind};
use crate::bus::{self, Bus, BusError};
use crate::dispatcher::Dispatcher;
use crate::leadership::Leadership;
use crate::metrics::Metrics;
use crate::secrets::MasterKey;
use crate::store::{Store, StoreError};
use crate::supervisor::{PumpSettings, Supervisor, SupervisorError};

/// Everything `pumphouse serve` can be told.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// Where the API listens; port 0 picks a free one.
    pub listen: SocketAddr,
    /// `sqlite://FILE` or `postgres://...`.
    pub store_url: String,
    pub redis_url: String,
    /// `REDIS_URL` handed to pumps, when they reach Redis by another address.
    pub pump_redis_url: Option<String>,
    pub backend: BackendKind,
    pub docker_socket: Option<String>,
    /// Docker network mode for pumps: `host`, `bridge` or a network's name.
    pub docker_network: String,
    pub pump_image: String,
    /// The pump program for the process backend; `pump` beside this binary by default.
    pub pump_binary: Option<PathBuf>,
    /// Names this orchestrator's pumps (a label), so deployments sharing an engine stay apart.
    pub cluster: String,
    /// Kubernetes backend: the pumps' namespace (the client's default when `None`) and the
    /// image pull secret pump pods get.
    pub kube_namespace: Option<String>,
    pub kube_image_pull_secret: Option<String>,
    /// Kubernetes backend: the read timeout of a request to the API server (kube's default,
    /// 295 s); followed logs have none.
    pub kube_request_timeout: Duration,
    pub heartbeat: Duration,
    pub start_timeout: Duration,
    /// First wait before restarting a crashed pump; doubles with each crash in the window.
    pub restart_backoff: Duration,
    /// Crashes within `crash_window` that make a crash loop (flow `error`).
    pub crash_limit: usize,
    pub crash_window: Duration,
    /// How often every flow is reconciled against the backend.
    pub resync_interval: Duration,
    /// How long the leader's lease lasts without renewal (PostgreSQL, several replicas).
    pub lease_ttl: Duration,
    /// This replica's name in the lease; the host name by default.
    pub replica: Option<String>,
    pub admin_token: Option<String>,
    /// The bearer token `/metrics` requires (the admin token is taken too). Without it
    /// `/metrics` takes the admin token only, and is open on a server without one.
    pub metrics_token: Option<String>,
    /// Base URL in the webhook URLs handed out; `http://<listen>` by default.
    pub public_url: Option<String>,
    /// How long a caller waits for an answer (plus any `?wait=` it asked for). Past it the
    /// caller gets 503 and the handler still finishes.
    pub request_timeout: Duration,
    /// Seals and opens flow secrets; without it secrets cannot be set, nor flows that have
    /// some started.
    pub master_key: Option<Arc<MasterKey>>,
}

impl ServeConfig {
    /// Defaults suited to one developer machine.
    pub fn local(store_url: &str, redis_url: &str) -> ServeConfig {
        // The supervision defaults live in one place.
        let pumps = PumpSettings::new("pumphouse/pump:dev", redis_url);
        ServeConfig {
            listen: "127.0.0.1:8080".parse().expect("a valid address"),
            store_url: store_url.into(),
            redis_url: redis_url.into(),
            pump_redis_url: None,
            backend: BackendKind::Auto,
            docker_socket: None,
            docker_network: "host".into(),
            pump_image: pumps.default_image,
            pump_binary: None,
            cluster: "default".into(),
            kube_namespace: None,
            kube_image_pull_secret: None,
            kube_request_timeout: Duration::from_secs(295),
            heartbeat: pumps.heartbeat,
            start_timeout: pumps.start_timeout,
            restart_backoff: pumps.restart_backoff,
            crash_limit: pumps.crash_limit,
            crash_window: pumps.crash_window,
            resync_interval: pumps.resync_interval,
            lease_ttl: Duration::from_secs(10),
            replica: None,
            admin_token: None,
            metrics_token: None,
            public_url: None,
            request_timeout: Duration::from_secs(30),
            master_key: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Bus(#[from] BusError),
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error(transparent)]
    Supervisor(#[from] SupervisorError),
    #[error(transparent)]
    PumpUsers(#[from] crate::pump_users::PumpUsersError),
    #[error("cannot listen on {addr}: {source}; choose another address with --listen")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// A built orchestrator, bound to its port, not yet serving.
pub struct Application {
    listener: tokio::net::TcpListener,
    port: u16,
    state: AppState,
    supervisor_task: tokio::task::JoinHandle<()>,
    leadership: Arc<Leadership>,
}

/// Picks the backend `kind` names; for `auto`, Docker when its socket answers, else process.
/// The log line says which one and why.
pub async fn select_backend(config: &ServeConfig) -> Result<Arc<dyn Backend>, BackendError> {
    let docker = || DockerConfig {
        socket: config.docker_socket.clone(),
        network: config.docker_network.clone(),
        cluster: config.cluster.clone(),
    };
    let process = || {
        ProcessBackend::new(
            config
                .pump_binary
                .clone()
                .unwrap_or_else(ProcessBackend::default_binary),
        )
    };
    match config.backend {
        BackendKind::Docker => {
            let b = DockerBackend::connect(docker()).await?;
            tracing::info!(backend = "docker", network = %config.docker_network, "using the docker backend, as configured");
            Ok(Arc::new(b))
        }
        BackendKind::Process => {
            let b = process()?;
            tracing::info!(
                backend = "process",
                "using the process backend, as configured"
            );
            Ok(Arc::new(b))
        }
        #[cfg(feature = "kubernetes")]
        BackendKind::Kubernetes => {
            use crate::backend::kubernetes::{KubernetesBackend, KubernetesConfig};
            let b = KubernetesBackend::connect(
                KubernetesConfig {
                    namespace: config.kube_namespace.clone(),
                    cluster: config.cluster.clone(),
                    image_pull_secret: config.kube_image_pull_secret.clone(),
                },
                config.kube_request_timeout,
            )
            .await?;
            tracing::info!(backend = "kubernetes", namespace = %b.namespace(), "using the kubernetes backend, as configured");
            Ok(Arc::new(b))
        }
        BackendKind::Auto => match DockerBackend::connect(docker()).await {
            Ok(b) => {
                tracing::info!(backend = "docker", network = %config.docker_network, "using the docker backend: no backend configured and the Docker engine answers");
                Ok(Arc::new(b))
            }
            Err(e) => {
                let b = process()?;
                tracing::info!(backend = "process", reason = %e, "using the process backend: no backend configured and Docker does not answer");
                Ok(Arc::new(b))
            }
        },
    }
}

impl Application {
    /// Connects to everything, restarts flows that should be running, and binds the listener.
    ///
    /// # Errors
    /// Whatever cannot be reached, with what to do about it.
    pub async fn build(config: ServeConfig) -> Result<Application, StartupError> {
        let store = Store::connect(&config.store_url).await?;
        // The admin's flows live here; it exists from the start so it can be given tokens.
        store
            .ensure_tenant(crate::api::DEFAULT_TENANT, "Default tenant")
            .await?;
        let bus = Bus::connect(&config.redis_url).await?;
        let backend = select_backend(&config).await?;
        let metrics = Arc::new(Metrics::new());
        let dispatcher = Dispatcher::new(store.clone(), bus.clone(), metrics.clone());
        let reloaded = dispatcher.load().await?;
        if reloaded > 0 {
            tracing::info!(reloaded, "re-sending triggers no pump has acknowledged yet");
        }
        let pump_redis = config
            .pump_redis_url
            .clone()
            .unwrap_or_else(|| config.redis_url.clone());
        let pump_users =
            crate::pump_users::PumpUsers::connect(&config.redis_url, &pump_redis).await?;
        let supervisor = Arc::new(Supervisor::new(
            store.clone(),
            backend,
            dispatcher.clone(),
            PumpSettings {
                heartbeat: config.heartbeat,
                start_timeout: config.start_timeout,
                restart_backoff: config.restart_backoff,
                crash_limit: config.crash_limit,
                crash_window: config.crash_window,
                resync_interval: config.resync_interval,
                master_key: config.master_key.clone(),
                ..PumpSettings::new(&config.pump_image, &pump_redis)
            },
            metrics.clone(),
            pump_users,
        ));
        let replica = config.replica.clone().unwrap_or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .map(|h| h.trim().to_string())
                .unwrap_or_else(|_| "pumphouse".into())
        });
        let leadership = Arc::new(Leadership::new(
            store.clone(),
            bus.clone(),
            supervisor.clone(),
            dispatcher.clone(),
            &format!("{}/{replica}", config.cluster),
            config.lease_ttl,
        ));
        // The first try is made before serving, so a lone replica leads (and has adopted its
        // pumps) by the time it answers.
        leadership.step().await;
        let supervisor_task = tokio::spawn(leadership.clone().run());
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|source| StartupError::Listen {
                addr: config.listen,
                source,
            })?;
        let local = listener
            .local_addr()
            .map_err(|source| StartupError::Listen {
                addr: config.listen,
                source,
            })?;
        if config.admin_token.is_none() {
            tracing::warn!(
                "no --admin-token: the management API is open to anyone who can reach {local}"
            );
        }
        match (&config.metrics_token, &config.admin_token) {
            (Some(_), _) => tracing::info!("/metrics takes the --metrics-token or the admin token"),
            (None, Some(_)) => tracing::info!("/metrics takes the admin token only; give Prometheus a token of its own with --metrics-token"),
            (None, None) => tracing::warn!("no --metrics-token nor --admin-token: /metrics, which names every flow and tenant, is open to anyone who can reach {local}"),
        }
        match &config.master_key {
            Some(key) => tracing::info!(key_id = key.id(), "flow secrets are sealed with this master key"),
            None => tracing::info!("no master key: flow secrets cannot be set; give one with --master-key-file or PUMPHOUSE_MASTER_KEY"),
        }
        let state = AppState::new(api::Shared {
            store,
            supervisor,
            dispatcher,
            bus,
            leadership: leadership.clone(),
            metrics,
            rate_limiter: Default::default(),
            trigger_settings: Default::default(),
            admin_token: config.admin_token.clone(),
            metrics_token: config.metrics_token.clone(),
            request_timeout: config.request_timeout,
            public_url: config
                .public_url
                .clone()
                .unwrap_or_else(|| format!("http://{local}")),
        });
        tracing::info!(listen = %local, store = %redact_store(&config.store_url), redis = %bus::redact(&config.redis_url), "pumphouse is ready");
        Ok(Application {
            listener,
            port: local.port(),
            state,
            supervisor_task,
            leadership,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Serves until `shutdown` resolves, then finishes requests in flight. Pumps keep running.
    pub async fn run_until_stopped(
        self,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let app = api::router(self.state);
        let served = axum::serve(self.listener, app)
            .with_graceful_shutdown(shutdown)
            .await;
        self.supervisor_task.abort();
        self.leadership.release().await;
        served
    }
}

fn redact_store(url: &str) -> String {
    bus::redact(url)
}

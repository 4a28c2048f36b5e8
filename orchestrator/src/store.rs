//! The store: tenants, flows, executions, flow events and sealed flow secrets, in SQLite or
//! PostgreSQL.
//!
//! One implementation serves both databases through sqlx's `Any` driver: the schema keeps to
//! types both share (TEXT, BIGINT Unix milliseconds, JSON as TEXT) and every statement is written
//! once with `$n` parameters, which both accept. Each database has its own migrations
//! (`migrations/sqlite`, `migrations/postgres`) because their DDL differs.
//!
//! # Guarantees
//! - A status change and the flow event that records it are written in one transaction.
//! - An execution that finished (`completed` or `failed`) never changes again, so a duplicate
//!   report from a pump cannot overwrite the first outcome.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Row as _};

use crate::secrets::Sealed;

/// Which database a store URL names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    #[error("unsupported store URL `{0}`; use sqlite://PATH or postgres://USER@HOST/DB")]
    UnsupportedUrl(String),
    #[error("cannot open the store: {0}; check --store and that the database is reachable")]
    Connect(#[source] sqlx::Error),
    #[error("cannot create the SQLite file {path}: {source}; check --store and that its directory exists and is writable")]
    CreateFile {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot migrate the store: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("a flow named `{0}` exists already; update it with PUT /api/flows/{{id}} or `pumphouse flow apply`")]
    NameTaken(String),
    #[error("a tenant `{0}` exists already; list tenants with `pumphouse tenant ls`")]
    TenantExists(String),
    #[error("store query failed: {0}")]
    Query(#[from] sqlx::Error),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// How long a call waits for a connection, reconnecting included, before it fails.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);

impl StoreError {
    /// Whether the store could not be reached, or was busy, so the same statement may well
    /// work later; as opposed to the store refusing this statement.
    pub fn is_unavailable(&self) -> bool {
        match self {
            StoreError::Connect(_) => true,
            StoreError::Query(e) => match e {
                sqlx::Error::Io(_)
                | sqlx::Error::Tls(_)
                | sqlx::Error::PoolTimedOut
                | sqlx::Error::PoolClosed
                | sqlx::Error::WorkerCrashed => true,
                sqlx::Error::Database(d) => d.code().is_some_and(|c| match c.len() {
                    // PostgreSQL's SQLSTATE: connection exceptions (08), insufficient
                    // resources such as a full disk (53), system errors (58), shutting down or
                    // starting up (57P, but a dropped database stays dropped), serialization
                    // failure, deadlock.
                    5 => {
                        (["08", "53", "58", "57P"].iter().any(|p| c.starts_with(p)) && c != "57P04")
                            || matches!(&*c, "40001" | "40P01")
                    }
                    // SQLite's extended result code; its low byte is the primary one: I/O
                    // error, busy, locked, disk full.
                    _ => c
                        .parse::<i64>()
                        .is_ok_and(|n| matches!(n & 0xff, 5 | 6 | 10 | 13)),
                }),
                _ => false,
            },
            _ => false,
        }
    }
}

/// Flow lifecycle states, as stored and shown.
pub mod status {
    pub const STOPPED: &str = "stopped";
    pub const STARTING: &str = "starting";
    pub const RUNNING: &str = "running";
    pub const IDLE: &str = "idle";
    pub const ERROR: &str = "error";
}

/// Execution states, as stored and shown.
pub mod exec_status {
    pub const QUEUED: &str = "queued";
    pub const RUNNING: &str = "running";
    pub const COMPLETED: &str = "completed";
    pub const FAILED: &str = "failed";

    /// Whether an execution with this status may still change.
    pub fn is_unfinished(status: &str) -> bool {
        status == QUEUED || status == RUNNING
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FlowRecord {
    pub id: String,
    pub tenant_id: String,
    pub name: String,
    /// The manifest YAML exactly as applied.
    pub manifest: String,
    /// `running` or `stopped`: what the user asked for.
    pub desired_state: String,
    pub status: String,
    pub status_reason: Option<String>,
    #[serde(skip)]
    pub webhook_token_hash: String,
    pub idle_timeout_ms: i64,
    pub keep_alive: bool,
    pub instance_id: Option<String>,
    pub pump_ref: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ExecutionRecord {
    pub id: String,
    pub flow_id: String,
    pub seq: i64,
    pub trigger_type: String,
    pub status: String,
    pub payload: Option<String>,
    pub output: Option<String>,
    pub error_message: Option<String>,
    pub attempts: i64,
    pub received_at: i64,
    pub deadline_at: i64,
    pub acked_at: Option<i64>,
    pub started_at: Option<i64>,
    pub completed_at: Option<i64>,
    /// The pump instance that acknowledged it.
    pub instance_id: Option<String>,
}

/// A new trigger, before the store gives it its sequence number.
#[derive(Debug, Clone)]
pub struct NewExecution {
    pub id: String,
    pub flow_id: String,
    pub trigger_type: String,
    pub payload: Option<String>,
    pub received_at: i64,
    pub deadline_at: i64,
}

#[cfg(test)]
impl FlowRecord {
    /// A flow for unit tests, with the given id and status and plain values elsewhere.
    pub(crate) fn for_test(id: &str, status: &str) -> FlowRecord {
        FlowRecord {
            id: id.into(),
            tenant_id: "t".into(),
            name: "n".into(),
            manifest: String::new(),
            desired_state: "running".into(),
            status: status.into(),
            status_reason: None,
            webhook_token_hash: "h".into(),
            idle_timeout_ms: 1_000,
            keep_alive: false,
            instance_id: None,
            pump_ref: None,
            created_at: 0,
            updated_at: 0,
        }
    }
}

/// What pumps reported about one execution within one read of their events, folded together
/// (see [`Store::apply_reports`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ExecutionReport {
    pub id: String,
    /// The flow whose events stream carried the report: only an execution of this flow is
    /// changed, whatever id a pump names.
    pub flow_id: String,
    /// The pump instance that reported, when the report names one.
    pub instance_id: Option<String>,
    /// First acknowledged (`ack`).
    pub acked_at: Option<i64>,
    /// Started (`started`).
    pub started_at: Option<i64>,
    /// Ended: the output (`completed`) or the error (`failed`), and when.
    pub finished: Option<(std::result::Result<String, String>, i64)>,
}

/// The `n`th (from 1) of a statement's parameters, bound in order. Generated statements with
/// thousands of parameters use SQLite's nameless `?`: sqlx looks each parameter's name up, and
/// SQLite finds a `$n` name by a linear search, which made binding quadratic (5 % of the
/// orchestrator's CPU under webhook load). PostgreSQL takes only `$n`.
fn param(dialect: Dialect, n: usize) -> String {
    match dialect {
        Dialect::Sqlite => "?".to_string(),
        Dialect::Postgres => format!("${n}"),
    }
}

/// How many executions ended, by flow id and status (`completed`, `failed`).
pub type EndedCounts = std::collections::BTreeMap<(String, String), u64>;

/// Who records triggers (see [`Store::record_executions`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorder {
    /// The leader, which sends what it records.
    Leader,
    /// A replica that does not lead: it only records, and the leader sends.
    Elsewhere,
}

/// What [`Store::record_executions`] wrote and read.
#[derive(Debug, Default)]
pub struct Recorded {
    /// Each row's sequence number, in the order given.
    pub seqs: Vec<i64>,
    /// Per flow of the group, the highest sequence number other replicas had recorded before
    /// this commit (0: none).
    pub elsewhere: HashMap<String, i64>,
}

/// What [`Store::apply_reports`] did with a group of reports.
#[derive(Debug, Default, PartialEq)]
pub struct AppliedReports {
    /// How many executions ended here, by flow and status.
    pub ended: EndedCounts,
    /// Executions that ended here, as (flow, execution id): their waiters may be told.
    pub ended_ids: std::collections::HashSet<(String, String)>,
    /// Reports refused because they name an execution the reporting pump was never given.
    pub refused: Vec<RefusedReport>,
}

/// A pump's report about an execution it may not change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefusedReport {
    pub flow_id: String,
    pub execution_id: String,
    pub reason: RefusedBecause,
}

/// Why a pump's report was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RefusedBecause {
    /// No execution of the reporting pump's flow has that id (another flow's, or none).
    NotThisFlows,
    /// The execution is held by another instance of the flow, which acknowledged it.
    OtherInstance,
}

impl RefusedBecause {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            RefusedBecause::NotThisFlows => "not_this_flows",
            RefusedBecause::OtherInstance => "other_instance",
        }
    }
}

/// `(CAST($1 AS T1), CAST($2 AS T2), ...), (...)`: `rows` rows of typed parameters for a
/// `VALUES` list. The casts give PostgreSQL the types it cannot infer inside `VALUES`; SQLite
/// takes them as affinities.
fn values_list(dialect: Dialect, rows: usize, types: &[&str]) -> String {
    let mut out = String::with_capacity(rows * types.len() * 24);
    for row in 0..rows {
        if row > 0 {
            out.push_str(", ");
        }
        out.push('(');
        for (i, ty) in types.iter().enumerate() {
            if i > 0 {
                out.push_str(", ");
            }
            out.push_str(&format!(
                "CAST({} AS {ty})",
                param(dialect, row * types.len() + i + 1)
            ));
        }
        out.push(')');
    }
    out
}

#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct FlowEvent {
    pub at: i64,
    pub from_status: Option<String>,
    pub to_status: String,
    pub reason: String,
    pub actor: String,
}

/// A change of a flow's status, recorded with its reason.
#[derive(Debug, Clone)]
pub struct Transition<'a> {
    pub status: &'a str,
    pub reason: &'a str,
    /// Who caused it: `api`, `supervisor`, `pump`.
    pub actor: &'a str,
    /// Also change the desired state.
    pub desired: Option<&'a str>,
    /// Also change the instance id and pump ref (`Some(None)` clears them).
    pub pump: Option<(Option<&'a str>, Option<&'a str>)>,
    /// Only apply when the flow still runs this instance (guards against stale pumps).
    pub only_instance: Option<&'a str>,
    /// Only apply when the flow has this status (a compare-and-set: one caller wins).
    pub only_status: Option<&'a str>,
    /// Only apply while the supervisor lease still carries this fence: a leader that lost its
    /// lease (and does not know yet) cannot change anything.
    pub fence: Option<i64>,
}

impl<'a> Transition<'a> {
    pub fn new(status: &'a str, reason: &'a str, actor: &'a str) -> Self {
        Transition {
            status,
            reason,
            actor,
            desired: None,
            pump: None,
            only_instance: None,
            only_status: None,
            fence: None,
        }
    }
}

/// The name of the lease the leading replica holds.
pub const SUPERVISOR_LEASE: &str = "supervisor";

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// The store. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    pub(crate) pool: AnyPool,
    dialect: Dialect,
    /// Shared by every clone: writes through any clone empty it.
    recent_flows: std::sync::Arc<crate::flow_cache::FlowCache>,
    /// SQLite's writers take turns here (see [`Store::begin_write`]).
    write_turn: std::sync::Arc<tokio::sync::Mutex<()>>,
}

/// A write transaction from [`Store::begin_write`]: use `&mut *tx` as the executor. Dropped
/// without [`WriteTx::commit`], it rolls back.
pub struct WriteTx {
    tx: sqlx::Transaction<'static, sqlx::Any>,
    /// Released after the commit. On a drop it goes before sqlx's deferred rollback has run;
    /// the next writer's `BEGIN IMMEDIATE` then waits on `busy_timeout` for that moment.
    _turn: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl WriteTx {
    pub async fn commit(self) -> Result<()> {
        self.tx.commit().await?;
        Ok(())
    }
}

impl std::ops::Deref for WriteTx {
    type Target = sqlx::AnyConnection;
    fn deref(&self) -> &sqlx::AnyConnection {
        &self.tx
    }
}

impl std::ops::DerefMut for WriteTx {
    fn deref_mut(&mut self) -> &mut sqlx::AnyConnection {
        &mut self.tx
    }
}

/// The file a `sqlite://` URL (without its scheme) names, when opening it may create it: not
/// an in-memory database, nor one opened with a `mode=` other than `rwc`. Percent-decoded, as
/// sqlx reads it.
fn sqlite_file(rest: &str) -> Option<std::path::PathBuf> {
    let (path, params) = rest.split_once('?').unwrap_or((rest, ""));
    let mode = params.split('&').find_map(|kv| kv.strip_prefix("mode="));
    if path.is_empty() || path == ":memory:" || mode.is_some_and(|m| m != "rwc") {
        return None;
    }
    let bytes = path.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(b)) => {
                decoded.push(b);
                i += 3;
            }
            (b, _) => {
                decoded.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(decoded).ok().map(Into::into)
}

/// Creates a missing SQLite file with mode 0600, whatever the umask, before SQLite would create
/// it with 0644 less the umask: it holds every flow's manifest, hashed tokens and sealed
/// secrets. SQLite gives the `-wal` and `-shm` files it makes the database file's mode, so they
/// are private too. An existing file keeps its mode, with a warning when others may read it.
fn create_private(path: &std::path::Path) -> Result<()> {
    use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
    let private = std::fs::Permissions::from_mode(0o600);
    let created = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        // The umask may have taken bits off 0600 too; set exactly that.
        .and_then(|file| file.set_permissions(private));
    match created {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            let shared = ["", "-wal", "-shm"].into_iter().find_map(|suffix| {
                let file = format!("{}{suffix}", path.display());
                let mode = std::fs::metadata(&file).ok()?.permissions().mode() & 0o777;
                (mode & 0o077 != 0).then_some((file, mode))
            });
            if let Some((file, mode)) = shared {
                tracing::warn!(
                    file,
                    mode = format!("{mode:o}"),
                    "SECURITY: other users of this host may read the store file; make it private with `chmod 600 {}*`",
                    path.display()
                );
            }
            Ok(())
        }
        Err(source) => Err(StoreError::CreateFile {
            path: path.display().to_string(),
            source,
        }),
    }
}

const FLOW_COLUMNS: &str = "id, tenant_id, name, manifest, desired_state, status, status_reason, webhook_token_hash, idle_timeout_ms, keep_alive, instance_id, pump_ref, created_at, updated_at";
const EXEC_COLUMNS: &str = "id, flow_id, seq, trigger_type, status, payload, output, error_message, attempts, received_at, deadline_at, acked_at, started_at, completed_at, instance_id";

impl Store {
    /// Opens the store named by `url` and brings its schema up to date.
    ///
    /// `sqlite://path/to/file.db` creates the file when missing; `postgres://...` needs the
    /// database to exist.
    ///
    /// # Errors
    /// An unsupported URL, an unreachable database, or a failed migration.
    pub async fn connect(url: &str) -> Result<Store> {
        sqlx::any::install_default_drivers();
        let (dialect, url) = if let Some(rest) = url.strip_prefix("sqlite://") {
            if let Some(file) = sqlite_file(rest) {
                create_private(&file)?;
            }
            let sep = if rest.contains('?') { '&' } else { '?' };
            let url = if rest.contains("mode=") {
                url.to_string()
            } else {
                format!("{url}{sep}mode=rwc")
            };
            (Dialect::Sqlite, url)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            (Dialect::Postgres, url.to_string())
        } else {
            return Err(StoreError::UnsupportedUrl(url.to_string()));
        };
        // A store that is away fails a call within seconds rather than sqlx's default 30: the
        // API answers 503 at once, and a lease renewal fails well before its lease expires.
        let mut options = AnyPoolOptions::new().acquire_timeout(ACQUIRE_TIMEOUT);
        if dialect == Dialect::Sqlite {
            options = options.max_connections(4).after_connect(|conn, _| {
                Box::pin(async move {
                    // WAL lets readers run beside the writer; NORMAL sync is still durable
                    // across a process crash, which is what an accepted trigger needs.
                    sqlx::query("PRAGMA journal_mode = WAL")
                        .execute(&mut *conn)
                        .await?;
                    sqlx::query("PRAGMA synchronous = NORMAL")
                        .execute(&mut *conn)
                        .await?;
                    sqlx::query("PRAGMA busy_timeout = 10000")
                        .execute(&mut *conn)
                        .await?;
                    // Checkpoints run beside the writers (see `checkpoint_wal`), not inside
                    // whichever commit happens to cross the WAL's size threshold.
                    sqlx::query("PRAGMA wal_autocheckpoint = 0")
                        .execute(&mut *conn)
                        .await?;
                    sqlx::query("PRAGMA foreign_keys = ON")
                        .execute(&mut *conn)
                        .await?;
                    Ok(())
                })
            });
        } else {
            options = options.max_connections(16).after_connect(|conn, _| {
                Box::pin(async move {
                    // A transaction whose task was aborted half-way (a leader stepping down)
                    // is rolled back by sqlx only when its connection is next used, and until
                    // then it holds its row locks: the lease's among them, which blocked every
                    // replica's renewal. PostgreSQL ends such a session after this long; no
                    // transaction here waits on anything but its own statements.
                    sqlx::query("SET idle_in_transaction_session_timeout = '5s'")
                        .execute(&mut *conn)
                        .await?;
                    Ok(())
                })
            });
        }
        let pool = options.connect(&url).await.map_err(StoreError::Connect)?;
        match dialect {
            Dialect::Sqlite => sqlx::migrate!("../migrations/sqlite").run(&pool).await?,
            Dialect::Postgres => sqlx::migrate!("../migrations/postgres").run(&pool).await?,
        }
        if dialect == Dialect::Sqlite {
            tokio::spawn(checkpoint_wal(pool.clone()));
        }
        Ok(Store {
            pool,
            dialect,
            recent_flows: Default::default(),
            write_turn: Default::default(),
        })
    }

    /// Begins a transaction that will write.
    ///
    /// On SQLite, writers take turns here first, then take the database's write lock at once
    /// (`BEGIN IMMEDIATE`):
    /// - a deferred transaction that reads first and then writes gets "database is locked"
    ///   without waiting when another connection wrote in between (its snapshot is stale);
    /// - two writers of this process never meet at SQLite's lock, whose busy handler sleeps in
    ///   steps of up to 100 ms: under load that sleep, not the write, was the p99 latency.
    pub async fn begin_write(&self) -> Result<WriteTx> {
        Ok(match self.dialect {
            Dialect::Sqlite => {
                let turn = self.write_turn.clone().lock_owned().await;
                WriteTx {
                    tx: self.pool.begin_with("BEGIN IMMEDIATE").await?,
                    _turn: Some(turn),
                }
            }
            Dialect::Postgres => WriteTx {
                tx: self.pool.begin().await?,
                _turn: None,
            },
        })
    }

    pub fn dialect(&self) -> Dialect {
        self.dialect
    }

    /// Whether the database answers.
    pub async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    pub async fn ensure_tenant(&self, id: &str, name: &str) -> Result<()> {
        sqlx::query(
            "INSERT INTO tenants (id, name, created_at) VALUES ($1, $2, $3) ON CONFLICT (id) DO NOTHING",
        )
        .bind(id)
        .bind(name)
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Stores a new flow and its first event.
    ///
    /// # Errors
    /// [`StoreError::NameTaken`] when the tenant has a flow of that name.
    pub async fn create_flow(&self, flow: &FlowRecord, actor: &str) -> Result<()> {
        let mut tx = self.begin_write().await?;
        let res = sqlx::query(&format!(
            "INSERT INTO flows ({FLOW_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)"
        ))
        .bind(&flow.id)
        .bind(&flow.tenant_id)
        .bind(&flow.name)
        .bind(&flow.manifest)
        .bind(&flow.desired_state)
        .bind(&flow.status)
        .bind(&flow.status_reason)
        .bind(&flow.webhook_token_hash)
        .bind(flow.idle_timeout_ms)
        .bind(flow.keep_alive as i64)
        .bind(&flow.instance_id)
        .bind(&flow.pump_ref)
        .bind(flow.created_at)
        .bind(flow.updated_at)
        .execute(&mut *tx)
        .await;
        if let Err(e) = res {
            return Err(if is_unique_violation(&e) {
                StoreError::NameTaken(flow.name.clone())
            } else {
                e.into()
            });
        }
        insert_event(&mut tx, &flow.id, None, &flow.status, "created", actor).await?;
        tx.commit().await?;
        self.recent_flows.changed();
        Ok(())
    }

    /// Replaces a flow's manifest (and the fields derived from it).
    pub async fn update_manifest(
        &self,
        id: &str,
        manifest: &str,
        idle_timeout_ms: i64,
        keep_alive: bool,
        actor: &str,
    ) -> Result<bool> {
        let mut tx = self.begin_write().await?;
        let res = sqlx::query(
            "UPDATE flows SET manifest = $2, idle_timeout_ms = $3, keep_alive = $4, updated_at = $5 WHERE id = $1",
        )
        .bind(id)
        .bind(manifest)
        .bind(idle_timeout_ms)
        .bind(keep_alive as i64)
        .bind(now_ms())
        .execute(&mut *tx)
        .await?;
        if res.rows_affected() == 0 {
            return Ok(false);
        }
        note_event(&mut tx, id, "manifest updated", actor).await?;
        tx.commit().await?;
        self.recent_flows.changed();
        Ok(true)
    }

    pub async fn get_flow(&self, id: &str) -> Result<Option<FlowRecord>> {
        let row = sqlx::query(&format!("SELECT {FLOW_COLUMNS} FROM flows WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| flow_from_row(&r)).transpose()
    }

    /// The flow as read within `max_age` by this replica, else read now: for the webhook path,
    /// where a row a moment old is good enough (see [`crate::flow_cache`]). Never older than
    /// this replica's own last write to a flow.
    pub async fn get_flow_recent(
        &self,
        id: &str,
        max_age: std::time::Duration,
    ) -> Result<Option<std::sync::Arc<FlowRecord>>> {
        if let Some(flow) = self.recent_flows.get(id, max_age) {
            return Ok(Some(flow));
        }
        let generation = self.recent_flows.generation();
        let Some(flow) = self.get_flow(id).await? else {
            return Ok(None);
        };
        let flow = std::sync::Arc::new(flow);
        self.recent_flows.put(generation, flow.clone(), max_age);
        Ok(Some(flow))
    }

    pub async fn get_flow_by_name(
        &self,
        tenant_id: &str,
        name: &str,
    ) -> Result<Option<FlowRecord>> {
        let row = sqlx::query(&format!(
            "SELECT {FLOW_COLUMNS} FROM flows WHERE tenant_id = $1 AND name = $2"
        ))
        .bind(tenant_id)
        .bind(name)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| flow_from_row(&r)).transpose()
    }

    pub async fn list_flows(&self, tenant_id: &str) -> Result<Vec<FlowRecord>> {
        let rows = sqlx::query(&format!(
            "SELECT {FLOW_COLUMNS} FROM flows WHERE tenant_id = $1 ORDER BY name"
        ))
        .bind(tenant_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(flow_from_row).collect()
    }

    /// Flows whose desired state is `running`, across tenants.
    pub async fn flows_wanted_running(&self) -> Result<Vec<FlowRecord>> {
        let rows = sqlx::query(&format!(
            "SELECT {FLOW_COLUMNS} FROM flows WHERE desired_state = 'running'"
        ))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(flow_from_row).collect()
    }

    /// Changes a flow's status and records why, atomically. Returns `false` (and changes
    /// nothing) when the flow is gone or no longer runs `only_instance`.
    pub async fn transition(&self, id: &str, t: Transition<'_>) -> Result<bool> {
        let mut tx = self.begin_write().await?;
        let now = now_ms();
        // The guarded no-op UPDATE comes first: it locks the row (PostgreSQL) or the database
        // (SQLite) and checks the guards under that lock, so of two racing callers only one
        // passes; the other's UPDATE re-checks after the first commits and matches nothing.
        let claimed = sqlx::query(
            "UPDATE flows SET updated_at = $2 WHERE id = $1 AND ($3 IS NULL OR instance_id = $3) AND ($4 IS NULL OR status = $4) AND ($5 IS NULL OR $5 = (SELECT fence FROM leases WHERE name = $6))",
        )
        .bind(id)
        .bind(now)
        .bind(t.only_instance)
        .bind(t.only_status)
        .bind(t.fence)
        .bind(SUPERVISOR_LEASE)
        .execute(&mut *tx)
        .await?;
        if claimed.rows_affected() == 0 {
            return Ok(false);
        }
        sqlx::query(
            "INSERT INTO flow_events (flow_id, at, from_status, to_status, reason, actor) SELECT id, $2, status, $3, $4, $5 FROM flows WHERE id = $1",
        )
        .bind(id)
        .bind(now)
        .bind(t.status)
        .bind(t.reason)
        .bind(t.actor)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "UPDATE flows SET status = $2, status_reason = $3, updated_at = $4, desired_state = COALESCE($5, desired_state) WHERE id = $1",
        )
        .bind(id)
        .bind(t.status)
        .bind(t.reason)
        .bind(now)
        .bind(t.desired)
        .execute(&mut *tx)
        .await?;
        if let Some((instance, pump_ref)) = t.pump {
            sqlx::query("UPDATE flows SET instance_id = $2, pump_ref = $3 WHERE id = $1")
                .bind(id)
                .bind(instance)
                .bind(pump_ref)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        self.recent_flows.changed();
        Ok(true)
    }

    /// Replaces a flow's webhook token hash, recording the rotation as a flow event. The old
    /// token stops working on this replica with this commit, and on others once their cached
    /// copy of the flow is a second old (see [`crate::flow_cache`]).
    pub async fn rotate_webhook_token(&self, id: &str, hash: &str, actor: &str) -> Result<bool> {
        let mut tx = self.begin_write().await?;
        let res =
            sqlx::query("UPDATE flows SET webhook_token_hash = $2, updated_at = $3 WHERE id = $1")
                .bind(id)
                .bind(hash)
                .bind(now_ms())
                .execute(&mut *tx)
                .await?;
        if res.rows_affected() == 0 {
            return Ok(false);
        }
        note_event(&mut tx, id, "webhook token rotated", actor).await?;
        tx.commit().await?;
        self.recent_flows.changed();
        Ok(true)
    }

    /// Records what names the pump in its backend, if the flow still runs `instance_id`.
    pub async fn set_pump_ref(&self, id: &str, instance_id: &str, pump_ref: &str) -> Result<()> {
        sqlx::query("UPDATE flows SET pump_ref = $3 WHERE id = $1 AND instance_id = $2")
            .bind(id)
            .bind(instance_id)
            .bind(pump_ref)
            .execute(&self.pool)
            .await?;
        self.recent_flows.changed();
        Ok(())
    }

    /// Deletes a flow with its executions and events.
    pub async fn delete_flow(&self, id: &str) -> Result<bool> {
        let mut tx = self.begin_write().await?;
        for table in ["executions", "flow_events"] {
            sqlx::query(&format!("DELETE FROM {table} WHERE flow_id = $1"))
                .bind(id)
                .execute(&mut *tx)
                .await?;
        }
        let res = sqlx::query("DELETE FROM flows WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        self.recent_flows.changed();
        Ok(res.rows_affected() > 0)
    }

    pub async fn flow_events(&self, flow_id: &str, limit: i64) -> Result<Vec<FlowEvent>> {
        let rows = sqlx::query(
            "SELECT at, from_status, to_status, reason, actor FROM flow_events WHERE flow_id = $1 ORDER BY id DESC LIMIT $2",
        )
        .bind(flow_id)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(FlowEvent {
                    at: r.try_get("at")?,
                    from_status: r.try_get("from_status")?,
                    to_status: r.try_get("to_status")?,
                    reason: r.try_get("reason")?,
                    actor: r.try_get("actor")?,
                })
            })
            .collect()
    }

    /// Records a trigger durably, queued, with its first delivery attempt counted. Returns its
    /// sequence number.
    pub async fn insert_execution(&self, e: &NewExecution) -> Result<i64> {
        let seqs = self.insert_executions(std::slice::from_ref(e)).await?;
        Ok(seqs[0])
    }

    /// Records triggers durably in one transaction (all or none), in the order given, so their
    /// sequence numbers grow in that order. Returns each one's sequence number, in that order.
    ///
    /// One commit for many triggers is what lets concurrent webhooks share the cost of a
    /// durable write (group commit); one statement per few hundred rows keeps SQLite's
    /// per-statement hand-off to its connection thread out of the per-trigger cost.
    pub async fn insert_executions<E: std::borrow::Borrow<NewExecution>>(
        &self,
        rows: &[E],
    ) -> Result<Vec<i64>> {
        Ok(self.record_executions(rows, Recorder::Leader).await?.seqs)
    }

    /// [`Store::insert_executions`], saying who records. Each flow's row is locked first, so
    /// two replicas recording triggers for one flow commit one after the other and sequence
    /// order is commit order. A replica that does not lead leaves its highest sequence number
    /// on the flow (`recorded_elsewhere_seq`); the leader gets those marks back, read under the
    /// same lock, to load what it has not seen before it sends its own.
    pub async fn record_executions<E: std::borrow::Borrow<NewExecution>>(
        &self,
        rows: &[E],
        recorder: Recorder,
    ) -> Result<Recorded> {
        // 6 parameters a row: far below both databases' limits on parameters per statement.
        const ROWS_PER_STATEMENT: usize = 500;
        let mut seqs: Vec<i64> = Vec::with_capacity(rows.len());
        let mut tx = self.begin_write().await?;
        let flows: std::collections::BTreeSet<&str> =
            rows.iter().map(|e| e.borrow().flow_id.as_str()).collect();
        let mut elsewhere: HashMap<String, i64> = HashMap::with_capacity(flows.len());
        for chunk in flows
            .iter()
            .copied()
            .collect::<Vec<_>>()
            .chunks(ROWS_PER_STATEMENT)
        {
            let list: Vec<String> = (1..=chunk.len()).map(|n| param(self.dialect, n)).collect();
            // SQLite's write lock is the database's; PostgreSQL locks the rows, in id order so
            // two groups never wait on each other.
            let lock = if self.dialect == Dialect::Postgres {
                " ORDER BY id FOR NO KEY UPDATE"
            } else {
                ""
            };
            let sql = format!(
                "SELECT id, recorded_elsewhere_seq FROM flows WHERE id IN ({}){lock}",
                list.join(", ")
            );
            let mut query = sqlx::query(&sql);
            for f in chunk {
                query = query.bind(*f);
            }
            for row in query.fetch_all(&mut *tx).await? {
                elsewhere.insert(row.try_get("id")?, row.try_get("recorded_elsewhere_seq")?);
            }
        }
        for chunk in rows.chunks(ROWS_PER_STATEMENT) {
            let chunk: Vec<&NewExecution> = chunk.iter().map(|e| e.borrow()).collect();
            let p = |n: usize| param(self.dialect, n);
            let values: Vec<String> = (0..chunk.len())
                .map(|i| {
                    let n = i * 6;
                    format!(
                        "({}, {}, {}, 'queued', {}, 1, {}, {})",
                        p(n + 1),
                        p(n + 2),
                        p(n + 3),
                        p(n + 4),
                        p(n + 5),
                        p(n + 6)
                    )
                })
                .collect();
            let sql = format!(
                "INSERT INTO executions (id, flow_id, trigger_type, status, payload, attempts, received_at, deadline_at) VALUES {}{}",
                values.join(", "),
                if self.dialect == Dialect::Sqlite { "" } else { " RETURNING id, seq" }
            );
            let mut query = sqlx::query(&sql);
            for e in &chunk {
                query = query
                    .bind(&e.id)
                    .bind(&e.flow_id)
                    .bind(&e.trigger_type)
                    .bind(&e.payload)
                    .bind(e.received_at)
                    .bind(e.deadline_at);
            }
            if self.dialect == Dialect::Sqlite {
                // sqlx hands SQLite's rows over one by one from its connection thread; two
                // one-row reads cost less than a row per trigger. Under the write lock a
                // single INSERT gives its rows consecutive sequence numbers in VALUES order
                // (AUTOINCREMENT: one above the largest so far, row by row); the first row's
                // number is read back to check that.
                query.execute(&mut *tx).await?;
                let last: i64 = sqlx::query("SELECT last_insert_rowid() AS seq")
                    .fetch_one(&mut *tx)
                    .await?
                    .try_get("seq")?;
                let first = last - chunk.len() as i64 + 1;
                let got: i64 = sqlx::query("SELECT seq FROM executions WHERE id = ?")
                    .bind(&chunk[0].id)
                    .fetch_one(&mut *tx)
                    .await?
                    .try_get("seq")?;
                if got != first {
                    return Err(StoreError::Query(sqlx::Error::Protocol(format!(
                        "SQLite numbered a group of {} triggers from {got}, not {first}",
                        chunk.len()
                    ))));
                }
                seqs.extend(first..=last);
                continue;
            }
            // RETURNING promises no row order: match by id.
            let mut returned: HashMap<String, i64> = HashMap::with_capacity(chunk.len());
            for r in query.fetch_all(&mut *tx).await? {
                returned.insert(r.try_get("id")?, r.try_get("seq")?);
            }
            for e in &chunk {
                let seq = returned.get(&e.id).copied().ok_or_else(|| {
                    StoreError::Query(sqlx::Error::Protocol(format!(
                        "the insert of execution {} returned no sequence number",
                        e.id
                    )))
                })?;
                seqs.push(seq);
            }
        }
        if recorder == Recorder::Elsewhere {
            let mut highest: HashMap<&str, i64> = HashMap::new();
            for (e, seq) in rows.iter().zip(&seqs) {
                let top = highest.entry(e.borrow().flow_id.as_str()).or_default();
                *top = (*top).max(*seq);
            }
            for (flow_id, seq) in highest {
                sqlx::query("UPDATE flows SET recorded_elsewhere_seq = $2 WHERE id = $1 AND recorded_elsewhere_seq < $2")
                    .bind(flow_id)
                    .bind(seq)
                    .execute(&mut *tx)
                    .await?;
            }
        }
        tx.commit().await?;
        Ok(Recorded { seqs, elsewhere })
    }

    pub async fn get_execution(&self, id: &str) -> Result<Option<ExecutionRecord>> {
        let row = sqlx::query(&format!(
            "SELECT {EXEC_COLUMNS} FROM executions WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| exec_from_row(&r)).transpose()
    }

    /// The flow's most recent executions, newest first.
    pub async fn list_executions(&self, flow_id: &str, limit: i64) -> Result<Vec<ExecutionRecord>> {
        let rows = sqlx::query(&format!(
            "SELECT {EXEC_COLUMNS} FROM executions WHERE flow_id = $1 ORDER BY seq DESC LIMIT $2"
        ))
        .bind(flow_id)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(exec_from_row).collect()
    }

    /// Executions no pump has acknowledged yet, oldest first: the redelivery queue.
    pub async fn unacked_executions(&self) -> Result<Vec<ExecutionRecord>> {
        let rows = sqlx::query(&format!(
            "SELECT {EXEC_COLUMNS} FROM executions WHERE status = 'queued' AND acked_at IS NULL ORDER BY seq"
        ))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(exec_from_row).collect()
    }

    /// Counts one more send of a trigger that still waits for a pump. Returns `false` when it
    /// does not wait any more (acknowledged, finished or failed elsewhere): stop sending it.
    pub async fn count_attempt(&self, id: &str) -> Result<bool> {
        let res = sqlx::query(
            "UPDATE executions SET attempts = attempts + 1 WHERE id = $1 AND status = 'queued' AND acked_at IS NULL",
        )
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(res.rows_affected() > 0)
    }

    /// Hands back executions acknowledged by a pump instance that no flow runs any more, oldest
    /// first. Catches what [`Store::requeue_instance`] could not: an `ack` applied after the
    /// exit of the pump that sent it (events and exits travel separately, and can cross).
    pub async fn requeue_departed(&self) -> Result<Vec<ExecutionRecord>> {
        let mut tx = self.begin_write().await?;
        let rows = sqlx::query(
            "UPDATE executions SET status = 'queued', acked_at = NULL, started_at = NULL, instance_id = NULL WHERE status IN ('queued', 'running') AND instance_id IS NOT NULL AND instance_id NOT IN (SELECT instance_id FROM flows WHERE status IN ('running', 'starting') AND instance_id IS NOT NULL) RETURNING id",
        )
        .fetch_all(&mut *tx)
        .await?;
        let mut back = Vec::with_capacity(rows.len());
        for r in &rows {
            let id: String = r.try_get("id")?;
            let row = sqlx::query(&format!(
                "SELECT {EXEC_COLUMNS} FROM executions WHERE id = $1"
            ))
            .bind(&id)
            .fetch_one(&mut *tx)
            .await?;
            back.push(exec_from_row(&row)?);
        }
        tx.commit().await?;
        back.sort_by_key(|e| e.seq);
        Ok(back)
    }

    /// Marks every unfinished execution of a flow failed with `reason`; returns their ids.
    pub async fn fail_unfinished(&self, flow_id: &str, reason: &str) -> Result<Vec<String>> {
        let mut tx = self.begin_write().await?;
        let now = now_ms();
        let rows = sqlx::query(
            "UPDATE executions SET status = 'failed', error_message = $2, completed_at = $3 WHERE flow_id = $1 AND status IN ('queued', 'running') RETURNING id",
        )
        .bind(flow_id)
        .bind(reason)
        .bind(now)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        rows.iter().map(|r| Ok(r.try_get("id")?)).collect()
    }

    /// One flow's executions no pump has acknowledged yet, oldest first.
    pub async fn unacked_for_flow(&self, flow_id: &str) -> Result<Vec<ExecutionRecord>> {
        let rows = sqlx::query(&format!(
            "SELECT {EXEC_COLUMNS} FROM executions WHERE flow_id = $1 AND status = 'queued' AND acked_at IS NULL ORDER BY seq"
        ))
        .bind(flow_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(exec_from_row).collect()
    }

    /// The pump instance `instance_id` has the trigger.
    pub async fn mark_acked(&self, id: &str, instance_id: &str, at: i64) -> Result<()> {
        sqlx::query(
            "UPDATE executions SET acked_at = COALESCE(acked_at, $2), instance_id = $3 WHERE id = $1 AND status IN ('queued', 'running')",
        )
        .bind(id)
        .bind(at)
        .bind(instance_id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn mark_running(&self, id: &str, instance_id: &str, at: i64) -> Result<bool> {
        let res = sqlx::query(
            "UPDATE executions SET status = 'running', started_at = $2, acked_at = COALESCE(acked_at, $2), instance_id = $3 WHERE id = $1 AND status = 'queued'",
        )
        .bind(id)
        .bind(at)
        .bind(instance_id)
        .execute(&self.pool)
        .await?;
        Ok(res.rows_affected() > 0)
    }

    /// Hands back what a pump instance held and never finished: those executions become
    /// `queued` and unacknowledged again, oldest first, for the next pump.
    pub async fn requeue_instance(
        &self,
        flow_id: &str,
        instance_id: &str,
    ) -> Result<Vec<ExecutionRecord>> {
        let mut tx = self.begin_write().await?;
        sqlx::query(
            "UPDATE executions SET status = 'queued', acked_at = NULL, started_at = NULL, instance_id = NULL WHERE flow_id = $1 AND instance_id = $2 AND status IN ('queued', 'running')",
        )
        .bind(flow_id)
        .bind(instance_id)
        .execute(&mut *tx)
        .await?;
        let rows = sqlx::query(&format!(
            "SELECT {EXEC_COLUMNS} FROM executions WHERE flow_id = $1 AND status = 'queued' AND acked_at IS NULL ORDER BY seq"
        ))
        .bind(flow_id)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        rows.iter().map(exec_from_row).collect()
    }

    /// Applies what pumps reported about many executions in one transaction, with one statement
    /// per kind of report rather than one per report. Each report is applied as its single
    /// events would be: an outcome only to an unfinished execution, a start only to a queued
    /// one, an acknowledgement to either. A pump is untrusted, so a report changes only an
    /// execution of the flow whose stream carried it, and only one that the reporting instance
    /// holds (it acknowledged it) or that was sent to it: the instance triggers go to (the
    /// flow's current one, or the draining one of a stopped flow) may take an execution nobody
    /// holds, or one it acknowledges in the same report; anything else is refused and listed. Returns what ended here, by flow and status; those that had ended
    /// before are left as they were. Fails only when the store is unavailable, perhaps after
    /// applying some; applying them all again is safe.
    pub async fn apply_reports(&self, reports: &[ExecutionReport]) -> Result<AppliedReports> {
        match self.apply_reports_together(reports).await {
            // Nothing is lost: the caller offers the same reports again later.
            Err(e) if e.is_unavailable() => Err(e),
            Err(e) => {
                // One report the store refuses sinks the transaction; then each is applied
                // alone, so only what is refused again is dropped (and logged). Applying a
                // report twice changes nothing, so an outage half-way is retried whole.
                tracing::debug!(error = %e, count = reports.len(), "applying pump reports together failed; applying them one by one");
                let mut all = AppliedReports::default();
                for r in reports {
                    match self.apply_reports_together(std::slice::from_ref(r)).await {
                        Ok(one) => {
                            for (key, n) in one.ended {
                                *all.ended.entry(key).or_default() += n;
                            }
                            all.ended_ids.extend(one.ended_ids);
                            all.refused.extend(one.refused);
                        }
                        Err(e) if e.is_unavailable() => return Err(e),
                        Err(e) => {
                            tracing::warn!(execution_id = %r.id, error = %e, "the store refused a pump's report on an execution; it is dropped")
                        }
                    }
                }
                Ok(all)
            }
            ok => ok,
        }
    }

    async fn apply_reports_together(&self, reports: &[ExecutionReport]) -> Result<AppliedReports> {
        const ROWS_PER_STATEMENT: usize = 300;
        let finished: Vec<&ExecutionReport> =
            reports.iter().filter(|r| r.finished.is_some()).collect();
        let started: Vec<&ExecutionReport> = reports
            .iter()
            .filter(|r| r.finished.is_none() && r.started_at.is_some())
            .collect();
        // An ack goes to an execution already running too (its instance changes), which the
        // start's statement leaves alone: a report with both gets both statements.
        let acked: Vec<&ExecutionReport> = reports
            .iter()
            .filter(|r| r.finished.is_none() && r.acked_at.is_some())
            .collect();
        let mut out = AppliedReports::default();
        // Reports that changed a row, by (flow, execution): the rest are looked at below.
        let mut matched: std::collections::HashSet<(String, String)> =
            std::collections::HashSet::new();
        let mut tx = self.begin_write().await?;
        // Who may report on an execution: the instance holding it (the one that acknowledged
        // it), or the instance triggers are sent to, when nobody holds it or when its report
        // carries its own acknowledgement (a trigger sent again after its holder went moves to
        // the instance that took it). Triggers are sent to the flow's current instance; a flow
        // with none (stopped while its pump drains) was last sending to the draining pump. So
        // an earlier instance left running beside a current one (an orphan) can claim nothing
        // it does not hold.
        const CURRENT: &str =
            "(SELECT flows.instance_id FROM flows WHERE flows.id = executions.flow_id)";
        let sent_to = |col: &str| format!("({CURRENT} IS NULL OR {col} = {CURRENT})");
        let held_by_reporter = format!(
            "(v.column8 IS NULL OR executions.instance_id = v.column8 OR ((executions.instance_id IS NULL OR v.column7 IS NOT NULL) AND {}))",
            sent_to("v.column8")
        );
        let start_by_reporter = format!(
            "(executions.instance_id = v.column4 OR {})",
            sent_to("v.column4")
        );
        let ack_by_reporter = format!(
            "(executions.instance_id = v.column3 OR {})",
            sent_to("v.column3")
        );
        for chunk in finished.chunks(ROWS_PER_STATEMENT) {
            let sql = format!(
                "UPDATE executions SET status = v.column2, output = v.column3, error_message = v.column4, completed_at = v.column5, started_at = COALESCE(executions.started_at, v.column6, v.column5), acked_at = COALESCE(executions.acked_at, v.column7), instance_id = COALESCE(v.column8, executions.instance_id) FROM (VALUES {}) AS v WHERE executions.id = v.column1 AND executions.flow_id = v.column9 AND executions.status IN ('queued', 'running') AND {held_by_reporter} RETURNING id, flow_id, status",
                values_list(self.dialect, chunk.len(), &["TEXT", "TEXT", "TEXT", "TEXT", "BIGINT", "BIGINT", "BIGINT", "TEXT", "TEXT"])
            );
            let mut query = sqlx::query(&sql);
            for r in chunk {
                let (outcome, at) = r.finished.as_ref().expect("filtered on finished");
                let (status, output, error) = match outcome {
                    Ok(output) => (exec_status::COMPLETED, Some(output.as_str()), None),
                    Err(error) => (exec_status::FAILED, None, Some(error.as_str())),
                };
                query = query
                    .bind(&r.id)
                    .bind(status)
                    .bind(output)
                    .bind(error)
                    .bind(*at)
                    .bind(r.started_at)
                    .bind(r.acked_at.or(r.started_at))
                    .bind(&r.instance_id)
                    .bind(&r.flow_id);
            }
            for row in query.fetch_all(&mut *tx).await? {
                let id: String = row.try_get("id")?;
                let flow_id: String = row.try_get("flow_id")?;
                *out.ended
                    .entry((flow_id.clone(), row.try_get("status")?))
                    .or_default() += 1;
                out.ended_ids.insert((flow_id.clone(), id.clone()));
                matched.insert((flow_id, id));
            }
        }
        for chunk in started.chunks(ROWS_PER_STATEMENT) {
            let sql = format!(
                "UPDATE executions SET status = 'running', started_at = v.column2, acked_at = COALESCE(executions.acked_at, v.column3), instance_id = v.column4 FROM (VALUES {}) AS v WHERE executions.id = v.column1 AND executions.flow_id = v.column5 AND executions.status = 'queued' AND {start_by_reporter} RETURNING id, flow_id",
                values_list(self.dialect, chunk.len(), &["TEXT", "BIGINT", "BIGINT", "TEXT", "TEXT"])
            );
            let mut query = sqlx::query(&sql);
            for r in chunk {
                query = query
                    .bind(&r.id)
                    .bind(r.started_at)
                    .bind(r.acked_at.or(r.started_at))
                    .bind(&r.instance_id)
                    .bind(&r.flow_id);
            }
            for row in query.fetch_all(&mut *tx).await? {
                matched.insert((row.try_get("flow_id")?, row.try_get("id")?));
            }
        }
        for chunk in acked.chunks(ROWS_PER_STATEMENT) {
            let sql = format!(
                "UPDATE executions SET acked_at = COALESCE(executions.acked_at, v.column2), instance_id = v.column3 FROM (VALUES {}) AS v WHERE executions.id = v.column1 AND executions.flow_id = v.column4 AND executions.status IN ('queued', 'running') AND {ack_by_reporter} RETURNING id, flow_id",
                values_list(self.dialect, chunk.len(), &["TEXT", "BIGINT", "TEXT", "TEXT"])
            );
            let mut query = sqlx::query(&sql);
            for r in chunk {
                query = query
                    .bind(&r.id)
                    .bind(r.acked_at)
                    .bind(&r.instance_id)
                    .bind(&r.flow_id);
            }
            for row in query.fetch_all(&mut *tx).await? {
                matched.insert((row.try_get("flow_id")?, row.try_get("id")?));
            }
        }
        // What changed nothing is either a replay (the execution ended already, or the event
        // was read twice) or a report the pump had no right to make. Rare, so looked up only
        // then.
        let unmatched: Vec<&ExecutionReport> = reports
            .iter()
            .filter(|r| !matched.contains(&(r.flow_id.clone(), r.id.clone())))
            .collect();
        for chunk in unmatched.chunks(ROWS_PER_STATEMENT) {
            let list: Vec<String> = (1..=chunk.len()).map(|n| param(self.dialect, n)).collect();
            let sql = format!(
                "SELECT id, flow_id, status, instance_id FROM executions WHERE id IN ({})",
                list.join(", ")
            );
            let mut query = sqlx::query(&sql);
            for r in chunk {
                query = query.bind(&r.id);
            }
            let mut found: HashMap<String, (String, String, Option<String>)> = HashMap::new();
            for row in query.fetch_all(&mut *tx).await? {
                found.insert(
                    row.try_get("id")?,
                    (
                        row.try_get("flow_id")?,
                        row.try_get("status")?,
                        row.try_get("instance_id")?,
                    ),
                );
            }
            for r in chunk {
                let reason = match found.get(&r.id) {
                    None => RefusedBecause::NotThisFlows,
                    Some((flow_id, ..)) if *flow_id != r.flow_id => RefusedBecause::NotThisFlows,
                    // An unfinished execution another instance holds, or nobody holds and it
                    // was not sent to the reporter (see held_by_reporter); the rest here is a
                    // replay (a start for one running already, say).
                    Some((_, status, holder))
                        if exec_status::is_unfinished(status)
                            && r.instance_id.is_some()
                            && *holder != r.instance_id =>
                    {
                        RefusedBecause::OtherInstance
                    }
                    Some(_) => continue,
                };
                out.refused.push(RefusedReport {
                    flow_id: r.flow_id.clone(),
                    execution_id: r.id.clone(),
                    reason,
                });
            }
        }
        tx.commit().await?;
        Ok(out)
    }

    /// Finishes an execution unless it is finished already. Returns its flow's id when it
    /// changed, `None` when it had finished before (or does not exist).
    pub async fn finish_execution(
        &self,
        id: &str,
        outcome: std::result::Result<&str, &str>,
        at: i64,
    ) -> Result<Option<String>> {
        let (status, output, error) = match outcome {
            Ok(output) => (exec_status::COMPLETED, Some(output), None),
            Err(error) => (exec_status::FAILED, None, Some(error)),
        };
        let row = sqlx::query(
            "UPDATE executions SET status = $2, output = $3, error_message = $4, completed_at = $5, started_at = COALESCE(started_at, $5) WHERE id = $1 AND status IN ('queued', 'running') RETURNING flow_id",
        )
        .bind(id)
        .bind(status)
        .bind(output)
        .bind(error)
        .bind(at)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| r.try_get("flow_id"))
            .transpose()
            .map_err(Into::into)
    }

    /// Each flow's latest trigger time, for flows that had one.
    pub async fn last_triggers(&self, tenant_id: &str) -> Result<HashMap<String, i64>> {
        let rows = sqlx::query(
            "SELECT e.flow_id AS flow_id, MAX(e.received_at) AS at FROM executions e JOIN flows f ON f.id = e.flow_id WHERE f.tenant_id = $1 GROUP BY e.flow_id",
        )
        .bind(tenant_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("flow_id")?, r.try_get("at")?)))
            .collect()
    }

    /// How many flows have each status.
    pub async fn count_flows_by_status(&self) -> Result<Vec<(String, i64)>> {
        let rows = sqlx::query("SELECT status, COUNT(*) AS n FROM flows GROUP BY status")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("status")?, r.try_get("n")?)))
            .collect()
    }

    /// Every flow's id, name and tenant.
    pub async fn flow_names(&self) -> Result<Vec<(String, String, String)>> {
        let rows = sqlx::query("SELECT id, name, tenant_id FROM flows")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get("id")?,
                    r.try_get("name")?,
                    r.try_get("tenant_id")?,
                ))
            })
            .collect()
    }

    /// Takes the lease `name` for `holder`, or renews it, until `now + ttl_ms`. Returns the
    /// fence when `holder` holds the lease after the call, `None` when another holder's lease
    /// has not expired yet (`expires_at > now`).
    ///
    /// Several orchestrator replicas on one PostgreSQL store call this in a loop, well within
    /// `ttl_ms`; the one that gets `Some` leads. The fence lets the leader's writes be checked
    /// against [`Store::lease_fence`], so a replica that stalled past its expiry and woke up
    /// believing it still leads can be refused.
    ///
    /// # Guarantees
    /// - One statement (an upsert whose update only applies when `holder` holds the lease or
    ///   it has expired), so it is atomic on both databases: when several holders race for a
    ///   free or expired lease, exactly one gets `Some`. PostgreSQL re-checks the condition on
    ///   the row it locked, after the winner's commit; SQLite runs one writer at a time.
    /// - The fence is 1 for a new lease, grows by one every time the holder changes (a takeover
    ///   after expiry or release) and stays the same when the holder renews, even after its own
    ///   lease expired: nobody else held it meanwhile. Fences of one lease never repeat, since
    ///   its row is never deleted.
    /// - `now` is the caller's clock, so replicas' clocks must agree to well within `ttl_ms`,
    ///   and `ttl_ms` must be positive (a lease already expired when taken is anyone's).
    ///   `holder` must be unique per process run: a restarted replica that reuses its old
    ///   holder name renews the old fence instead of taking a new one.
    pub async fn acquire_lease(
        &self,
        name: &str,
        holder: &str,
        ttl_ms: i64,
        now: i64,
    ) -> Result<Option<i64>> {
        // RETURNING yields no row when the ON CONFLICT ... WHERE refuses the update.
        let row = sqlx::query(
            "INSERT INTO leases (name, holder, fence, expires_at) VALUES ($1, $2, 1, $3) ON CONFLICT (name) DO UPDATE SET fence = CASE WHEN leases.holder = excluded.holder THEN leases.fence ELSE leases.fence + 1 END, holder = excluded.holder, expires_at = excluded.expires_at WHERE leases.holder = excluded.holder OR leases.expires_at <= $4 RETURNING fence",
        )
        .bind(name)
        .bind(holder)
        .bind(now.saturating_add(ttl_ms))
        .bind(now)
        .fetch_optional(&self.pool)
        .await?;
        Ok(match row {
            Some(r) => Some(r.try_get("fence")?),
            None => None,
        })
    }

    /// Ends the lease `name` at once if `holder` is its holder, so a replica shutting down
    /// gracefully hands over without making the others wait out the TTL. Returns whether
    /// `holder` was the holder; `false` means another replica took over meanwhile.
    ///
    /// The row stays (with `expires_at = 0`) so the next holder's fence still grows.
    pub async fn release_lease(&self, name: &str, holder: &str) -> Result<bool> {
        let res = sqlx::query("UPDATE leases SET expires_at = 0 WHERE name = $1 AND holder = $2")
            .bind(name)
            .bind(holder)
            .execute(&self.pool)
            .await?;
        Ok(res.rows_affected() > 0)
    }

    /// The lease `name` as stored: holder, fence and `expires_at` (Unix milliseconds; 0 once
    /// released). The holder holds it only while `now < expires_at`. `None` when it was never
    /// taken.
    ///
    /// For status display, and for fencing: a leader whose fence is no longer the stored one
    /// has been replaced and must stop.
    pub async fn lease_fence(&self, name: &str) -> Result<Option<(String, i64, i64)>> {
        let row = sqlx::query("SELECT holder, fence, expires_at FROM leases WHERE name = $1")
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| {
            Ok((
                r.try_get("holder")?,
                r.try_get("fence")?,
                r.try_get("expires_at")?,
            ))
        })
        .transpose()
    }
}

/// A flow secret as listed: its name, the master key that sealed it and when it was set. Never
/// its value.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct SecretInfo {
    pub name: String,
    /// The id of the master key that sealed it; after a key rotation, secrets still under the old
    /// id need `pumphouse secrets re-encrypt`.
    pub key_id: String,
    pub updated_at: i64,
}

/// What [`Store::put_secret`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecretPut {
    Created,
    Replaced,
    /// The flow has `limit` secrets already; nothing was stored.
    TooMany {
        limit: usize,
    },
}

/// One stored secret, sealed, with whose it is.
#[derive(Debug, Clone)]
pub struct StoredSecret {
    pub flow_id: String,
    pub name: String,
    pub sealed: Sealed,
}

/// Every flow secret, read and rewritten in one transaction that holds the table's write lock:
/// a master key rotation commits whole or not at all, and no secret set meanwhile is lost.
pub struct SecretsRewrite {
    tx: WriteTx,
}

impl SecretsRewrite {
    /// Every secret of every flow, by flow and name.
    pub async fn all(&mut self) -> Result<Vec<StoredSecret>> {
        let rows = sqlx::query(
            "SELECT flow_id, name, key_id, nonce, ciphertext FROM flow_secrets ORDER BY flow_id, name",
        )
        .fetch_all(&mut *self.tx)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(StoredSecret {
                    flow_id: r.try_get("flow_id")?,
                    name: r.try_get("name")?,
                    sealed: sealed_from_row(r)?,
                })
            })
            .collect()
    }

    /// Replaces one secret's sealed value, keeping its `updated_at` (the value did not change).
    pub async fn replace(&mut self, s: &StoredSecret) -> Result<()> {
        sqlx::query(
            "UPDATE flow_secrets SET key_id = $3, nonce = $4, ciphertext = $5 WHERE flow_id = $1 AND name = $2",
        )
        .bind(&s.flow_id)
        .bind(&s.name)
        .bind(&s.sealed.key_id)
        .bind(&s.sealed.nonce)
        .bind(&s.sealed.ciphertext)
        .execute(&mut *self.tx)
        .await?;
        Ok(())
    }

    pub async fn commit(self) -> Result<()> {
        self.tx.commit().await?;
        Ok(())
    }
}

impl Store {
    /// Stores a sealed secret for a flow, replacing one of the same name, and records that it
    /// was set (by name) as a flow event.
    pub async fn put_secret(
        &self,
        flow_id: &str,
        name: &str,
        sealed: &Sealed,
        limit: usize,
        actor: &str,
    ) -> Result<SecretPut> {
        let mut tx = self.begin_write().await?;
        let existing = sqlx::query("SELECT COUNT(*) AS n, SUM(CASE WHEN name = $2 THEN 1 ELSE 0 END) AS same FROM flow_secrets WHERE flow_id = $1")
            .bind(flow_id)
            .bind(name)
            .fetch_one(&mut *tx)
            .await?;
        let count: i64 = existing.try_get("n")?;
        let replacing = existing.try_get::<Option<i64>, _>("same")?.unwrap_or(0) > 0;
        if !replacing && count >= limit as i64 {
            return Ok(SecretPut::TooMany { limit });
        }
        sqlx::query(
            "INSERT INTO flow_secrets (flow_id, name, key_id, nonce, ciphertext, updated_at) VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (flow_id, name) DO UPDATE SET key_id = excluded.key_id, nonce = excluded.nonce, ciphertext = excluded.ciphertext, updated_at = excluded.updated_at",
        )
        .bind(flow_id)
        .bind(name)
        .bind(&sealed.key_id)
        .bind(&sealed.nonce)
        .bind(&sealed.ciphertext)
        .bind(now_ms())
        .execute(&mut *tx)
        .await?;
        note_event(&mut tx, flow_id, &format!("secret `{name}` set"), actor).await?;
        tx.commit().await?;
        Ok(if replacing {
            SecretPut::Replaced
        } else {
            SecretPut::Created
        })
    }

    /// A flow's secrets by name, without values.
    pub async fn secret_names(&self, flow_id: &str) -> Result<Vec<SecretInfo>> {
        let rows = sqlx::query(
            "SELECT name, key_id, updated_at FROM flow_secrets WHERE flow_id = $1 ORDER BY name",
        )
        .bind(flow_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(SecretInfo {
                    name: r.try_get("name")?,
                    key_id: r.try_get("key_id")?,
                    updated_at: r.try_get("updated_at")?,
                })
            })
            .collect()
    }

    /// A flow's secrets, sealed, by name: what a pump start decrypts.
    pub async fn sealed_secrets(&self, flow_id: &str) -> Result<Vec<(String, Sealed)>> {
        let rows = sqlx::query(
            "SELECT name, key_id, nonce, ciphertext FROM flow_secrets WHERE flow_id = $1 ORDER BY name",
        )
        .bind(flow_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("name")?, sealed_from_row(r)?)))
            .collect()
    }

    /// Deletes one secret; `false` when the flow had none of that name.
    pub async fn delete_secret(&self, flow_id: &str, name: &str, actor: &str) -> Result<bool> {
        let mut tx = self.begin_write().await?;
        let res = sqlx::query("DELETE FROM flow_secrets WHERE flow_id = $1 AND name = $2")
            .bind(flow_id)
            .bind(name)
            .execute(&mut *tx)
            .await?;
        if res.rows_affected() == 0 {
            return Ok(false);
        }
        note_event(&mut tx, flow_id, &format!("secret `{name}` deleted"), actor).await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Opens a rewrite of every secret (a master key rotation), holding the table's write lock
    /// until it commits or is dropped.
    pub async fn rewrite_secrets(&self) -> Result<SecretsRewrite> {
        let mut tx = self.begin_write().await?;
        let lock = match self.dialect {
            // Blocks writers (a PUT on a replica) but not readers until the commit.
            Dialect::Postgres => "LOCK TABLE flow_secrets IN SHARE ROW EXCLUSIVE MODE",
            // Any write statement takes SQLite's one write lock for the rest of the transaction.
            Dialect::Sqlite => "DELETE FROM flow_secrets WHERE 1 = 0",
        };
        sqlx::query(lock).execute(&mut *tx).await?;
        Ok(SecretsRewrite { tx })
    }
}

fn sealed_from_row(r: &AnyRow) -> Result<Sealed> {
    Ok(Sealed {
        key_id: r.try_get("key_id")?,
        nonce: r.try_get("nonce")?,
        ciphertext: r.try_get("ciphertext")?,
    })
}

/// Copies SQLite's write-ahead log into the database every second, without blocking writers
/// (`PASSIVE`), for as long as the pool is open. Left to SQLite, the commit that crosses the
/// log's size threshold does it, and every writer waits behind that commit.
async fn checkpoint_wal(pool: AnyPool) {
    let mut every = tokio::time::interval(std::time::Duration::from_secs(1));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        if pool.is_closed() {
            return;
        }
        if let Err(e) = sqlx::query("PRAGMA wal_checkpoint(PASSIVE)")
            .execute(&pool)
            .await
        {
            tracing::debug!(error = %e, "checkpointing the SQLite log failed; retrying in a second");
        }
    }
}

async fn insert_event(
    tx: &mut WriteTx,
    flow_id: &str,
    from: Option<&str>,
    to: &str,
    reason: &str,
    actor: &str,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO flow_events (flow_id, at, from_status, to_status, reason, actor) VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(flow_id)
    .bind(now_ms())
    .bind(from)
    .bind(to)
    .bind(reason)
    .bind(actor)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Records something that happened to a flow without changing its status.
async fn note_event(tx: &mut WriteTx, flow_id: &str, reason: &str, actor: &str) -> Result<()> {
    sqlx::query(
        "INSERT INTO flow_events (flow_id, at, from_status, to_status, reason, actor) SELECT id, $2, status, status, $3, $4 FROM flows WHERE id = $1",
    )
    .bind(flow_id)
    .bind(now_ms())
    .bind(reason)
    .bind(actor)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

pub(crate) fn is_unique_violation(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(db) => {
            db.is_unique_violation() || db.message().contains("UNIQUE constraint failed")
        }
        _ => false,
    }
}

fn flow_from_row(r: &AnyRow) -> Result<FlowRecord> {
    Ok(FlowRecord {
        id: r.try_get("id")?,
        tenant_id: r.try_get("tenant_id")?,
        name: r.try_get("name")?,
        manifest: r.try_get("manifest")?,
        desired_state: r.try_get("desired_state")?,
        status: r.try_get("status")?,
        status_reason: r.try_get("status_reason")?,
        webhook_token_hash: r.try_get("webhook_token_hash")?,
        idle_timeout_ms: r.try_get("idle_timeout_ms")?,
        keep_alive: r.try_get::<i64, _>("keep_alive")? != 0,
        instance_id: r.try_get("instance_id")?,
        pump_ref: r.try_get("pump_ref")?,
        created_at: r.try_get("created_at")?,
        updated_at: r.try_get("updated_at")?,
    })
}

fn exec_from_row(r: &AnyRow) -> Result<ExecutionRecord> {
    Ok(ExecutionRecord {
        id: r.try_get("id")?,
        flow_id: r.try_get("flow_id")?,
        seq: r.try_get("seq")?,
        trigger_type: r.try_get("trigger_type")?,
        status: r.try_get("status")?,
        payload: r.try_get("payload")?,
        output: r.try_get("output")?,
        error_message: r.try_get("error_message")?,
        attempts: r.try_get("attempts")?,
        received_at: r.try_get("received_at")?,
        deadline_at: r.try_get("deadline_at")?,
        acked_at: r.try_get("acked_at")?,
        started_at: r.try_get("started_at")?,
        completed_at: r.try_get("completed_at")?,
        instance_id: r.try_get("instance_id")?,
    })
}

/// A flow's Redis ACL user as the store remembers it: enough to create the user again.
#[derive(Debug, Clone, PartialEq)]
pub struct PumpCredentials {
    pub flow_id: String,
    pub tenant_id: String,
    pub status: String,
    /// Hex SHA-256 of each password that may sign in (see migration 0006).
    pub password_hashes: Vec<String>,
}

impl Store {
    /// Remembers the hashes of the passwords that may sign in as the flow's Redis user;
    /// empty forgets them (the user is gone).
    pub async fn set_redis_password_hashes(&self, flow_id: &str, hashes: &[String]) -> Result<()> {
        let joined = (!hashes.is_empty()).then(|| hashes.join(" "));
        sqlx::query("UPDATE flows SET redis_password_hashes = $2 WHERE id = $1")
            .bind(flow_id)
            .bind(joined)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// The flow's Redis user, if it has one.
    pub async fn pump_credentials(&self, flow_id: &str) -> Result<Option<PumpCredentials>> {
        let row = sqlx::query(
            "SELECT id, tenant_id, status, redis_password_hashes FROM flows WHERE id = $1 AND redis_password_hashes IS NOT NULL",
        )
        .bind(flow_id)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(credentials_from_row).transpose()
    }

    /// Every flow that has a Redis user.
    pub async fn all_pump_credentials(&self) -> Result<Vec<PumpCredentials>> {
        let rows = sqlx::query(
            "SELECT id, tenant_id, status, redis_password_hashes FROM flows WHERE redis_password_hashes IS NOT NULL",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(credentials_from_row).collect()
    }
}

fn credentials_from_row(r: &AnyRow) -> Result<PumpCredentials> {
    let hashes: String = r.try_get("redis_password_hashes")?;
    Ok(PumpCredentials {
        flow_id: r.try_get("id")?,
        tenant_id: r.try_get("tenant_id")?,
        status: r.try_get("status")?,
        password_hashes: hashes.split_whitespace().map(str::to_owned).collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sqlite_url_names_the_file_it_may_create() {
        let file = |rest| sqlite_file(rest).map(|p| p.display().to_string());
        assert_eq!(file("/data/ph.db").as_deref(), Some("/data/ph.db"));
        assert_eq!(file("ph.db?mode=rwc").as_deref(), Some("ph.db"));
        assert_eq!(file("a%20b%3F.db").as_deref(), Some("a b?.db"));
        assert_eq!(file(":memory:"), None);
        assert_eq!(file("ph.db?mode=ro"), None);
        assert_eq!(file("ph.db?cache=shared&mode=rw"), None);
    }

    /// Under the usual umask (022) SQLite alone made all three 0644.
    #[tokio::test]
    async fn the_sqlite_file_and_its_wal_are_created_private_whatever_the_umask() {
        let dir = std::env::temp_dir().join(format!("pumphouse-mode-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let db = dir.join("ph.db");
        let store = Store::connect(&format!("sqlite://{}", db.display()))
            .await
            .unwrap();
        store.ensure_tenant("default", "Default").await.unwrap();
        let mode = |suffix: &str| {
            use std::os::unix::fs::PermissionsExt as _;
            let file = format!("{}{suffix}", db.display());
            let mode = std::fs::metadata(&file)
                .unwrap_or_else(|e| panic!("{file}: {e}"))
                .permissions()
                .mode();
            format!("{:o}", mode & 0o777)
        };
        assert_eq!(mode(""), "600", "the database file");
        assert_eq!(mode("-wal"), "600", "its WAL");
        assert_eq!(mode("-shm"), "600", "its shared-memory index");
        drop(store);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn only_a_store_that_is_away_counts_as_unavailable() {
        let away = StoreError::Query(sqlx::Error::PoolTimedOut);
        assert!(away.is_unavailable());
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert!(StoreError::Query(sqlx::Error::Io(refused)).is_unavailable());
        // The store answered, and said no: trying again changes nothing.
        assert!(!StoreError::Query(sqlx::Error::RowNotFound).is_unavailable());
        assert!(!StoreError::NameTaken("a".into()).is_unavailable());
    }
}

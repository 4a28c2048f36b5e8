//! The process backend: each pump is a child process of the orchestrator, for machines with no
//! container engine. The pump gets the same environment a container would; its output is kept
//! in a ring buffer per flow; stopping sends SIGTERM and kills after the grace period.
//!
//! # Caveats
//! Pumps are children of this orchestrator: they end with it, and no limits are applied (the
//! manifest's memory and CPU are ignored). Use Docker or Kubernetes where isolation matters.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures_util::stream::{BoxStream, StreamExt as _};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::process::Command;
use tokio::sync::{broadcast, watch};

use super::{Backend, BackendError, BackendEvent, PumpSpec, PumpState, PumpStatus};
use crate::locking::lock;

/// Lines of output kept per flow.
const LOG_LINES: usize = 2000;

struct Child {
    instance_id: String,
    pid: u32,
    /// Set before the orchestrator signals the pump, so its exit is not reported as news.
    requested: Arc<AtomicBool>,
    /// Set to `Some(exit)` when the process ends.
    exited: watch::Receiver<Option<PumpState>>,
    logs: Arc<Mutex<VecDeque<String>>>,
    /// Each new line, for followers.
    lines: broadcast::Sender<String>,
}

pub struct ProcessBackend {
    binary: PathBuf,
    children: Mutex<HashMap<String, Child>>,
    events: broadcast::Sender<BackendEvent>,
}

impl ProcessBackend {
    /// Checks that `binary` exists and can be executed.
    ///
    /// # Errors
    /// [`BackendError::PumpBinary`] naming the path.
    pub fn new(binary: PathBuf) -> Result<ProcessBackend, BackendError> {
        let meta = std::fs::metadata(&binary).map_err(|source| BackendError::PumpBinary {
            path: binary.display().to_string(),
            source,
        })?;
        if !meta.is_file() {
            return Err(BackendError::PumpBinary {
                path: binary.display().to_string(),
                source: std::io::Error::other("not a file"),
            });
        }
        let (events, _) = broadcast::channel(1024);
        Ok(ProcessBackend {
            binary,
            children: Mutex::new(HashMap::new()),
            events,
        })
    }

    /// The default pump binary: `pump` beside the running executable.
    pub fn default_binary() -> PathBuf {
        std::env::current_exe()
            .ok()
            .and_then(|p| p.parent().map(|d| d.join("pump")))
            .unwrap_or_else(|| PathBuf::from("pump"))
    }

    fn status_of(flow_id: &str, child: &Child) -> PumpStatus {
        let state = child.exited.borrow().clone().unwrap_or(PumpState::Running);
        PumpStatus {
            drifted: false,
            flow_id: flow_id.to_string(),
            instance_id: Some(child.instance_id.clone()),
            state,
            pump_ref: format!("pid:{}", child.pid),
        }
    }

    async fn terminate(
        &self,
        flow_id: &str,
        child: Child,
        grace: Duration,
    ) -> Result<(), BackendError> {
        let mut exited = child.exited;
        if exited.borrow().is_some() {
            return Ok(());
        }
        child.requested.store(true, Ordering::SeqCst);
        let pid = Pid::from_raw(child.pid as i32);
        let signal = |sig| {
            kill(pid, sig).map_err(|e| BackendError::Signal {
                flow_id: flow_id.to_string(),
                message: e.to_string(),
            })
        };
        // ESRCH: it ended between the check and the signal, which is what we wanted.
        if let Err(e) = signal(Signal::SIGTERM) {
            if exited.borrow().is_some() {
                return Ok(());
            }
            return Err(e);
        }
        let ended = tokio::time::timeout(grace, exited.wait_for(|s| s.is_some()))
            .await
            .is_ok();
        if !ended {
            tracing::warn!(
                flow_id,
                ?grace,
                "pump did not exit within its grace period; killing it"
            );
            let _ = signal(Signal::SIGKILL);
            let _ = exited.wait_for(|s| s.is_some()).await;
        }
        Ok(())
    }
}

#[async_trait]
impl Backend for ProcessBackend {
    fn name(&self) -> &'static str {
        "process"
    }

    async fn start(&self, spec: &PumpSpec) -> Result<PumpStatus, BackendError> {
        let old = lock(&self.children).remove(&spec.flow_id);
        if let Some(old) = old {
            self.terminate(&spec.flow_id, old, spec.stop_grace).await?;
        }
        let mut cmd = Command::new(&self.binary);
        // A clean environment, as a container would have: nothing of the orchestrator's leaks in.
        cmd.env_clear()
            .envs(minimal_env())
            .envs(spec.full_env())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut process = cmd.spawn().map_err(|source| BackendError::PumpBinary {
            path: self.binary.display().to_string(),
            source,
        })?;
        let pid = process.id().unwrap_or(0);
        let logs = Arc::new(Mutex::new(VecDeque::with_capacity(256)));
        let (lines, _) = broadcast::channel(256);
        let mut readers = Vec::new();
        if let Some(out) = process.stdout.take() {
            readers.push(tokio::spawn(collect(
                BufReader::new(out),
                logs.clone(),
                lines.clone(),
            )));
        }
        if let Some(err) = process.stderr.take() {
            readers.push(tokio::spawn(collect(
                BufReader::new(err),
                logs.clone(),
                lines.clone(),
            )));
        }
        let (exit_tx, exit_rx) = watch::channel(None);
        let requested = Arc::new(AtomicBool::new(false));
        let requested_by_us = requested.clone();
        let events = self.events.clone();
        let flow_id = spec.flow_id.clone();
        let instance_id = spec.instance_id.clone();
        tokio::spawn(async move {
            let status = process.wait().await;
            // Read the last lines before announcing the exit, so a log tail taken on the event
            // holds the pump's final words.
            for r in readers {
                let _ = r.await;
            }
            let code = status.ok().and_then(|s| {
                use std::os::unix::process::ExitStatusExt as _;
                s.code()
                    .map(i64::from)
                    .or_else(|| s.signal().map(|sig| 128 + sig as i64))
            });
            let _ = exit_tx.send(Some(PumpState::Exited { code, oom: false }));
            if requested_by_us.load(Ordering::SeqCst) {
                return;
            }
            let _ = events.send(BackendEvent::Exited {
                flow_id,
                instance_id: Some(instance_id),
                code,
                oom: false,
            });
        });
        let child = Child {
            instance_id: spec.instance_id.clone(),
            pid,
            lines,
            requested,
            exited: exit_rx,
            logs,
        };
        let status = Self::status_of(&spec.flow_id, &child);
        lock(&self.children).insert(spec.flow_id.clone(), child);
        Ok(status)
    }

    async fn stop(&self, flow_id: &str, grace: Duration) -> Result<(), BackendError> {
        let child = lock(&self.children).remove(flow_id);
        match child {
            Some(child) => self.terminate(flow_id, child, grace).await,
            None => Ok(()),
        }
    }

    async fn inspect(&self, flow_id: &str) -> Result<Option<PumpStatus>, BackendError> {
        let children = lock(&self.children);
        Ok(children.get(flow_id).map(|c| Self::status_of(flow_id, c)))
    }

    async fn list(&self) -> Result<Vec<PumpStatus>, BackendError> {
        let children = lock(&self.children);
        Ok(children
            .iter()
            .map(|(flow_id, c)| Self::status_of(flow_id, c))
            .collect())
    }

    fn follow_logs(&self, flow_id: &str, tail: usize) -> BoxStream<'static, String> {
        let children = lock(&self.children);
        let Some(child) = children.get(flow_id) else {
            return Box::pin(futures_util::stream::empty());
        };
        let (first, rx) = {
            let logs = lock(&child.logs);
            let first: Vec<String> = logs
                .iter()
                .skip(logs.len().saturating_sub(tail))
                .cloned()
                .collect();
            (first, child.lines.subscribe())
        };
        let rest = futures_util::stream::unfold(rx, |mut rx| async move {
            match rx.recv().await {
                Ok(line) => Some((line, rx)),
                Err(broadcast::error::RecvError::Lagged(n)) => Some((
                    format!("[{n} lines skipped: the follower was too slow]"),
                    rx,
                )),
                Err(broadcast::error::RecvError::Closed) => None,
            }
        });
        Box::pin(futures_util::stream::iter(first).chain(rest))
    }

    async fn memory(&self, flow_id: &str) -> Option<(i64, Option<i64>)> {
        let pid = {
            let children = lock(&self.children);
            let child = children.get(flow_id)?;
            if child.exited.borrow().is_some() {
                return None;
            }
            child.pid
        };
        // VmRSS in /proc/<pid>/status is in kB. No limit: this backend applies none.
        let status = tokio::fs::read_to_string(format!("/proc/{pid}/status"))
            .await
            .ok()?;
        let kb: i64 = status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()?;
        Some((kb * 1024, None))
    }

    async fn logs(&self, flow_id: &str, tail: usize) -> Result<Vec<String>, BackendError> {
        let children = lock(&self.children);
        Ok(children
            .get(flow_id)
            .map(|c| {
                let logs = lock(&c.logs);
                logs.iter()
                    .skip(logs.len().saturating_sub(tail))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default())
    }

    fn events(&self) -> BoxStream<'static, BackendEvent> {
        let rx = self.events.subscribe();
        Box::pin(futures_util::stream::unfold(rx, |mut rx| async move {
            loop {
                match rx.recv().await {
                    Ok(ev) => return Some((ev, rx)),
                    // A slow consumer missed some; the periodic resync covers them.
                    Err(broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(broadcast::error::RecvError::Closed) => return None,
                }
            }
        }))
    }
}

/// PATH and locale only, so a pump finds its tools and nothing else of the orchestrator's.
fn minimal_env() -> BTreeMap<String, String> {
    ["PATH", "LANG", "TZ"]
        .iter()
        .filter_map(|k| std::env::var(k).ok().map(|v| (k.to_string(), v)))
        .collect()
}

async fn collect<R: tokio::io::AsyncBufRead + Unpin>(
    reader: R,
    logs: Arc<Mutex<VecDeque<String>>>,
    followers: broadcast::Sender<String>,
) {
    let mut lines = reader.lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let mut logs = lock(&logs);
        if logs.len() >= LOG_LINES {
            logs.pop_front();
        }
        logs.push_back(line.clone());
        // Sent under the buffer's lock, so a follower that took the tail under the same lock
        // neither misses nor repeats a line.
        let _ = followers.send(line);
    }
}

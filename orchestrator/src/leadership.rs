//! Which replica leads: the one holding the supervisor lease runs the supervision loops
//! (pump events, re-delivery, reaper, reconcile); every replica serves the API and webhooks.
//!
//! # Guarantees
//! - At most one replica believes it leads for longer than it takes to notice a failed renewal
//!   (a third of the lease's TTL); its supervision writes carry the lease's fence, so even
//!   then it cannot change a flow after another replica took over.
//! - A replica that dies is replaced within the lease TTL plus one renewal interval.
//! - On SQLite (one orchestrator by design) there is no lease: the only replica leads.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::bus::Bus;
use crate::dispatcher::Dispatcher;
use crate::locking::lock;
use crate::store::{now_ms, Dialect, Store, SUPERVISOR_LEASE};
use crate::supervisor::Supervisor;

/// The name the leader reads pump events under; fixed, so a new leader first re-reads what
/// the old one took and never acknowledged.
const EVENTS_CONSUMER: &str = "leader";

pub struct Leadership {
    store: Store,
    bus: Bus,
    supervisor: Arc<Supervisor>,
    dispatcher: Arc<Dispatcher>,
    /// Unique per process run, so a restarted replica takes the lease with a new fence.
    holder: String,
    ttl: Duration,
    leading: AtomicBool,
    work: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Leadership {
    pub fn new(
        store: Store,
        bus: Bus,
        supervisor: Arc<Supervisor>,
        dispatcher: Arc<Dispatcher>,
        replica: &str,
        ttl: Duration,
    ) -> Leadership {
        let suffix = &uuid::Uuid::new_v4().simple().to_string()[..8];
        Leadership {
            store,
            bus,
            supervisor,
            dispatcher,
            holder: format!("{replica}/{suffix}"),
            ttl,
            leading: AtomicBool::new(false),
            work: Mutex::new(None),
        }
    }

    pub fn is_leader(&self) -> bool {
        self.leading.load(Ordering::SeqCst)
    }

    pub fn holder(&self) -> &str {
        &self.holder
    }

    /// Takes or renews the lease once and starts or stops the leader's work to match.
    pub async fn step(&self) {
        let held = match self.store.dialect() {
            Dialect::Sqlite => Ok(Some(0)),
            Dialect::Postgres => self
                .store
                .acquire_lease(
                    SUPERVISOR_LEASE,
                    &self.holder,
                    self.ttl.as_millis() as i64,
                    now_ms(),
                )
                .await
                .map_err(|e| e.to_string()),
        };
        match held {
            Ok(Some(fence)) => {
                self.supervisor.set_fence((fence > 0).then_some(fence));
                if !self.is_leader() {
                    self.lead().await;
                }
            }
            Ok(None) => self.follow("another replica holds the lease"),
            // Without the store nothing can be renewed: step down before the lease runs out.
            Err(e) => self.follow(&format!("renewing the lease failed: {e}")),
        }
    }

    async fn lead(&self) {
        tracing::info!(holder = %self.holder, fence = ?self.supervisor.fence(), "leading: running the supervision loops");
        self.leading.store(true, Ordering::SeqCst);
        self.supervisor.set_leading(true);
        self.dispatcher.clear();
        self.supervisor.reset_liveness();
        if let Err(e) = self.dispatcher.load().await {
            tracing::warn!(error = %e, "loading unacknowledged triggers failed; the sweep retries");
        }
        let work = tokio::spawn(
            self.supervisor
                .clone()
                .run_leader(self.bus.clone(), EVENTS_CONSUMER.to_string()),
        );
        *lock(&self.work) = Some(work);
        // Adopt running pumps, remove orphans, restart what is gone, before anything else.
        match self.supervisor.resync().await {
            Ok(0) => {}
            Ok(acted) => tracing::info!(
                acted,
                "resync on taking the lead adopted, restarted or removed pumps"
            ),
            Err(e) => {
                tracing::warn!(error = %e, "resync on taking the lead failed; the periodic one retries")
            }
        }
    }

    fn follow(&self, why: &str) {
        self.supervisor.set_fence(None);
        self.supervisor.set_leading(false);
        if self.leading.swap(false, Ordering::SeqCst) {
            tracing::warn!(holder = %self.holder, why, "no longer leading: stopping the supervision loops");
            if let Some(work) = lock(&self.work).take() {
                work.abort();
            }
            self.dispatcher.clear();
        }
    }

    /// Renews the lease every third of its TTL, for ever.
    pub async fn run(self: Arc<Self>) {
        let mut every = tokio::time::interval(self.ttl / 3);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            self.step().await;
        }
    }

    /// Stops leading and hands the lease over at once (graceful shutdown).
    pub async fn release(&self) {
        self.follow("shutting down");
        if self.store.dialect() == Dialect::Postgres {
            if let Err(e) = self
                .store
                .release_lease(SUPERVISOR_LEASE, &self.holder)
                .await
            {
                tracing::warn!(error = %e, "releasing the lease failed; another replica takes over when it expires");
            }
        }
    }
}

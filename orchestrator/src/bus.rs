//! The trigger bus: Redis pub/sub carries triggers to pumps, and each flow's own events stream
//! (`tenant:{t}:flow:{f}:events`) carries its pump's events back.
//!
//! Pub/sub is only the injection channel. Triggers are durable in the store before they are
//! published, and pump events are read through a consumer group and acknowledged (`XACK`) only
//! after they are applied, so an orchestrator restart re-reads what it had not finished.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pumphouse_pump::{channels, PumpEvent, Trigger};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::streams::{StreamReadOptions, StreamReadReply};
use redis::AsyncCommands as _;

use crate::locking::lock;

/// The consumer group the leading replica reads pump events through, on every flow's stream.
const GROUP: &str = "orchestrator";

/// Where replicas that do not lead announce the triggers they recorded.
const ACCEPTED_CHANNEL: &str = "pumphouse:accepted";
/// Where other replicas ask the leader to carry out a start, stop or delete they recorded.
const SUPERVISE_CHANNEL: &str = "pumphouse:supervise";

/// Where replicas announce the events streams of pumps they start (`<tenant> <flow>`).
const WATCH_CHANNEL: &str = "pumphouse:watch";

#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("`{url}` is not a Redis URL: {source}")]
    BadUrl {
        url: String,
        #[source]
        source: redis::RedisError,
    },
    #[error("cannot reach Redis: {0}; check --redis and that redis-server is running")]
    Unreachable(#[source] redis::RedisError),
    #[error("Redis command failed: {0}")]
    Command(#[from] redis::RedisError),
}

#[derive(Clone)]
pub struct Bus {
    client: redis::Client,
    conn: ConnectionManager,
    watched: Arc<Watched>,
    /// At most one line a minute per stream about a stream made again.
    remade_log: Arc<crate::log_gate::LogGate>,
}

impl Bus {
    /// Connects.
    ///
    /// # Errors
    /// A bad URL or an unreachable server.
    pub async fn connect(url: &str) -> Result<Bus, BusError> {
        let client = redis::Client::open(url).map_err(|source| BusError::BadUrl {
            url: redact(url),
            source,
        })?;
        let mut conn = ConnectionManager::new_with_config(client.clone(), manager_config())
            .await
            .map_err(BusError::Unreachable)?;
        let _: String = redis::cmd("PING")
            .query_async(&mut conn)
            .await
            .map_err(BusError::Unreachable)?;
        Ok(Bus {
            client,
            conn,
            watched: Arc::default(),
            remade_log: Arc::new(crate::log_gate::LogGate::new(REMADE_WINDOW)),
        })
    }

    pub async fn ping(&self) -> Result<(), BusError> {
        let mut conn = self.conn.clone();
        let cmd = redis::cmd("PING");
        let ping = cmd.query_async::<String>(&mut conn);
        tokio::time::timeout(OP_TIMEOUT, ping)
            .await
            .map_err(|_| timed_out("PING"))??;
        Ok(())
    }

    /// Publishes a trigger; returns how many subscribers received it (0: no pump listening).
    pub async fn publish(&self, flow_id: &str, trigger: &Trigger) -> Result<u64, BusError> {
        let body = serde_json::to_string(trigger).expect("triggers always serialize");
        let mut conn = self.conn.clone();
        let publish = conn.publish::<_, _, u64>(channels::trigger(flow_id), body);
        Ok(tokio::time::timeout(OP_TIMEOUT, publish)
            .await
            .map_err(|_| timed_out("PUBLISH"))??)
    }

    /// Sends many triggers in one round trip (a pipeline), in the order given.
    pub async fn publish_many(&self, triggers: &[(String, Trigger)]) -> Result<(), BusError> {
        if triggers.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        for (flow_id, trigger) in triggers {
            let body = serde_json::to_string(trigger).expect("triggers always serialize");
            pipe.publish(channels::trigger(flow_id), body).ignore();
        }
        let mut conn = self.conn.clone();
        let sent = pipe.query_async::<()>(&mut conn);
        Ok(tokio::time::timeout(OP_TIMEOUT, sent)
            .await
            .map_err(|_| timed_out("PUBLISH"))??)
    }

    /// Tells the leader that a trigger for `flow_id` was recorded by another replica. Best
    /// effort: the leader also loads unacknowledged triggers from the store every second.
    pub async fn notify_accepted(&self, flow_id: &str) {
        self.notify(ACCEPTED_CHANNEL, flow_id).await
    }

    /// Calls `apply` with each flow id other replicas recorded triggers for, for ever,
    /// reconnecting with back-off. Meant for the leader.
    pub async fn accepted_notifications<F, Fut>(&self, apply: F)
    where
        F: FnMut(String) -> Fut,
        Fut: Future<Output = ()>,
    {
        self.notifications(ACCEPTED_CHANNEL, apply).await
    }

    /// Tells the leader that another replica recorded a start, stop or delete of `flow_id`,
    /// which only the leader carries out. Best effort: the leader's reconcile finds it too.
    pub async fn notify_supervise(&self, flow_id: &str) {
        self.notify(SUPERVISE_CHANNEL, flow_id).await
    }

    /// Calls `apply` with each flow id other replicas asked the leader to act on, for ever.
    pub async fn supervise_requests<F, Fut>(&self, apply: F)
    where
        F: FnMut(String) -> Fut,
        Fut: Future<Output = ()>,
    {
        self.notifications(SUPERVISE_CHANNEL, apply).await
    }

    async fn notify(&self, channel: &str, flow_id: &str) {
        let mut conn = self.conn.clone();
        let publish = conn.publish::<_, _, u64>(channel, flow_id);
        match tokio::time::timeout(OP_TIMEOUT, publish).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                tracing::debug!(flow_id, channel, error = %e, "telling the leader failed; it looks at the store too")
            }
            Err(_) => tracing::debug!(
                flow_id,
                channel,
                "telling the leader timed out; it looks at the store too"
            ),
        }
    }

    /// Calls `apply` with each message on `channel`, for ever, resubscribing with back-off.
    async fn notifications<F, Fut>(&self, channel: &str, mut apply: F)
    where
        F: FnMut(String) -> Fut,
        Fut: Future<Output = ()>,
    {
        let mut backoff = Duration::from_millis(100);
        loop {
            let subscribed = async {
                let mut pubsub = self.client.get_async_pubsub().await?;
                pubsub.subscribe(channel).await?;
                Ok::<_, redis::RedisError>(pubsub)
            }
            .await;
            match subscribed {
                Ok(mut pubsub) => {
                    backoff = Duration::from_millis(100);
                    let mut messages = pubsub.on_message();
                    while let Some(msg) = futures_util::StreamExt::next(&mut messages).await {
                        if let Ok(text) = msg.get_payload::<String>() {
                            apply(text).await;
                        }
                    }
                }
                Err(e) => tracing::debug!(error = %e, channel, "subscribing failed"),
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }

    /// Prepares a flow's events stream for a pump about to start, and has the leader read it:
    /// the consumer group is made from the stream's first entry, so nothing the pump writes
    /// can slip past it; this replica reads it if it leads, and the leader is told on
    /// `pumphouse:watch` otherwise. Returns once this replica's reader has the stream in its
    /// read (at once when it runs none).
    pub async fn watch_events(&self, tenant_id: &str, flow_id: &str) -> Result<(), BusError> {
        let stream = channels::events_stream(tenant_id, flow_id);
        let mut conn = self.conn.clone();
        // Even when Redis is down the stream joins the set: the reader makes the group (from
        // the first entry) when Redis is back, so nothing written meanwhile is missed. A key of
        // another type at the stream's name (an earlier pump put it there, and the reader
        // isolated the stream for it) is deleted first: a new pump gets a working stream.
        let grouped = match remove_foreign_key(&mut conn, &stream, flow_id).await {
            Ok(()) => create_group(&mut conn, &stream).await,
            Err(e) => Err(e),
        };
        self.read_stream(tenant_id, flow_id).await;
        let publish = conn.publish::<_, _, u64>(WATCH_CHANNEL, format!("{tenant_id} {flow_id}"));
        match tokio::time::timeout(OP_TIMEOUT, publish).await {
            Ok(Ok(_)) => {}
            _ => tracing::debug!(
                flow_id,
                "telling the leader about a new events stream failed; its resync finds it"
            ),
        }
        grouped
    }

    /// Adds a stream to what this replica's reader reads, and waits (briefly) until the reader
    /// has it in its read.
    async fn read_stream(&self, tenant_id: &str, flow_id: &str) {
        let stream = channels::events_stream(tenant_id, flow_id);
        let generation = {
            let mut streams = lock(&self.watched.streams);
            // Prepared for a new pump: an isolated stream is read again.
            let was_bad = lock(&self.watched.bad).remove(&stream).is_some();
            if streams.insert(stream, flow_id.to_string()).is_some() && !was_bad {
                return;
            }
            self.watched.generation.fetch_add(1, Ordering::SeqCst) + 1
        };
        self.watched.changed.notify_one();
        // The reader may be blocked in XREADGROUP on the old set: CLIENT UNBLOCK ends that wait.
        // Sent until the reader reports the new set, since an unblock that lands just before it
        // blocks again is lost.
        let mut conn = self.conn.clone();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
        while self.watched.read_generation.load(Ordering::SeqCst) < generation
            && tokio::time::Instant::now() < deadline
        {
            let reader = self.watched.reader_client_id.load(Ordering::SeqCst);
            if reader == 0 {
                break;
            }
            let _: redis::RedisResult<i64> = redis::cmd("CLIENT")
                .arg("UNBLOCK")
                .arg(reader)
                .query_async(&mut conn)
                .await;
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// Reads what other replicas announce on `pumphouse:watch` for ever: meant for the leader.
    pub async fn follow_watch_requests(&self) {
        self.notifications(WATCH_CHANNEL, |text| async move {
            if let Some((tenant, flow)) = text.split_once(' ') {
                self.read_stream(tenant, flow).await;
            }
        })
        .await
    }

    /// Keeps reading only the streams of `live` flows (tenant and flow ids), and any stream
    /// [`Bus::watch_events`] added since `since` (a [`Bus::watched_generation`] taken before
    /// `live` was read), so a flow launched meanwhile is not dropped. Entries left in a stream
    /// no longer read stay there, and are read when the flow runs again.
    pub fn retain_watched(&self, live: &[(String, String)], since: u64) {
        let keep: BTreeMap<String, String> = live
            .iter()
            .map(|(t, f)| (channels::events_stream(t, f), f.clone()))
            .collect();
        let mut streams = lock(&self.watched.streams);
        if self.watched.generation.load(Ordering::SeqCst) != since {
            // Something was added since `live` was read; drop nothing this time.
            streams.extend(keep);
            return;
        }
        streams.retain(|k, _| keep.contains_key(k));
        streams.extend(keep);
        self.watched.generation.fetch_add(1, Ordering::SeqCst);
        drop(streams);
        self.watched.changed.notify_one();
    }

    /// Changes with every change of the streams read; see [`Bus::retain_watched`].
    pub fn watched_generation(&self) -> u64 {
        self.watched.generation.load(Ordering::SeqCst)
    }

    /// Stops reading a flow's events and deletes its stream: the flow is gone.
    pub async fn forget_events(&self, tenant_id: &str, flow_id: &str) -> Result<(), BusError> {
        let stream = channels::events_stream(tenant_id, flow_id);
        let removed = lock(&self.watched.streams).remove(&stream).is_some();
        lock(&self.watched.bad).remove(&stream);
        if removed {
            self.watched.generation.fetch_add(1, Ordering::SeqCst);
            self.watched.changed.notify_one();
        }
        let mut conn = self.conn.clone();
        let _: i64 = conn.del(&stream).await?;
        Ok(())
    }

    /// Waits until the leader has applied every event the flow's pump wrote so far: the group
    /// has been handed the newest entry and acknowledged everything up to it. Returns `false`
    /// when `within` runs out first (no leader reading, say). A stop uses it so that what a
    /// draining pump reported just before it exited counts before anything is failed for it.
    pub async fn wait_events_applied(
        &self,
        tenant_id: &str,
        flow_id: &str,
        within: Duration,
    ) -> Result<bool, BusError> {
        let key = channels::events_stream(tenant_id, flow_id);
        let mut conn = self.conn.clone();
        let exists: bool = conn.exists(&key).await?;
        if !exists {
            return Ok(true);
        }
        let stream: redis::streams::StreamInfoStreamReply = conn.xinfo_stream(&key).await?;
        let Some(mark) = stream_id(&stream.last_generated_id) else {
            return Ok(true);
        };
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let groups: redis::streams::StreamInfoGroupsReply = conn.xinfo_groups(&key).await?;
            let delivered = groups
                .groups
                .iter()
                .find(|g| g.name == GROUP)
                .and_then(|g| stream_id(&g.last_delivered_id))
                .is_some_and(|id| id >= mark);
            if delivered {
                let pending: redis::streams::StreamPendingReply =
                    conn.xpending(&key, GROUP).await?;
                let applied = match pending {
                    redis::streams::StreamPendingReply::Empty => true,
                    redis::streams::StreamPendingReply::Data(d) => {
                        stream_id(&d.start_id).is_some_and(|id| id > mark)
                    }
                };
                if applied {
                    return Ok(true);
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return Ok(false);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// How far the reader has read, as `(since, horizon)` in ms: every event pumps wrote
    /// before `horizon` has been read and applied, and reading has gone on without a gap since
    /// `since`. A pump silent for long before `horizon` is silent indeed, but only silence
    /// after `since` counts: across a gap (Redis away, applying failing, a new term) pumps may
    /// have been unable to write, or their events unread. `(0, 0)` until the reader caught up.
    pub fn read_window(&self) -> (i64, i64) {
        (
            self.watched.resumed.load(Ordering::SeqCst),
            self.watched.horizon.load(Ordering::SeqCst),
        )
    }

    /// Reads pump events for ever, handing `apply` everything one read returns and
    /// acknowledging it once `apply` succeeds. When `apply` fails (the store is away), nothing
    /// is acknowledged and the same entries are read again after a back-off: an event is
    /// dropped only by `apply` itself. Reconnects with back-off when Redis goes away.
    /// `consumer` names this replica in the group; a restarted replica with the same name first
    /// re-reads what it left unacked. An event naming another flow than the stream it came from
    /// is dropped: a pump can write only its own stream, and must not speak for another flow.
    ///
    /// A pump can break its own stream (delete it, or put another type of key in its place),
    /// which fails the one read over every stream. Such a stream costs only its own flow: it is
    /// found by reading the streams one by one, made again if it was merely gone (a few times
    /// a minute at most), and otherwise isolated: left out of every read until the flow's next
    /// start makes it again ([`Bus::watch_events`]), logged once, listed by
    /// [`Bus::bad_streams`], and handed to `isolated` so the flow can be put in `error`.
    pub async fn consume_events<F, Fut, E, B>(&self, consumer: &str, mut apply: F, mut isolated: B)
    where
        F: FnMut(Vec<PumpEvent>) -> Fut,
        Fut: Future<Output = Result<(), E>>,
        E: std::fmt::Display,
        B: FnMut(BadStream),
    {
        let mut backoff = Duration::from_millis(100);
        loop {
            match self.consume_once(consumer, &mut apply, &mut isolated).await {
                Ok(()) => return,
                Err(e) => {
                    tracing::warn!(error = %e, ?backoff, "reading pump events failed; reconnecting");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    async fn consume_once<F, Fut, E, B>(
        &self,
        consumer: &str,
        apply: &mut F,
        isolated: &mut B,
    ) -> Result<(), BusError>
    where
        F: FnMut(Vec<PumpEvent>) -> Fut,
        Fut: Future<Output = Result<(), E>>,
        E: std::fmt::Display,
        B: FnMut(BadStream),
    {
        // A dedicated connection: XREADGROUP BLOCK would stall every other command sharing a
        // multiplexed one. Its id lets `watch_events` unblock it.
        let mut conn = self.client.get_multiplexed_async_connection().await?;
        let id: i64 = redis::cmd("CLIENT")
            .arg("ID")
            .query_async(&mut conn)
            .await?;
        self.watched.reader_client_id.store(id, Ordering::SeqCst);
        // Also when the task is aborted (leadership lost): nobody to unblock any more.
        let _reader = ReaderGone(&self.watched.reader_client_id);
        // Streams whose entries delivered to this consumer before and never acknowledged have
        // been read again ("0"); after that only new entries (">").
        let mut replayed: BTreeSet<String> = BTreeSet::new();
        let mut retry = Duration::from_millis(100);
        // Reading starts after a gap (see `read_window`): the first read that catches up marks
        // where it ends.
        let mut resuming = true;
        // When each stream was last made again after it vanished or lost its group.
        let mut remade = Remade::default();
        self.watched.horizon.store(0, Ordering::SeqCst);
        loop {
            let generation = self.watched.generation.load(Ordering::SeqCst);
            let streams: BTreeMap<String, String> = {
                let all = lock(&self.watched.streams);
                let bad = lock(&self.watched.bad);
                all.iter()
                    .filter(|(k, _)| !bad.contains_key(*k))
                    .map(|(k, f)| (k.clone(), f.clone()))
                    .collect()
            };
            self.watched
                .read_generation
                .store(generation, Ordering::SeqCst);
            if streams.is_empty() {
                tokio::select! {
                    _ = self.watched.changed.notified() => {}
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
                continue;
            }
            replayed.retain(|s| streams.contains_key(s));
            let keys: Vec<&String> = streams.keys().collect();
            let ids: Vec<&str> = keys
                .iter()
                .map(|k| if replayed.contains(*k) { ">" } else { "0" })
                .collect();
            let issued = crate::store::now_ms();
            let opts = StreamReadOptions::default()
                .group(GROUP, consumer)
                .count(READ_BATCH)
                .block(1000);
            let reply: redis::RedisResult<Option<StreamReadReply>> =
                conn.xread_options(&keys, &ids, &opts).await;
            let reply = match reply {
                Ok(r) => r.map(|r| r.keys).unwrap_or_default(),
                // An error Redis answered (not a lost connection) may be one stream's: read
                // them one by one, so that the failing read itself names the stream, however
                // quickly a pump changes its key afterwards.
                Err(e) if e.code().is_some() => {
                    tracing::debug!(error = %e, "reading pump events failed; reading each stream on its own");
                    let one_by_one = ReadOneByOne {
                        streams: &streams,
                        keys: &keys,
                        ids: &ids,
                        consumer,
                        remade: &mut remade,
                    };
                    self.read_one_by_one(&mut conn, one_by_one, isolated)
                        .await?
                }
                Err(e) => return Err(e.into()),
            };
            let mut counts: BTreeMap<String, usize> = BTreeMap::new();
            // Everything read is applied together (one store transaction for what it says about
            // executions), then acknowledged stream by stream.
            let mut events = Vec::new();
            let mut read = Vec::new();
            for key in reply {
                counts.insert(key.key.clone(), key.ids.len());
                let Some(stream_flow) = streams.get(&key.key) else {
                    continue;
                };
                let mut done = Vec::with_capacity(key.ids.len());
                for entry in key.ids {
                    let text: Option<String> = entry.get(channels::EVENT_FIELD);
                    match text.as_deref().map(serde_json::from_str::<PumpEvent>) {
                        Some(Ok(ev)) if ev.flow_id() == stream_flow => events.push(ev),
                        Some(Ok(ev)) => tracing::warn!(
                            flow_id = %stream_flow,
                            claimed = %ev.flow_id(),
                            "ignoring a pump event that names another flow than its stream's"
                        ),
                        Some(Err(e)) => {
                            tracing::warn!(id = %entry.id, error = %e, "ignoring a pump event that does not follow the contract")
                        }
                        None => {
                            tracing::warn!(id = %entry.id, "ignoring a pump event with no `event` field")
                        }
                    }
                    done.push(entry.id);
                }
                read.push((key.key, done));
            }
            if !events.is_empty() {
                if let Err(e) = apply(events).await {
                    tracing::warn!(error = %e, ?retry, "applying pump events failed; reading them again");
                    tokio::time::sleep(retry).await;
                    retry = (retry * 2).min(Duration::from_secs(5));
                    // Unacknowledged, they are still this consumer's: read from "0" again.
                    replayed.clear();
                    resuming = true;
                    continue;
                }
                retry = Duration::from_millis(100);
            }
            for (key, done) in read.into_iter().filter(|(_, d)| !d.is_empty()) {
                let acked: redis::RedisResult<i64> = conn.xack(&key, GROUP, &done).await;
                match acked {
                    Ok(_) => {}
                    // The stream broke since it was read: the next read finds out how.
                    Err(e) if e.code().is_some() => {
                        tracing::debug!(stream = %key, error = %e, "acknowledging pump events failed")
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            let mut caught_up = true;
            for (key, id) in keys.iter().zip(&ids) {
                let short = counts.get(*key).copied().unwrap_or(0) < READ_BATCH;
                if *id == "0" && short {
                    replayed.insert((*key).clone());
                }
                caught_up &= *id == ">" && short;
            }
            if caught_up {
                if resuming {
                    self.watched.resumed.store(issued, Ordering::SeqCst);
                    resuming = false;
                }
                self.watched.horizon.store(issued, Ordering::SeqCst);
            }
        }
    }

    /// Reads each stream of a failed read on its own (without blocking). A stream whose read
    /// fails because it is gone or lost the group is made again, at most [`REMADE_MAX`] times
    /// within [`REMADE_WINDOW`]; past that, or when another type of key holds its name, it is
    /// isolated and handed to `isolated`. Returns what the other streams held.
    async fn read_one_by_one<B: FnMut(BadStream)>(
        &self,
        conn: &mut redis::aio::MultiplexedConnection,
        read: ReadOneByOne<'_>,
        isolated: &mut B,
    ) -> Result<Vec<redis::streams::StreamKey>, BusError> {
        let opts = StreamReadOptions::default()
            .group(GROUP, read.consumer)
            .count(READ_BATCH);
        let mut keys = Vec::new();
        for (key, id) in read.keys.iter().zip(read.ids) {
            let one: redis::RedisResult<Option<StreamReadReply>> =
                conn.xread_options(&[key], &[id], &opts).await;
            let e = match one {
                Ok(r) => {
                    keys.extend(r.map(|r| r.keys).unwrap_or_default());
                    continue;
                }
                Err(e) => e,
            };
            let flow_id = &read.streams[*key];
            let reason = match e.code() {
                Some("NOGROUP") if read.remade.allow(key) => {
                    // Gone, or without the group: Redis lost its data, or the pump deleted it.
                    let mut admin = self.conn.clone();
                    match create_group(&mut admin, key).await {
                        Ok(()) => {
                            if self.remade_log.allow(key) {
                                tracing::warn!(stream = %key, flow_id = %flow_id, "a flow's events stream was gone or had lost its consumer group; made it again");
                            }
                            continue;
                        }
                        // Something else took its name meanwhile.
                        Err(BusError::Command(e)) if e.code() == Some("WRONGTYPE") => {
                            not_a_stream(key, &e)
                        }
                        Err(e) => return Err(e),
                    }
                }
                Some("NOGROUP") => format!(
                    "the flow's events stream `{key}` was deleted, or lost its consumer group, more than {REMADE_MAX} times within {}s",
                    REMADE_WINDOW.as_secs()
                ),
                Some("WRONGTYPE") => not_a_stream(key, &e),
                // Not about one stream (a permission, Redis loading): the whole read fails.
                _ => return Err(e.into()),
            };
            isolated(self.isolate(key, flow_id, reason));
        }
        Ok(keys)
    }

    /// Leaves `stream` out of every read until the flow's next start, and says so.
    fn isolate(&self, stream: &str, flow_id: &str, reason: String) -> BadStream {
        let bad = BadStream {
            stream: stream.to_string(),
            flow_id: flow_id.to_string(),
            reason,
            since_ms: crate::store::now_ms(),
        };
        lock(&self.watched.bad).insert(stream.to_string(), bad.clone());
        // Once per isolation: the stream is not read again before the flow's next start.
        tracing::error!(stream, flow_id, reason = %bad.reason, "stopped reading a flow's events stream; the other flows' events are read as before, the flow goes to `error`, and its next start makes the stream again");
        bad
    }

    /// The events streams left out of the reads, and why (see [`Bus::consume_events`]).
    pub fn bad_streams(&self) -> Vec<BadStream> {
        lock(&self.watched.bad).values().cloned().collect()
    }

    /// Whether `stream` is left out of the reads.
    pub fn is_isolated(&self, stream: &str) -> bool {
        lock(&self.watched.bad).contains_key(stream)
    }
}

/// A flow's events stream the reader stopped reading because it cannot be read.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BadStream {
    pub stream: String,
    pub flow_id: String,
    /// What is wrong with it, naming the stream.
    pub reason: String,
    /// When it was isolated (ms since the epoch).
    pub since_ms: i64,
}

/// What [`Bus::read_one_by_one`] reads.
struct ReadOneByOne<'a> {
    streams: &'a BTreeMap<String, String>,
    keys: &'a [&'a String],
    ids: &'a [&'a str],
    consumer: &'a str,
    remade: &'a mut Remade,
}

/// A stream may be made again this many times within [`REMADE_WINDOW`]; a pump that keeps
/// deleting its own stream gets it isolated instead of failing every read.
const REMADE_MAX: usize = 3;
const REMADE_WINDOW: Duration = Duration::from_secs(60);

/// When each stream was last made again.
#[derive(Default)]
struct Remade(std::collections::HashMap<String, Vec<std::time::Instant>>);

impl Remade {
    /// Whether `stream` may be made again now; if so, it counts.
    fn allow(&mut self, stream: &str) -> bool {
        let now = std::time::Instant::now();
        self.0
            .retain(|_, times| times.last().is_some_and(|t| now - *t < REMADE_WINDOW));
        let times = self.0.entry(stream.to_string()).or_default();
        times.retain(|t| now - *t < REMADE_WINDOW);
        if times.len() >= REMADE_MAX {
            return false;
        }
        times.push(now);
        true
    }
}

fn not_a_stream(stream: &str, e: &redis::RedisError) -> String {
    format!("the flow's events stream `{stream}` holds another type of key than a stream ({e})")
}

/// Deletes a key of another type than a stream at `stream`'s name, so the stream can be made.
async fn remove_foreign_key(
    conn: &mut ConnectionManager,
    stream: &str,
    flow_id: &str,
) -> Result<(), BusError> {
    let kind: String = redis::cmd("TYPE").arg(stream).query_async(conn).await?;
    if kind != "stream" && kind != "none" {
        tracing::warn!(stream, flow_id, kind, "deleting the key of another type that holds a flow's events stream's name, to make the stream again");
        let _: i64 = conn.del(stream).await?;
    }
    Ok(())
}

/// Clears the reader's client id when the reader ends, however it ends.
struct ReaderGone<'a>(&'a AtomicI64);

impl Drop for ReaderGone<'_> {
    fn drop(&mut self) {
        self.0.store(0, Ordering::SeqCst);
    }
}

/// Entries read per stream per call.
const READ_BATCH: usize = 512;

/// Creates the orchestrator's group on a stream (and the stream), from its first entry.
async fn create_group(conn: &mut ConnectionManager, stream: &str) -> Result<(), BusError> {
    let created: redis::RedisResult<()> = conn.xgroup_create_mkstream(stream, GROUP, "0").await;
    match created {
        Err(e) if e.code() != Some("BUSYGROUP") => Err(e.into()),
        _ => Ok(()),
    }
}

/// The event streams the leader reads, by stream key (the value is the flow id). Changing it
/// bumps `generation` and wakes the reader.
#[derive(Default)]
struct Watched {
    streams: Mutex<BTreeMap<String, String>>,
    /// Streams left out of the reads until their flow's next start, by stream key.
    bad: Mutex<BTreeMap<String, BadStream>>,
    generation: AtomicU64,
    /// The generation of the set the reader's current read uses.
    read_generation: AtomicU64,
    /// The reader connection's `CLIENT ID`; 0 while there is none.
    reader_client_id: AtomicI64,
    changed: tokio::sync::Notify,
    /// Every entry added to a watched stream before this time (ms) has been read and applied;
    /// 0 until the reader has caught up once.
    horizon: AtomicI64,
    /// When reading last resumed after a gap; see [`Bus::read_window`].
    resumed: AtomicI64,
}

/// Fails fast while Redis is down: an accepted trigger is in the store already and is re-sent
/// later, so waiting here would only hold up the answer and the re-delivery pass.
fn manager_config() -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        .set_connection_timeout(OP_TIMEOUT / 2)
        .set_response_timeout(OP_TIMEOUT)
        .set_number_of_retries(1)
        .set_max_delay(200)
}

/// The longest any single Redis command may take before it counts as failed.
const OP_TIMEOUT: Duration = Duration::from_secs(2);

/// A Redis URL with its password hidden, for messages and logs.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let creds = &url[scheme + 3..at];
            match creds.find(':') {
                Some(colon) => format!(
                    "{}{}:***{}",
                    &url[..scheme + 3],
                    &creds[..colon],
                    &url[at..]
                ),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

/// A stream entry id (`<ms>-<seq>`) in an order that compares like Redis does; `None` for an
/// empty stream's `0-0`.
fn stream_id(id: &str) -> Option<(u64, u64)> {
    let (ms, seq) = id.split_once('-')?;
    let id = (ms.parse().ok()?, seq.parse().ok()?);
    (id != (0, 0)).then_some(id)
}

fn timed_out(command: &str) -> BusError {
    BusError::Command(redis::RedisError::from((
        redis::ErrorKind::IoError,
        "Redis did not answer in time",
        command.to_string(),
    )))
}

#[cfg(test)]
mod tests {
    #[test]
    fn stream_ids_compare_by_time_then_sequence() {
        assert!(super::stream_id("1700000000000-10") > super::stream_id("1700000000000-9"));
        assert!(super::stream_id("1700000000001-0") > super::stream_id("1700000000000-99"));
        assert_eq!(super::stream_id("0-0"), None);
        assert_eq!(super::stream_id("garbage"), None);
    }

    #[test]
    fn a_stream_is_made_again_a_few_times_a_window_then_no_more() {
        let mut remade = super::Remade::default();
        for _ in 0..super::REMADE_MAX {
            assert!(remade.allow("s1"));
        }
        assert!(!remade.allow("s1"), "a pump that keeps deleting its stream");
        assert!(remade.allow("s2"), "streams count on their own");
    }

    #[test]
    fn passwords_never_appear_in_a_redacted_url() {
        assert_eq!(
            super::redact("redis://pump:s3cret@127.0.0.1:6379/0"),
            "redis://pump:***@127.0.0.1:6379/0"
        );
        assert_eq!(
            super::redact("redis://127.0.0.1:6379"),
            "redis://127.0.0.1:6379"
        );
    }
}

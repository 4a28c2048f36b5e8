//! The trigger bus: Redis pub/sub carries triggers to pumps, and the `pumphouse:events` stream
//! carries pump events back.
//!
//! Pub/sub is only the injection channel. Triggers are durable in the store before they are
//! published, and pump events are read through a consumer group and acknowledged (`XACK`) only
//! after they are applied, so an orchestrator restart re-reads what it had not finished.

use std::future::Future;
use std::time::Duration;

use pumphouse_pump::{channels, PumpEvent, Trigger};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::streams::{StreamReadOptions, StreamReadReply};
use redis::AsyncCommands as _;

/// The consumer group the leading replica reads pump events through.
const GROUP: &str = "orchestrator";

/// Where replicas that do not lead announce the triggers they recorded.
const ACCEPTED_CHANNEL: &str = "pumphouse:accepted";

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
}

impl Bus {
    /// Connects and makes sure the events consumer group exists.
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
        let created: redis::RedisResult<()> = conn
            .xgroup_create_mkstream(channels::EVENTS_STREAM, GROUP, "$")
            .await;
        if let Err(e) = created {
            if e.code() != Some("BUSYGROUP") {
                return Err(BusError::Unreachable(e));
            }
        }
        Ok(Bus { client, conn })
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

    /// Tells the leader that a trigger for `flow_id` was recorded by another replica. Best
    /// effort: the leader also loads unacknowledged triggers from the store every second.
    pub async fn notify_accepted(&self, flow_id: &str) {
        let mut conn = self.conn.clone();
        let publish = conn.publish::<_, _, u64>(ACCEPTED_CHANNEL, flow_id);
        match tokio::time::timeout(OP_TIMEOUT, publish).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                tracing::debug!(flow_id, error = %e, "telling the leader about a trigger failed; it polls the store too")
            }
            Err(_) => tracing::debug!(
                flow_id,
                "telling the leader about a trigger timed out; it polls the store too"
            ),
        }
    }

    /// Calls `apply` with each flow id other replicas recorded triggers for, for ever,
    /// reconnecting with back-off. Meant for the leader.
    pub async fn accepted_notifications<F, Fut>(&self, mut apply: F)
    where
        F: FnMut(String) -> Fut,
        Fut: Future<Output = ()>,
    {
        let mut backoff = Duration::from_millis(100);
        loop {
            let subscribed = async {
                let mut pubsub = self.client.get_async_pubsub().await?;
                pubsub.subscribe(ACCEPTED_CHANNEL).await?;
                Ok::<_, redis::RedisError>(pubsub)
            }
            .await;
            match subscribed {
                Ok(mut pubsub) => {
                    backoff = Duration::from_millis(100);
                    let mut messages = pubsub.on_message();
                    while let Some(msg) = futures_util::StreamExt::next(&mut messages).await {
                        if let Ok(flow_id) = msg.get_payload::<String>() {
                            apply(flow_id).await;
                        }
                    }
                }
                Err(e) => tracing::debug!(error = %e, "subscribing to accepted triggers failed"),
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }

    /// Waits until the leader has applied every pump event written so far: the group has been
    /// handed the newest entry and acknowledged everything up to it. Returns `false` when
    /// `within` runs out first (no leader reading, say). A stop uses it so that what a draining
    /// pump reported just before it exited counts before anything is failed for it.
    pub async fn wait_events_applied(&self, within: Duration) -> Result<bool, BusError> {
        let mut conn = self.conn.clone();
        let stream: redis::streams::StreamInfoStreamReply =
            conn.xinfo_stream(channels::EVENTS_STREAM).await?;
        let Some(mark) = stream_id(&stream.last_generated_id) else {
            return Ok(true);
        };
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let groups: redis::streams::StreamInfoGroupsReply =
                conn.xinfo_groups(channels::EVENTS_STREAM).await?;
            let delivered = groups
                .groups
                .iter()
                .find(|g| g.name == GROUP)
                .and_then(|g| stream_id(&g.last_delivered_id))
                .is_some_and(|id| id >= mark);
            if delivered {
                let pending: redis::streams::StreamPendingReply =
                    conn.xpending(channels::EVENTS_STREAM, GROUP).await?;
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

    /// Reads pump events for ever, calling `apply` for each and acknowledging it after `apply`
    /// returns. Reconnects with back-off when Redis goes away. `consumer` names this replica in
    /// the group; a restarted replica with the same name first re-reads what it left unacked.
    pub async fn consume_events<F, Fut>(&self, consumer: &str, mut apply: F)
    where
        F: FnMut(PumpEvent) -> Fut,
        Fut: Future<Output = ()>,
    {
        let mut backoff = Duration::from_millis(100);
        loop {
            match self.consume_once(consumer, &mut apply).await {
                Ok(()) => return,
                Err(e) => {
                    tracing::warn!(error = %e, ?backoff, "reading pump events failed; reconnecting");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    async fn consume_once<F, Fut>(&self, consumer: &str, apply: &mut F) -> Result<(), BusError>
    where
        F: FnMut(PumpEvent) -> Fut,
        Fut: Future<Output = ()>,
    {
        // A dedicated connection: XREADGROUP BLOCK would stall every other command sharing a
        // multiplexed one.
        let mut conn = self.client.get_multiplexed_async_connection().await?;
        let created: redis::RedisResult<()> = conn
            .xgroup_create_mkstream(channels::EVENTS_STREAM, GROUP, "$")
            .await;
        if let Err(e) = created {
            if e.code() != Some("BUSYGROUP") {
                return Err(e.into());
            }
        }
        // "0" first: entries delivered to this consumer before and never acknowledged.
        let mut cursor = "0".to_string();
        loop {
            let opts = StreamReadOptions::default()
                .group(GROUP, consumer)
                .count(512)
                .block(1000);
            let reply: Option<StreamReadReply> = conn
                .xread_options(&[channels::EVENTS_STREAM], &[&cursor], &opts)
                .await?;
            let entries = reply
                .map(|r| r.keys.into_iter().flat_map(|k| k.ids).collect::<Vec<_>>())
                .unwrap_or_default();
            if entries.is_empty() && cursor == "0" {
                cursor = ">".to_string();
                continue;
            }
            let mut done = Vec::with_capacity(entries.len());
            for entry in entries {
                let text: Option<String> = entry.get(channels::EVENT_FIELD);
                match text.as_deref().map(serde_json::from_str::<PumpEvent>) {
                    Some(Ok(ev)) => apply(ev).await,
                    Some(Err(e)) => {
                        tracing::warn!(id = %entry.id, error = %e, "ignoring a pump event that does not follow the contract")
                    }
                    None => {
                        tracing::warn!(id = %entry.id, "ignoring a pump event with no `event` field")
                    }
                }
                done.push(entry.id);
            }
            if !done.is_empty() {
                let _: i64 = conn.xack(channels::EVENTS_STREAM, GROUP, &done).await?;
            }
        }
    }
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

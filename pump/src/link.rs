//! The pump's Redis connection for commands (events, flow memory, the subscription probe),
//! made again on the next command after any connection-level failure.
//!
//! redis-rs' `ConnectionManager` reconnects only after an I/O error. After a Redis restart the
//! pump's ACL user is gone until the orchestrator creates it again, so the first reconnect is
//! refused with an authentication error, and a `ConnectionManager` then fails every later
//! command for good: the pump kept running, took triggers and could never report them. A link
//! counts a refused sign-in like a dropped connection and signs in again on the next command.

use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::{Cmd, Pipeline, RedisError, RedisFuture, RedisResult, Value};
use tokio::sync::Mutex;

/// A shared, self-repairing connection; clones share it.
#[derive(Clone)]
pub struct Link {
    inner: Arc<Inner>,
}

struct Inner {
    client: redis::Client,
    config: redis::AsyncConnectionConfig,
    /// The connection in use and its generation: a failure on an older one (a command that
    /// was in flight when another caller already replaced it) must not drop the new one.
    current: Mutex<(u64, Option<MultiplexedConnection>)>,
}

impl Link {
    /// A link that connects on its first command. Commands fail after a few seconds instead of
    /// hanging while Redis is away; callers retry.
    pub fn new(client: redis::Client) -> Link {
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Duration::from_secs(1))
            .set_response_timeout(Duration::from_secs(3));
        Link {
            inner: Arc::new(Inner {
                client,
                config,
                current: Mutex::new((0, None)),
            }),
        }
    }

    async fn connection(&self) -> RedisResult<(u64, MultiplexedConnection)> {
        let mut current = self.inner.current.lock().await;
        if let (generation, Some(conn)) = &*current {
            return Ok((*generation, conn.clone()));
        }
        let conn = self
            .inner
            .client
            .get_multiplexed_async_connection_with_config(&self.inner.config)
            .await?;
        current.0 += 1;
        current.1 = Some(conn.clone());
        Ok((current.0, conn))
    }

    /// Drops connection `generation` if `result` says it is broken.
    async fn check<T>(&self, generation: u64, result: &RedisResult<T>) {
        if let Err(e) = result {
            if is_broken(e) {
                let mut current = self.inner.current.lock().await;
                if current.0 == generation {
                    current.1 = None;
                }
            }
        }
    }
}

/// Whether an error means the connection (or the sign-in) is gone, so the command may work
/// on a new one, rather than Redis answering this command with an error.
/// A dropped, refused or timed-out connection is an I/O error; a refused sign-in is among the
/// "unrecoverable" errors (the client's own word for "make a new connection").
pub fn is_broken(e: &RedisError) -> bool {
    e.is_io_error() || e.is_unrecoverable_error()
}

impl ConnectionLike for Link {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(async move {
            let (generation, mut conn) = self.connection().await?;
            let result = conn.req_packed_command(cmd).await;
            self.check(generation, &result).await;
            result
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        Box::pin(async move {
            let (generation, mut conn) = self.connection().await?;
            let result = conn.req_packed_commands(cmd, offset, count).await;
            self.check(generation, &result).await;
            result
        })
    }

    fn get_db(&self) -> i64 {
        self.inner.client.get_connection_info().redis.db
    }
}

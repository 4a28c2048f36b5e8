//! Per-pump Redis ACL users: every pump signs in to Redis as `pump-{flow id}`, a user that may
//! touch only its flow's keys (`TENANT_PREFIX`), its own trigger channel, and append to the
//! events stream, so Redis itself refuses one flow's pump another flow's data.
//!
//! Each new pump gets a new password (256 random bits) that lives only in its `REDIS_URL`. The
//! store keeps the password's SHA-256, which is what `ACL SETUSER` accepts (`#<hex>`), so the
//! leader can create every user again after Redis restarts: ACL changes are not persisted.
//!
//! What a pump may run is an allow-list of command categories minus every command that has no
//! key to check and would show or change what other flows own (`SCAN`, `KEYS`, `FLUSHALL`,
//! `PUBSUB CHANNELS`, scripts, admin commands). The events stream is reachable through a Redis 7
//! selector that allows `XADD` and nothing else, so a pump can report but never read what
//! other pumps reported.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use pumphouse_pump::channels;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use crate::token;

/// The prefix of every pump user's name; the rest is the flow id.
const USER_PREFIX: &str = "pump-";

#[derive(Debug, thiserror::Error)]
pub enum PumpUsersError {
    #[error("the Redis URL for pumps `{url}` cannot carry a pump's own user: it must be redis://HOST[:PORT][/DB] or rediss://...; fix --pump-redis-url (or --redis)")]
    PumpUrl { url: String },
    #[error("cannot reach Redis to manage pump users: {0}; check --redis and that redis-server is running")]
    Unreachable(#[source] redis::RedisError),
    #[error("the orchestrator's Redis user may not manage ACL users ({0}); every pump gets its own Redis user, so --redis must sign in as a user allowed the `acl`, `info` and `client` commands (an admin)")]
    NotAdmin(#[source] redis::RedisError),
    #[error("Redis refused to {action} the pump user of flow {flow_id}: {source}; check that the orchestrator's Redis user may run ACL and CLIENT commands")]
    Command {
        action: &'static str,
        flow_id: String,
        #[source]
        source: redis::RedisError,
    },
}

impl PumpUsersError {
    /// Whether Redis did not answer, rather than refused: the change can be made later.
    pub fn is_unreachable(&self) -> bool {
        match self {
            PumpUsersError::Unreachable(_) => true,
            PumpUsersError::Command { source, .. } => {
                source.is_io_error()
                    || source.is_timeout()
                    || source.is_connection_dropped()
                    || source.is_connection_refusal()
            }
            _ => false,
        }
    }
}

/// A new pump's password and the hash the store and Redis keep.
pub struct Credential {
    /// Only ever put into the pump's `REDIS_URL`; never logged or stored.
    pub password: String,
    /// Hex SHA-256 of the password.
    pub hash: String,
}

impl Credential {
    pub fn issue() -> Credential {
        // URL-safe base64 of 32 random bytes: fits a URL's userinfo without escaping.
        let password = token::generate();
        let hash = token::hash(&password);
        Credential { password, hash }
    }
}

/// Creates, switches and deletes pump users through an admin connection.
#[derive(Clone)]
pub struct PumpUsers {
    conn: ConnectionManager,
    /// `redis://` or `rediss://`.
    scheme: String,
    /// What follows the userinfo: `host:port/db?...`.
    location: String,
    /// A change did not reach Redis: the users need a sync once it answers again.
    stale: Arc<AtomicBool>,
}

impl PumpUsers {
    /// Connects with the orchestrator's URL (`admin_url`) and checks it may manage users.
    /// `pump_url` is how pumps reach Redis; their own user and password replace its userinfo.
    /// A `default` user that signs in without a password makes every pump user pointless, so
    /// that gets a loud warning.
    ///
    /// # Errors
    /// A `pump_url` that cannot carry credentials, an unreachable Redis, or an orchestrator
    /// user that may not run ACL commands.
    pub async fn connect(admin_url: &str, pump_url: &str) -> Result<PumpUsers, PumpUsersError> {
        let (scheme, location) = split_url(pump_url).ok_or_else(|| PumpUsersError::PumpUrl {
            url: crate::bus::redact(pump_url),
        })?;
        let client = redis::Client::open(admin_url).map_err(PumpUsersError::Unreachable)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(OP_TIMEOUT / 2)
            .set_response_timeout(OP_TIMEOUT)
            .set_number_of_retries(1)
            .set_max_delay(200);
        let conn = ConnectionManager::new_with_config(client, config)
            .await
            .map_err(PumpUsersError::Unreachable)?;
        let users = PumpUsers {
            conn,
            scheme: scheme.to_owned(),
            location: location.to_owned(),
            stale: Arc::new(AtomicBool::new(false)),
        };
        let list: Vec<String> = redis::cmd("ACL")
            .arg("LIST")
            .query_async(&mut users.conn.clone())
            .await
            .map_err(|e| match e.code() {
                Some("NOPERM") => PumpUsersError::NotAdmin(e),
                _ => PumpUsersError::Unreachable(e),
            })?;
        if default_user_is_open(&list) {
            tracing::warn!(
                "SECURITY: Redis lets anyone sign in as its `default` user without a password, so per-pump Redis users isolate nothing: a pump can drop its credentials and read every flow's data. Give the default user a password (`requirepass` in redis.conf, or `user default on >PASSWORD ~* &* +@all` in an ACL file) and put it in --redis (redis://default:PASSWORD@HOST:PORT)"
            );
        }
        Ok(users)
    }

    /// The pump user's name for a flow.
    pub fn user_name(flow_id: &str) -> String {
        format!("{USER_PREFIX}{flow_id}")
    }

    /// The `REDIS_URL` a pump of `flow_id` holding `password` gets.
    pub fn pump_url(&self, flow_id: &str, password: &str) -> String {
        format!(
            "{}://{}:{password}@{}",
            self.scheme,
            Self::user_name(flow_id),
            self.location
        )
    }

    /// Creates or replaces the flow's user: signs in with any password whose hash is in
    /// `hashes`, and only while `enabled`. Connections already signed in stay (Redis keeps
    /// them across `ACL SETUSER`, even when their password is gone or the user is off), so a
    /// running pump is not disturbed; [`PumpUsers::close_connections`] closes them.
    pub async fn apply(
        &self,
        tenant_id: &str,
        flow_id: &str,
        hashes: &[String],
        enabled: bool,
    ) -> Result<(), PumpUsersError> {
        let mut cmd = redis::cmd("ACL");
        cmd.arg("SETUSER").arg(Self::user_name(flow_id));
        for rule in rules(tenant_id, flow_id, hashes, enabled) {
            cmd.arg(rule);
        }
        self.run(cmd, "set up", flow_id).await
    }

    /// Closes every connection signed in as the flow's user (`CLIENT KILL USER`), whatever
    /// password it signed in with: a password change alone leaves them open. The user must
    /// exist.
    pub async fn close_connections(&self, flow_id: &str) -> Result<(), PumpUsersError> {
        let mut cmd = redis::cmd("CLIENT");
        cmd.arg("KILL").arg("USER").arg(Self::user_name(flow_id));
        self.run(cmd, "close the connections of", flow_id).await
    }

    /// Deletes the flow's user; Redis closes the connections signed in as it. A user that is
    /// not there is fine.
    pub async fn delete(&self, flow_id: &str) -> Result<(), PumpUsersError> {
        let mut cmd = redis::cmd("ACL");
        cmd.arg("DELUSER").arg(Self::user_name(flow_id));
        self.run(cmd, "delete", flow_id).await
    }

    /// The flow ids of every pump user Redis has.
    pub async fn flows_with_users(&self) -> Result<Vec<String>, PumpUsersError> {
        let users: Vec<String> = redis::cmd("ACL")
            .arg("USERS")
            .query_async(&mut self.conn.clone())
            .await
            .map_err(PumpUsersError::Unreachable)?;
        Ok(users
            .into_iter()
            .filter_map(|u| u.strip_prefix(USER_PREFIX).map(str::to_owned))
            .collect())
    }

    /// Names this run of the Redis server: it changes when Redis restarts, and with it every
    /// user the orchestrator created is gone.
    pub async fn server_run(&self) -> Result<String, PumpUsersError> {
        let info: String = redis::cmd("INFO")
            .arg("server")
            .query_async(&mut self.conn.clone())
            .await
            .map_err(PumpUsersError::Unreachable)?;
        Ok(info
            .lines()
            .find_map(|l| l.strip_prefix("run_id:"))
            .unwrap_or_default()
            .trim()
            .to_owned())
    }

    /// Whether a change failed since the last call: the store and Redis may disagree.
    pub fn take_stale(&self) -> bool {
        self.stale.swap(false, Ordering::SeqCst)
    }

    async fn run(
        &self,
        cmd: redis::Cmd,
        action: &'static str,
        flow_id: &str,
    ) -> Result<(), PumpUsersError> {
        let mut conn = self.conn.clone();
        let query = cmd.query_async::<redis::Value>(&mut conn);
        let result = tokio::time::timeout(OP_TIMEOUT, query)
            .await
            .unwrap_or_else(|_| {
                Err(redis::RedisError::from((
                    redis::ErrorKind::IoError,
                    "Redis did not answer in time",
                )))
            });
        result.map(|_| ()).map_err(|source| {
            self.stale.store(true, Ordering::SeqCst);
            PumpUsersError::Command {
                action,
                flow_id: flow_id.to_owned(),
                source,
            }
        })
    }
}

/// The longest one ACL command may take.
const OP_TIMEOUT: Duration = Duration::from_secs(2);

/// The `ACL SETUSER` rules of a flow's pump user, from nothing (`reset`), so applying them
/// again gives the same user whatever it was before.
fn rules(tenant_id: &str, flow_id: &str, hashes: &[String], enabled: bool) -> Vec<String> {
    let mut rules = vec![
        "reset".to_owned(),
        // `reset` allows every channel where acl-pubsub-default says so (Redis 6.2).
        "resetchannels".to_owned(),
        if enabled { "on" } else { "off" }.to_owned(),
    ];
    rules.extend(hashes.iter().map(|h| format!("#{h}")));
    rules.push(format!("~{}*", channels::tenant_prefix(tenant_id, flow_id)));
    rules.push(format!("&{}", channels::trigger(flow_id)));
    rules.extend(
        [
            "-@all",
            // Data commands, checked against the key pattern above.
            "+@read",
            "+@write",
            "+@transaction",
            // No key to check, and they show or change what other flows own.
            "-@dangerous",
            "-@admin",
            "-@scripting",
            "-@pubsub",
            "-scan",
            "-dbsize",
            "-randomkey",
            "-wait",
            // Pub/sub on the one channel above: the triggers, and the subscription probe.
            "+subscribe",
            "+unsubscribe",
            "+publish",
            // What a client sends to connect.
            "+auth",
            "+hello",
            "+ping",
            "+select",
            "+client|setname",
        ]
        .map(str::to_owned),
    );
    rules
}

/// Splits a pump URL into its scheme and what follows the userinfo; `None` for a URL that
/// cannot carry a user (a Unix socket, another scheme).
fn split_url(url: &str) -> Option<(&str, &str)> {
    let (scheme, rest) = url.split_once("://")?;
    if !matches!(scheme, "redis" | "rediss") {
        return None;
    }
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let location = match rest[..authority_end].rfind('@') {
        Some(at) => &rest[at + 1..],
        None => rest,
    };
    (!location.is_empty() && !location.starts_with(['/', '?'])).then_some((scheme, location))
}

/// Whether `ACL LIST` shows a `default` user that is on and needs no password.
fn default_user_is_open(acl_list: &[String]) -> bool {
    acl_list.iter().any(|line| {
        let words: Vec<&str> = line.split_whitespace().collect();
        words.get(1) == Some(&"default") && words.contains(&"on") && words.contains(&"nopass")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pump_url_keeps_host_and_database_and_carries_only_the_pumps_user() {
        let users = |url: &str| {
            split_url(url).map(|(s, l)| format!("{s}://{}:pw@{l}", PumpUsers::user_name("f1")))
        };
        assert_eq!(
            users("redis://default:admin@redis:6379/2").as_deref(),
            Some("redis://pump-f1:pw@redis:6379/2")
        );
        assert_eq!(
            users("rediss://127.0.0.1:6380").as_deref(),
            Some("rediss://pump-f1:pw@127.0.0.1:6380")
        );
        assert_eq!(
            users("redis://:p@ss@h:1/0?protocol=resp3").as_deref(),
            Some("redis://pump-f1:pw@h:1/0?protocol=resp3")
        );
        assert_eq!(users("redis+unix:///run/redis.sock"), None);
        assert_eq!(users("unix:///run/redis.sock"), None);
        assert_eq!(users("redis:///0"), None);
    }

    #[test]
    fn rules_limit_keys_and_channels_to_the_flow() {
        let r = rules("acme", "f1", &["ab".into(), "cd".into()], false);
        assert_eq!(&r[..3], ["reset", "resetchannels", "off"]);
        assert!(r.contains(&"#ab".to_owned()) && r.contains(&"#cd".to_owned()));
        assert!(r.contains(&"~tenant:acme:flow:f1:*".to_owned()));
        assert!(r.contains(&"&trigger:f1".to_owned()));
        assert!(
            !r.iter().any(|x| x.starts_with('(')),
            "no selector: the events stream is under the flow's prefix"
        );
        assert!(
            !r.iter().any(|x| x.starts_with('>')),
            "no plaintext password"
        );
    }

    #[test]
    fn an_open_default_user_is_noticed() {
        let open = ["user default on nopass sanitize-payload ~* &* +@all".to_owned()];
        let closed = ["user default on #5e88 ~* &* +@all".to_owned()];
        let off = ["user default off nopass ~* &* +@all".to_owned()];
        assert!(default_user_is_open(&open));
        assert!(!default_user_is_open(&closed));
        assert!(!default_user_is_open(&off));
    }
}

//! The Redis users of the executors (CONTRACT.md §8). Where Redis has ACL selectors
//! (7.0 or newer) and the manager may run `ACL SETUSER`, each executor it spawns
//! connects as its own user, `{prefix}engine-exec-{strategy_id}`, with a random
//! password: it may subscribe to market data (`live_data:*`) and its own channels and
//! publish only its own status and metrics, and run nothing else but what a client
//! needs to connect. Otherwise (or with `--redis-acl off`) every executor gets the
//! manager's own URL, as before; the manager says so once in its log and in its lease
//! row (`enginectl doctor`).
//!
//! One task, [`ExecutorUsers`], makes every ACL change, in the order the supervisors
//! asked, so that the release of one executor's user and the issue of its successor's
//! never cross. What must outlive the manager is on disk: `{state_dir}/redis-users/{id}`
//! holds the SHA-256 digest of the user's password (the password itself is only in the
//! executor's environment), written before the spawn and removed when the executor is
//! gone. So an adopted executor keeps its user; a user Redis lost (a restart without
//! an ACL file) is made again from its digest within [`RECONCILE_INTERVAL`]; and the
//! users of executors that died while no manager watched are deleted at start-up.

use crate::tasks;
use engine_protocol::glob_escape;
use redis::aio::MultiplexedConnection;
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// How often users Redis lost are made again and deletions that failed are retried.
pub const RECONCILE_INTERVAL: Duration = Duration::from_secs(5);
/// The directory under the state dir with one digest file per executor user.
pub const USERS_DIR: &str = "redis-users";
/// What a user's name starts with, after the namespace prefix.
pub const USER_NAME_STEM: &str = "engine-exec-";

/// `--redis-acl`: whether the manager tries per-executor Redis users.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RedisAclChoice {
    /// A user per executor where Redis allows it, else the manager's URL.
    Auto,
    /// Every executor gets the manager's URL.
    Off,
}

/// The name of the Redis user of `strategy_id`'s executor.
pub fn user_name(prefix: &str, strategy_id: Uuid) -> String {
    format!("{prefix}{USER_NAME_STEM}{strategy_id}")
}

/// The `ACL SETUSER` arguments after the name: the user's rules, from scratch. The
/// root may subscribe to market data and its own channels and run what a client needs
/// to connect; a selector adds `PUBLISH`, to its own status and metrics only.
pub fn user_rules(prefix: &str, strategy_id: Uuid, password_digest: &str) -> Vec<String> {
    let channels = engine_protocol::Channels::new(prefix);
    let own = [
        glob_escape(&channels.status(strategy_id)),
        glob_escape(&channels.metrics(strategy_id)),
    ];
    let mut rules: Vec<String> = vec![
        "reset".into(),
        "on".into(),
        format!("#{password_digest}"),
        "resetchannels".into(),
        format!("&{}*", glob_escape(&channels.live_data(""))),
    ];
    rules.extend(own.iter().map(|c| format!("&{c}")));
    rules.extend(
        [
            "-@all",
            "+subscribe",
            "+psubscribe",
            "+unsubscribe",
            "+punsubscribe",
            "+ping",
            "+auth",
            "+hello",
            "+select",
            "+client|setname",
            "+quit",
        ]
        .map(String::from),
    );
    rules.push(format!(
        "(+publish resetchannels {})",
        own.iter()
            .map(|c| format!("&{c}"))
            .collect::<Vec<_>>()
            .join(" ")
    ));
    rules
}

/// The manager's URL with the user and password of an executor instead of its own:
/// `redis://` and `rediss://` in the authority, `redis+unix://` and `unix://` in the
/// `user` and `pass` query parameters.
pub fn executor_url(shared_url: &str, user: &str, password: &str) -> Result<String, String> {
    let mut url =
        url::Url::parse(shared_url).map_err(|e| format!("the URL does not parse: {e}"))?;
    match url.scheme() {
        "redis" | "rediss" | "valkey" | "valkeys" => {
            url.set_username(user)
                .and_then(|()| url.set_password(Some(password)))
                .map_err(|()| "the URL has no host to put a user in".to_string())?;
        }
        "redis+unix" | "unix" | "valkey+unix" => {
            let kept: Vec<(String, String)> = url
                .query_pairs()
                .filter(|(k, _)| k != "user" && k != "pass")
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect();
            url.query_pairs_mut()
                .clear()
                .extend_pairs(kept)
                .append_pair("user", user)
                .append_pair("pass", password);
        }
        other => return Err(format!("scheme '{other}' is not one the engine knows")),
    }
    Ok(url.to_string())
}

/// The SHA-256 of a password, in hex: what `ACL SETUSER … #<digest>` takes.
fn digest(password: &str) -> String {
    format!("{:x}", Sha256::digest(password.as_bytes()))
}

/// A fresh password: 32 random bytes in hex.
fn new_password() -> String {
    let bytes: [u8; 32] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A Redis error that says nothing about rights: the server was not reached or did
/// not answer (no error code from the server).
fn unreachable(err: &redis::RedisError) -> bool {
    err.code().is_none()
}

/// What the supervisors and the start-up ask of the task.
#[derive(Debug)]
enum Message {
    /// The Redis URL a new executor of this strategy gets.
    Issue {
        strategy_id: Uuid,
        reply: oneshot::Sender<String>,
    },
    /// This strategy's executor is gone: delete its user.
    Release { strategy_id: Uuid },
    /// At start-up, before any supervisor runs: the strategies whose executors were
    /// found alive (adopted). Every other user left on disk is deleted.
    Adopted { live: HashSet<Uuid> },
}

/// The supervisors' end of [`ExecutorUsers`].
#[derive(Debug, Clone)]
pub struct ExecutorUsersHandle {
    tx: mpsc::UnboundedSender<Message>,
    shared_url: Arc<str>,
}

impl ExecutorUsersHandle {
    /// The Redis URL for a new executor of `strategy_id`: its own user's, or the
    /// manager's when per-executor users are off or not possible (or the task has
    /// ended, the manager stopping).
    pub async fn issue(&self, strategy_id: Uuid) -> String {
        let (reply, answer) = oneshot::channel();
        if self.tx.send(Message::Issue { strategy_id, reply }).is_err() {
            return self.shared_url.to_string();
        }
        answer.await.unwrap_or_else(|_| self.shared_url.to_string())
    }

    /// `strategy_id`'s executor exited (or was found gone): its user goes.
    pub fn release(&self, strategy_id: Uuid) {
        let _ = self.tx.send(Message::Release { strategy_id });
    }

    /// At start-up, before the supervisors: the strategies with a live executor.
    pub fn adopted(&self, live: HashSet<Uuid>) {
        let _ = self.tx.send(Message::Adopted { live });
    }
}

/// Why executors cannot have users of their own (for now, or here).
#[derive(Debug)]
enum Unavailable {
    /// Redis did not answer: tried again later.
    Unreachable(redis::RedisError),
    /// Redis answered no: said once, and executors get the manager's URL.
    Refused(String),
}

/// Whether executors get users of their own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Not known yet: Redis has not answered. Executors get the manager's URL.
    Unchecked,
    PerExecutor,
    /// Off, or not possible here (said once).
    Shared,
}

/// The one task that makes the executors' Redis users; see the module documentation.
pub struct ExecutorUsers {
    client: redis::Client,
    connection: Option<MultiplexedConnection>,
    shared_url: Arc<str>,
    prefix: String,
    dir: PathBuf,
    choice: RedisAclChoice,
    pool: PgPool,
    inbox: mpsc::UnboundedReceiver<Message>,
    mode: Mode,
    /// The users this manager keeps, by strategy: their password digests (the files).
    users: HashMap<Uuid, String>,
    /// Users to delete once Redis answers, with the digest they were made with.
    doomed: HashMap<Uuid, String>,
    /// Users issued while Redis was away: made (or given their new password) by the
    /// next reconcile, whether Redis has a user of that name or not.
    unsynced: HashSet<Uuid>,
    /// Whether the unreachable Redis was logged (once per outage).
    outage_logged: bool,
}

/// What [`ExecutorUsers::new`] needs.
pub struct UsersConfig {
    pub client: redis::Client,
    pub shared_url: String,
    pub prefix: String,
    pub state_dir: PathBuf,
    pub choice: RedisAclChoice,
    pub pool: PgPool,
}

impl ExecutorUsers {
    pub fn new(config: UsersConfig) -> (ExecutorUsers, ExecutorUsersHandle) {
        let (tx, inbox) = mpsc::unbounded_channel();
        let shared_url: Arc<str> = config.shared_url.into();
        let task = ExecutorUsers {
            client: config.client,
            connection: None,
            shared_url: shared_url.clone(),
            prefix: config.prefix,
            dir: config.state_dir.join(USERS_DIR),
            choice: config.choice,
            pool: config.pool,
            inbox,
            mode: Mode::Unchecked,
            users: HashMap::new(),
            doomed: HashMap::new(),
            unsynced: HashSet::new(),
            outage_logged: false,
        };
        (task, ExecutorUsersHandle { tx, shared_url })
    }

    /// Until `cancel` (the manager's last step, after the supervisors).
    pub async fn run(mut self, cancel: CancellationToken) {
        let dir = self.dir.clone();
        self.users = tasks::blocking(move || read_users(&dir)).await;
        self.check().await;
        let mut tick = tokio::time::interval(RECONCILE_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                message = self.inbox.recv() => match message {
                    Some(message) => self.handle(message).await,
                    None => {
                        cancel.cancelled().await;
                        return;
                    }
                },
                _ = tick.tick() => self.reconcile().await,
            }
        }
    }

    async fn handle(&mut self, message: Message) {
        match message {
            Message::Issue { strategy_id, reply } => {
                let url = self.issue(strategy_id).await;
                let _ = reply.send(url);
            }
            Message::Release { strategy_id } => self.release(strategy_id).await,
            Message::Adopted { live } => {
                let gone: Vec<Uuid> = self
                    .users
                    .keys()
                    .filter(|id| !live.contains(id))
                    .copied()
                    .collect();
                if !gone.is_empty() {
                    tracing::info!(
                        users = gone.len(),
                        "deleting the redis users of executors that ended while no manager watched"
                    );
                }
                for id in gone {
                    self.release(id).await;
                }
            }
        }
    }

    /// The URL for a new executor of `strategy_id`.
    async fn issue(&mut self, strategy_id: Uuid) -> String {
        if self.mode == Mode::Unchecked && !self.outage_logged {
            self.check().await;
        }
        if self.mode != Mode::PerExecutor {
            return self.shared_url.to_string();
        }
        let name = user_name(&self.prefix, strategy_id);
        let password = new_password();
        let url = match executor_url(&self.shared_url, &name, &password) {
            Ok(url) => url,
            Err(why) => {
                tracing::warn!(%strategy_id, "cannot give the executor a redis user of its own ({why}); it gets the manager's redis URL");
                return self.shared_url.to_string();
            }
        };
        let digest = digest(&password);
        let path = self.dir.join(strategy_id.to_string());
        let written = {
            let (dir, digest) = (self.dir.clone(), digest.clone());
            tasks::blocking(move || write_user(&dir, &path, &digest)).await
        };
        if let Err(err) = written {
            tracing::warn!(%strategy_id, error = %err, "cannot record the executor's redis user in the state dir; it gets the manager's redis URL");
            return self.shared_url.to_string();
        }
        self.doomed.remove(&strategy_id);
        self.users.insert(strategy_id, digest.clone());
        // While Redis is away the user is made by the next reconcile; the executor
        // retries its connections until then.
        self.unsynced.insert(strategy_id);
        if self.connection.is_some() || !self.outage_logged {
            match self.set_user(strategy_id, &digest).await {
                Ok(()) => {
                    self.unsynced.remove(&strategy_id);
                }
                Err(err) => self.note_failure("create the executor's redis user", &err),
            }
        }
        url
    }

    async fn release(&mut self, strategy_id: Uuid) {
        let Some(digest) = self.users.remove(&strategy_id) else {
            return;
        };
        self.unsynced.remove(&strategy_id);
        let path = self.dir.join(strategy_id.to_string());
        if let Err(err) = tasks::blocking(move || std::fs::remove_file(path)).await {
            if err.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(%strategy_id, error = %err, "cannot remove the record of the executor's redis user");
            }
        }
        self.doomed.insert(strategy_id, digest);
        if let Err(err) = self.delete_users().await {
            self.note_failure("delete the executor's redis user", &err);
        }
    }

    /// Delete the users in `doomed` that still have the password they were made with:
    /// one with another is no longer this manager's (the strategy moved to another
    /// node, whose manager made it anew).
    async fn delete_users(&mut self) -> redis::RedisResult<()> {
        if self.mode == Mode::Shared {
            return Ok(());
        }
        let doomed: Vec<(Uuid, String)> = self
            .doomed
            .iter()
            .map(|(id, digest)| (*id, digest.clone()))
            .collect();
        for (id, digest) in doomed {
            let name = user_name(&self.prefix, id);
            let user: Option<HashMap<String, redis::Value>> = self
                .query(redis::cmd("ACL").arg("GETUSER").arg(&name))
                .await?;
            let ours = user.is_some_and(|user| {
                user.get("passwords")
                    .and_then(|p| redis::from_redis_value_ref::<Vec<String>>(p).ok())
                    .is_some_and(|passwords| passwords.contains(&digest))
            });
            if ours {
                let _: i64 = self
                    .query(redis::cmd("ACL").arg("DELUSER").arg(&name))
                    .await?;
                tracing::debug!(user = %name, "redis user deleted");
            }
            self.doomed.remove(&id);
        }
        Ok(())
    }

    async fn set_user(&mut self, strategy_id: Uuid, digest: &str) -> redis::RedisResult<()> {
        let mut cmd = redis::cmd("ACL");
        cmd.arg("SETUSER")
            .arg(user_name(&self.prefix, strategy_id))
            .arg(user_rules(&self.prefix, strategy_id, digest));
        self.query::<()>(&cmd).await
    }

    /// Every [`RECONCILE_INTERVAL`]: check what was not checked, delete what could not
    /// be deleted, and make again the users Redis lost.
    async fn reconcile(&mut self) {
        if self.mode == Mode::Unchecked {
            self.check().await;
        }
        if self.mode != Mode::PerExecutor {
            return;
        }
        if let Err(err) = self.delete_users().await {
            self.note_failure("delete executors' redis users", &err);
            return;
        }
        let existing: HashSet<String> = match self.query(redis::cmd("ACL").arg("USERS")).await {
            Ok(names) => names,
            Err(err) => {
                self.note_failure("list the redis users", &err);
                return;
            }
        };
        let missing: Vec<(Uuid, String)> = self
            .users
            .iter()
            .filter(|(id, _)| {
                self.unsynced.contains(id) || !existing.contains(&user_name(&self.prefix, **id))
            })
            .map(|(id, digest)| (*id, digest.clone()))
            .collect();
        if !missing.is_empty() {
            tracing::info!(
                users = missing.len(),
                "making the redis users of running executors that redis lost or did not get"
            );
        }
        for (id, digest) in missing {
            if let Err(err) = self.set_user(id, &digest).await {
                self.note_failure("create an executor's redis user", &err);
                return;
            }
            self.unsynced.remove(&id);
        }
        self.redis_answered();
    }

    /// Find out whether executors can have users of their own, and say what was found.
    async fn check(&mut self) {
        if self.choice == RedisAclChoice::Off {
            self.settle(Mode::Shared, "shared URL: turned off by --redis-acl off")
                .await;
            return;
        }
        match self.probe().await {
            Ok(()) => self.settle(Mode::PerExecutor, "per-executor users").await,
            Err(Unavailable::Unreachable(err)) => {
                if !self.outage_logged {
                    tracing::warn!(error = %err, "redis is unreachable: whether executors can have redis users of their own is not known yet; until it answers, they get the manager's redis URL");
                    self.outage_logged = true;
                }
            }
            Err(Unavailable::Refused(why)) => {
                self.settle(Mode::Shared, &format!("shared URL: {why}"))
                    .await;
            }
        }
    }

    /// Can this Redis, for this manager's user, make an executor's user? Tried with the
    /// very rules an executor's user gets, on a user of no strategy, deleted at once.
    async fn probe(&mut self) -> Result<(), Unavailable> {
        let refused = |err: redis::RedisError| {
            if unreachable(&err) {
                Unavailable::Unreachable(err)
            } else {
                let said = match (err.code(), err.detail()) {
                    (Some(code), Some(detail)) => format!("{code} {detail}"),
                    _ => crate::error_chain(&err),
                };
                Unavailable::Refused(format!(
                    "the manager's redis user cannot create ACL users ({said})"
                ))
            }
        };
        // A user who may not read INFO may still manage users: the SETUSER decides.
        match self.query::<String>(redis::cmd("INFO").arg("server")).await {
            Ok(info) => {
                if let Some((major, minor)) = redis_version(&info).filter(|v| v.0 < 7) {
                    return Err(Unavailable::Refused(format!(
                        "Redis {major}.{minor} has no ACL selectors; per-executor users need Redis 7.0 or newer"
                    )));
                }
            }
            Err(err) if unreachable(&err) => return Err(Unavailable::Unreachable(err)),
            Err(_) => {}
        }
        let probe = Uuid::nil();
        let name = user_name(&self.prefix, probe);
        let mut set = redis::cmd("ACL");
        set.arg("SETUSER")
            .arg(&name)
            .arg(user_rules(&self.prefix, probe, &digest(&new_password())))
            .arg("off");
        self.query::<()>(&set).await.map_err(refused)?;
        let deleted: redis::RedisResult<i64> = self
            .query(redis::cmd("ACL").arg("DELUSER").arg(&name))
            .await;
        deleted.map_err(refused)?;
        Ok(())
    }

    async fn settle(&mut self, mode: Mode, said: &str) {
        self.mode = mode;
        self.outage_logged = false;
        match mode {
            Mode::PerExecutor => tracing::info!("redis: each executor connects as a redis user of its own"),
            _ => tracing::warn!("redis: executors get the manager's redis URL ({said}); one strategy's code could publish on any channel"),
        }
        if mode == Mode::Shared {
            if !self.users.is_empty() {
                tracing::warn!(
                    users = self.users.len(),
                    "redis users of executors recorded by an earlier manager are kept: this one cannot delete them"
                );
            }
            self.doomed.clear();
        }
        if let Err(err) = engine_store::lease::record_redis_acl(&self.pool, said).await {
            tracing::warn!(error = %err, "cannot record the executors' redis credentials in the lease row");
        }
    }

    /// Redis answered after an outage: say so once.
    fn redis_answered(&mut self) {
        if self.outage_logged {
            tracing::info!("redis answers again; executors' redis users are in place");
            self.outage_logged = false;
        }
    }

    fn note_failure(&mut self, what: &str, err: &redis::RedisError) {
        if unreachable(err) {
            self.connection = None;
            if !self.outage_logged {
                tracing::warn!(error = %err, "cannot {what}: redis is unreachable; retried every {RECONCILE_INTERVAL:?}");
                self.outage_logged = true;
            }
        } else {
            tracing::warn!(error = %err, "cannot {what}; retried every {RECONCILE_INTERVAL:?}");
        }
    }

    /// One command on the task's connection, (re)connecting first when needed.
    async fn query<T: redis::FromRedisValue>(&mut self, cmd: &redis::Cmd) -> redis::RedisResult<T> {
        let connection = match &mut self.connection {
            Some(connection) => connection,
            None => {
                let connection = self
                    .client
                    .get_multiplexed_async_connection_with_config(
                        &crate::publisher::connection_config(),
                    )
                    .await?;
                self.connection.insert(connection)
            }
        };
        let result = cmd.query_async(connection).await;
        if let Err(err) = &result {
            if unreachable(err) {
                self.connection = None;
            }
        }
        result
    }
}

/// `redis_version:7.0.15` of `INFO server`, as (major, minor).
fn redis_version(info: &str) -> Option<(u32, u32)> {
    let line = info
        .lines()
        .find_map(|l| l.trim().strip_prefix("redis_version:"))?;
    let mut parts = line.split('.');
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next().and_then(|m| m.parse().ok()).unwrap_or(0);
    Some((major, minor))
}

/// The users recorded in `dir`: file name (a strategy id) → digest. Anything else
/// there is ignored.
fn read_users(dir: &Path) -> HashMap<Uuid, String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return HashMap::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let id: Uuid = entry.file_name().to_str()?.parse().ok()?;
            let digest = std::fs::read_to_string(entry.path()).ok()?;
            let digest = digest.trim();
            (digest.len() == 64 && digest.bytes().all(|b| b.is_ascii_hexdigit()))
                .then(|| (id, digest.to_string()))
        })
        .collect()
}

/// Record a user's digest in `dir` (made private to the manager's user if new).
fn write_user(dir: &Path, path: &Path, digest: &str) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    std::io::Write::write_all(&mut file, format!("{digest}\n").as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_executor_url_carries_its_user_and_keeps_the_rest() {
        assert_eq!(
            executor_url("redis://:old@10.0.0.1:6380/2", "t1:engine-exec-x", "pw").unwrap(),
            "redis://t1%3Aengine-exec-x:pw@10.0.0.1:6380/2"
        );
        assert_eq!(
            executor_url("rediss://manager:old@redis.example", "u", "pw").unwrap(),
            "rediss://u:pw@redis.example"
        );
        assert_eq!(
            executor_url("rediss://:old@127.0.0.1:7000/0#insecure", "u", "pw").unwrap(),
            "rediss://u:pw@127.0.0.1:7000/0#insecure"
        );
        assert_eq!(
            executor_url("redis+unix:///run/redis.sock?db=1&pass=old", "u", "pw").unwrap(),
            "redis+unix:///run/redis.sock?db=1&user=u&pass=pw"
        );
        let err = executor_url("memcache://x", "u", "pw").unwrap_err();
        assert!(err.contains("memcache"), "{err}");
    }

    #[test]
    fn the_rules_allow_publishing_only_on_the_executors_own_channels() {
        let id = Uuid::nil();
        let rules = user_rules("t[1]:", id, "ab");
        assert_eq!(rules[..3], ["reset", "on", "#ab"]);
        assert!(
            rules.contains(&"&t\\[1\\]:live_data:*".to_string()),
            "{rules:?}"
        );
        assert!(rules.contains(&"-@all".to_string()));
        assert!(!rules.iter().any(|r| r == "+publish" || r.contains("@all ")));
        let selector = rules.last().unwrap();
        assert_eq!(
            selector,
            &format!("(+publish resetchannels &t\\[1\\]:strategy:status:{id} &t\\[1\\]:strategy:metrics:{id})")
        );
    }

    #[test]
    fn the_version_is_read_from_info() {
        assert_eq!(
            redis_version("# Server\r\nredis_version:7.0.15\r\nredis_mode:standalone\r\n"),
            Some((7, 0))
        );
        assert_eq!(redis_version("redis_version:6.2.1"), Some((6, 2)));
        assert_eq!(redis_version("nothing"), None);
    }

    #[test]
    fn a_password_is_fresh_and_its_digest_is_sha256_hex() {
        assert_ne!(new_password(), new_password());
        assert_eq!(
            digest("secretpw"),
            "773d8f92f07dec1e40c76ff36e0078dd0cff6e910186cf3a36d6940f9c9cd9bf"
        );
    }
}

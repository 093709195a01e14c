//! Redis Streams provider for `eventing`, on the `redis` crate (redis-rs):
//! `redis://`, `rediss://` (feature `rustls`) and `redis+sentinel://` URLs.
//!
//! ```no_run
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> eventing::Result<()> {
//! use eventing_redis as _; // links the `redis://` factory
//! let manager = eventing::EventManager::builder().url("redis://127.0.0.1:6379").build().await?;
//! manager.start().await?;
//! manager.shutdown().await?;
//! # Ok(()) }
//! ```
//!
//! # The client
//!
//! redis-rs (`redis` 1.x with `tokio-comp`) rather than `fred`: it is the client most
//! Rust users of Redis already have, its multiplexed connection pipelines the
//! concurrent sends and acks of one process over one socket, it has Sentinel
//! support (`SentinelClient`) and rustls, and its raw `Cmd`/`Value` API lets the
//! provider read stream replies binary-safe without a typed layer in between.
//! `fred` has more built in (its own reconnect policies, pools), which this
//! provider does not need: a lost connection ends the consumer's stream and the
//! runtime resubscribes, and sends re-connect with the runtime's backoff.
//!
//! # Mapping
//!
//! | eventing | Redis | why |
//! |---|---|---|
//! | event `E` | stream key `E` (`<prefix>E` with `?prefix=`) | a stream per event; the name is the key, no mapping needed (keys are binary-safe) |
//! | `send_event` | `XADD E * <header> <value> ... body <bytes>` (about once per 1,024 sends instead a Lua script that first checks the bound) | headers and body as fields, binary-safe ([`fields`]) |
//! | stream bound | `?maxlen=` (1,000,000): a send to a stream holding that many entries waits for room, then fails with `Unavailable`. A check that passes leases the sender a sixteenth of the room it saw (at most 1,024 plain `XADD`s): one sending process stays within the bound; with several, each may overrun it by its lease at most | the provider never trims an entry some group has not acknowledged: `XTRIM MINID` to the oldest entry any group still needs (first pending, or last delivered), once a second and when full |
//! | queue `E::L` (competing, singleton) | consumer group `E::L` on `E`, created with `$` and `MKSTREAM` at declare | members of a group compete; created at start, so nothing sent after `start()` is missed |
//! | per-process queue `E::L-server` | a group of its own, listed in `eventing:per-process:E`, with a liveness key `eventing:alive:<queue>` (60 s TTL) its consumer refreshes | destroyed when its subscription is cancelled (shutdown); after a crash, once its liveness key expired |
//! | instance | a consumer `<server>-<uuid>` of the group, one per subscription, on a connection of its own (`XREADGROUP ... BLOCK`) | |
//! | prefetch | `COUNT` of each read: at most `prefetch` unsettled entries per instance | |
//! | ack | `XACK` after `on` returned Ok | |
//! | requeue | `XCLAIM ... IDLE <claim_idle> JUSTID`: the entry looks abandoned, the next `XAUTOCLAIM` of any member takes it | Redis has no NACK |
//! | crashed consumer | its pending entries are claimed by a live member (`XAUTOCLAIM`) once idle for `?claim_idle=` (15 s); live consumers keep their in-flight entries fresh (`XCLAIM JUSTID`), so a slow handler is not robbed | |
//! | dead-letter queue `E::L.dlq` | stream `E::L.dlq`; a letter is added and the original acknowledged in one `MULTI` | listing is `XRANGE`; taking one deletes it (`XDEL`) |
//! | replaying onto one queue | `XADD E` with the field `eventing.queue = <queue>`; the other groups ack and skip it | a group cannot be written to alone |
//! | delay queue `E::L.delay.<ms>` (delayed retry stage) | sorted set `E::L.delay.<ms>`, score = when due (the server's clock); the copy is added and the original acknowledged in one script; due copies are moved back into `E` with `eventing.queue = E::L` by the queue's subscriptions (one atomic script: `ZRANGEBYSCORE`, `XADD`, `ZREM`) | Redis has no scheduled delivery; see [Delayed delivery](#delayed-delivery) |
//! | scheduled send of `E` | sorted set `eventing:schedule:E`, moved into `E` (every group) by the subscriptions of any queue of `E` | |
//! | durable event | `XADD` with the server's AOF (`appendfsync always`: on disk before the reply); with `?replicas=N`, `WAIT N` too | see below |
//! | transient event | the same (Redis has no cheaper per-message path); no `WAIT` | |
//!
//! # Durability
//!
//! A send returns once Redis answered the `XADD`. What that promises is the
//! server's configuration: with `appendonly yes` and `appendfsync always` the entry
//! is in the AOF on disk before the answer (what the tests run), with the default
//! `everysec` up to a second of acknowledged sends can be lost in a crash, without
//! AOF everything since the last snapshot. With `?replicas=N` a durable send also
//! runs `WAIT N <wait_timeout>`, again while fewer replicas confirmed (a replica
//! reconnecting after a failover), and fails (`Provider` error,
//! [`RedisError::Replicas`]) if they still have not by the send timeout: the entry
//! is then on the master and may be sent again (a duplicate, never a silent loss).
//! Redis replicates asynchronously: without `replicas`, a failover can lose sends
//! the old master acknowledged and had not passed on yet. Redis 7.0 has no `WAITAOF`, so a
//! replica's confirmation means it has the entry in memory, not on its disk.
//!
//! # Delayed delivery
//!
//! What waits is in Redis, never in the process: a retry copy in its delay
//! queue's sorted set, a scheduled send in its event's schedule, each a member
//! packed by [`fields::pack_waiting`] and scored by the time it is due (taken
//! from the server's clock, so the clocks of senders and consumers do not
//! matter). Every subscription polls the sets of its queue and of its event every
//! [`POLL`] with one script that moves what is due into the stream atomically (a
//! crash never loses or doubles one). A retry copy goes back to the event's
//! stream with the field `eventing.queue` naming its queue, as a replay does: the
//! stream is shared by the event's groups and Redis cannot add an entry for one
//! group alone, and this reuses the read path that already exists (other groups
//! acknowledge and skip it) rather than a second stream per queue that every
//! member would have to read, claim from and trim as well. The cost is one
//! skipped read per other group and retry. Tolerance: a message arrives at most
//! about [`POLL`] after it is due, plus the read. Scheduled sends of an event
//! wait until some process consumes a queue of that event; a delay queue's copies
//! until some process consumes that queue (a per-process queue's die with it).
//! A send that is durable with `?replicas=N` also waits for the replicas.
//!
//! # Faults
//!
//! Sends that fail because the server is unreachable are retried on a fresh
//! connection until the manager's send timeout and then fail with
//! [`Error::Unavailable`]; a retry after a lost answer can store an entry twice. A
//! consumer whose connection fails ends its stream; the runtime declares and
//! subscribes again (a new consumer name), and what the old one held is claimed
//! after `claim_idle`. Handlers must tolerate duplicates (at least once).

pub mod error;
pub mod fields;
pub mod url;

mod consumer;
mod link;
mod scripts;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use eventing::backoff::Backoff;
use eventing::provider::{
    Capabilities, ConnectFuture, ConsumeOptions, Consumer, InFlight, Provider, ProviderConfig,
    Route,
};
use eventing::topology::QueueSpec;
use eventing::{Envelope, Error, Result};
use parking_lot::Mutex;
use redis::Value;
use tokio::time::Instant;
use tracing::Instrument;

pub use error::RedisError;
pub use url::RedisUrl;

use crate::error::{provider, unavailable};
use crate::link::Link;

pub(crate) const NAME: &str = "redis";

/// The longest one command is awaited on the shared connection.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(5);

/// Send retries while the server is unreachable or a stream is full.
const BACKOFF: Backoff =
    Backoff::new(Duration::from_millis(20), Duration::from_secs(1)).jitter(0.5);

/// How much sooner than the send timeout a waiting send gives up (at most a tenth
/// of the timeout).
const GIVE_UP_MARGIN: Duration = Duration::from_millis(100);

/// How often streams this provider sent to are trimmed.
const TRIM_EVERY: Duration = Duration::from_secs(1);

/// How often a subscription moves due retry copies and scheduled sends into its
/// event's stream (the tolerance of delayed delivery).
pub const POLL: Duration = Duration::from_millis(100);

/// The most plain `XADD`s one check of a stream's bound lets a provider make.
pub(crate) const LEASE_MAX: u64 = 1024;

/// The lease a passed check of the bound grants: a sixteenth of the room left
/// after the entry the check added, at most [`LEASE_MAX`]; none (every send
/// checks) within 16 entries of the bound.
pub(crate) fn lease(maxlen: u64, length: u64) -> u64 {
    (maxlen.saturating_sub(length) / 16).min(LEASE_MAX)
}

/// How long a per-process group survives its consumer's last sign of life.
pub(crate) const ALIVE_TTL: Duration = Duration::from_secs(60);

/// A provider on one Redis server (or the master Sentinel names). Cloning shares it.
#[derive(Clone)]
pub struct RedisProvider {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) link: Link,
    pub(crate) server_name: String,
    send_timeout: Duration,
    /// Streams sent to since the last trim pass.
    dirty: Mutex<HashSet<String>>,
    /// Per stream, how many plain `XADD`s this provider may still make before it
    /// checks the bound again (see [`Inner::append`]).
    leases: Mutex<HashMap<String, u64>>,
    pub(crate) tasks: InFlight,
    /// Dead letters being deleted (taken off their stream by a replay): listing and
    /// counting wait for them, so they see what the replay left.
    pub(crate) letter_deletions: InFlight,
}

impl RedisProvider {
    /// Connects to the server of `config.url`, waiting at most the send timeout.
    pub async fn connect(config: ProviderConfig) -> Result<Self> {
        let url = url::parse(&config.url)?;
        let timeout = config
            .send_timeout
            .clamp(Duration::from_millis(500), COMMAND_TIMEOUT);
        let link = Link::new(url, timeout)?;
        let inner = Arc::new(Inner {
            link,
            server_name: config.server_name,
            send_timeout: config.send_timeout,
            dirty: Mutex::new(HashSet::new()),
            leases: Mutex::new(HashMap::new()),
            tasks: InFlight::default(),
            letter_deletions: InFlight::default(),
        });
        // Reachable now, or a clear error now rather than at the first send.
        let pong: String = inner.link.query("PING", &redis::cmd("PING")).await?;
        tracing::debug!(%pong, url = ?inner.link.url(), "connected to Redis");
        tokio::spawn(trimmer(Arc::downgrade(&inner)));
        Ok(Self { inner })
    }

    /// The key of an event's stream.
    pub fn stream_key(&self, event: &str) -> String {
        self.inner.stream_key(event)
    }

    /// The key of a queue's dead-letter stream.
    pub fn dead_letter_key(&self, queue: &QueueSpec) -> String {
        self.inner.key(&queue.dead_letter_queue())
    }

    /// A connection of this provider's (for what the provider does not do).
    pub async fn connection(&self) -> Result<redis::aio::MultiplexedConnection> {
        self.inner.link.shared().await
    }

    /// Trims the stream of `event` now (see the crate docs); returns how many
    /// entries went.
    pub async fn trim(&self, event: &str) -> Result<u64> {
        self.inner.trim(&self.inner.stream_key(event)).await
    }
}

/// Trims the streams sent to, once a [`TRIM_EVERY`], while the provider lives.
async fn trimmer(inner: std::sync::Weak<Inner>) {
    loop {
        let Some(strong) = inner.upgrade() else {
            return;
        };
        let dirty: Vec<String> = strong.dirty.lock().drain().collect();
        for stream in dirty {
            if let Err(error) = strong.trim(&stream).await {
                tracing::debug!(%error, stream, "trim failed");
            }
        }
        drop(strong);
        tokio::time::sleep(TRIM_EVERY).await;
    }
}

impl Inner {
    pub(crate) fn key(&self, name: &str) -> String {
        format!("{}{name}", self.link.url().prefix)
    }

    pub(crate) fn stream_key(&self, event: &str) -> String {
        self.key(event)
    }

    fn per_process_key(&self, stream: &str) -> String {
        format!("{}eventing:per-process:{stream}", self.link.url().prefix)
    }

    /// The sorted set of scheduled sends of `event`.
    pub(crate) fn schedule_key(&self, event: &str) -> String {
        format!("{}eventing:schedule:{event}", self.link.url().prefix)
    }

    /// Adds a scheduled send of `event` (packed fields) due in `delay`, retrying
    /// while the server is unreachable until the send timeout; waits for the
    /// replicas if `durable`.
    async fn schedule(
        &self,
        event: &str,
        member: Vec<u8>,
        delay: Duration,
        durable: bool,
    ) -> Result<()> {
        let began = Instant::now();
        let deadline = began
            .checked_add(self.send_timeout)
            .unwrap_or_else(|| began + Duration::from_secs(365 * 86_400));
        let key = self.schedule_key(event);
        let delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
        let mut attempt = 0;
        loop {
            let tried = async {
                let mut connection = self.link.shared().await?;
                scripts::SCHEDULE
                    .key(&key)
                    .arg(delay_ms)
                    .arg(&member)
                    .invoke_async::<i64>(&mut connection)
                    .await
                    .map_err(|e| {
                        self.link.failed(&e);
                        error::from_redis("scheduling a send", &e)
                    })?;
                if durable && self.link.url().replicas > 0 {
                    self.wait_for_replicas(&mut connection, deadline).await?;
                }
                Ok(())
            };
            let error = match tried.await {
                Ok(()) => return Ok(()),
                Err(error @ Error::Unavailable { .. }) => error,
                Err(error) => return Err(error),
            };
            attempt += 1;
            let wait = BACKOFF.delay(attempt);
            if Instant::now() + wait >= deadline {
                return Err(error);
            }
            tracing::debug!(event, attempt, %error, "scheduling a send failed; retrying");
            tokio::time::sleep(wait).await;
        }
    }

    pub(crate) fn alive_prefix(&self) -> String {
        format!("{}eventing:alive:", self.link.url().prefix)
    }

    pub(crate) fn alive_key(&self, queue: &str) -> String {
        format!("{}{queue}", self.alive_prefix())
    }

    pub(crate) fn claim_idle(&self) -> Duration {
        self.link.url().claim_idle
    }

    async fn trim(&self, stream: &str) -> Result<u64> {
        let mut connection = self.link.shared().await?;
        let result = scripts::TRIM
            .key(stream)
            .key(self.per_process_key(stream))
            .arg(self.alive_prefix())
            .invoke_async::<(u64, u64)>(&mut connection)
            .await;
        match result {
            Ok((trimmed, gone)) => {
                if gone > 0 {
                    tracing::info!(stream, gone, "per-process groups of gone servers destroyed");
                }
                Ok(trimmed)
            }
            Err(error) => {
                self.link.failed(&error);
                Err(error::from_redis("trimming a stream", &error))
            }
        }
    }

    /// Creates the consumer group of `spec` (from the stream's end, creating the
    /// stream); a per-process group is registered for the trimmer and marked alive.
    async fn ensure_group(&self, spec: &QueueSpec) -> Result<()> {
        let stream = self.stream_key(&spec.event);
        let created = self
            .link
            .query::<()>(
                "creating a consumer group",
                redis::cmd("XGROUP")
                    .arg("CREATE")
                    .arg(&stream)
                    .arg(&spec.name)
                    .arg("$")
                    .arg("MKSTREAM"),
            )
            .await;
        match created {
            Ok(()) => tracing::debug!(queue = %spec.name, stream, "consumer group created"),
            Err(Error::Provider { source, .. }) if source.to_string().contains("BUSYGROUP") => {}
            Err(error) => return Err(error),
        }
        if spec.per_process {
            let mut pipe = redis::pipe();
            pipe.cmd("SADD")
                .arg(self.per_process_key(&stream))
                .arg(&spec.name)
                .ignore()
                .cmd("SET")
                .arg(self.alive_key(&spec.name))
                .arg(&self.server_name)
                .arg("PX")
                .arg(ALIVE_TTL.as_millis() as u64)
                .ignore();
            self.link
                .query_pipe::<()>("registering a per-process group", &pipe)
                .await?;
        }
        Ok(())
    }

    /// True if the group of `spec` exists.
    async fn group_exists(&self, spec: &QueueSpec) -> Result<bool> {
        let stream = self.stream_key(&spec.event);
        let groups: Value = match self
            .link
            .query(
                "listing consumer groups",
                redis::cmd("XINFO").arg("GROUPS").arg(&stream),
            )
            .await
        {
            Ok(groups) => groups,
            Err(Error::Provider { source, .. }) if source.to_string().contains("no such key") => {
                return Ok(false);
            }
            Err(error) => return Err(error),
        };
        let Value::Array(groups) = groups else {
            return Ok(false);
        };
        Ok(groups.iter().any(|group| {
            consumer::map_get(group, b"name")
                .and_then(consumer::bytes_of)
                .is_some_and(|name| name == spec.name.as_bytes())
        }))
    }

    /// Adds an entry to `stream` within the bound, waiting for room and for the
    /// server until the send timeout; then `WAIT` for replicas if asked.
    pub(crate) async fn append(
        &self,
        stream: &str,
        fields: &[(Bytes, Bytes)],
        durable: bool,
    ) -> Result<String> {
        let url = self.link.url();
        let began = Instant::now();
        // The provider gives up a little before the manager's own timeout, so the
        // caller gets the reason (full, or unreachable) rather than a bare timeout.
        let margin = (self.send_timeout / 10).min(GIVE_UP_MARGIN);
        let deadline = began
            .checked_add(self.send_timeout - margin)
            .unwrap_or_else(|| began + Duration::from_secs(365 * 86_400));
        let mut attempt = 0;
        loop {
            let why = match self.try_append(stream, fields, durable, deadline).await {
                Ok(Some(id)) => {
                    let mut dirty = self.dirty.lock();
                    if !dirty.contains(stream) {
                        dirty.insert(stream.to_string());
                    }
                    return Ok(id);
                }
                Ok(None) => match self.trim(stream).await {
                    // Full: trimming made room (consumers had acknowledged), or not.
                    Ok(n) if n > 0 && Instant::now() < deadline => continue,
                    _ => Failure::Full,
                },
                Err(Error::Unavailable { reason, .. }) => Failure::Down(reason),
                Err(error) => return Err(error),
            };
            attempt += 1;
            let now = Instant::now();
            if now >= deadline {
                return Err(match why {
                    Failure::Full => unavailable(
                        RedisError::StreamFull {
                            stream: stream.to_string(),
                            maxlen: url.maxlen,
                            waited: began.elapsed(),
                        }
                        .to_string(),
                    ),
                    Failure::Down(reason) => unavailable(format!(
                        "send to `{stream}` failed for {:?}: {reason}",
                        self.send_timeout
                    )),
                });
            }
            tracing::debug!(stream, attempt, "send waits: {}", why.describe());
            // The last attempt is made at the deadline.
            tokio::time::sleep(BACKOFF.delay(attempt).min(deadline - now)).await;
        }
    }

    /// One attempt: `Some(id)`, or `None` if the stream is full.
    ///
    /// The bound is checked on the server (the [`PUBLISH`](scripts::PUBLISH)
    /// script: `XLEN`, then `XADD`, atomically), but not on every send: a check
    /// that passes grants this provider a lease of [`lease`] plain `XADD`s on that
    /// stream, a sixteenth of the room it saw and at most [`LEASE_MAX`]; the
    /// script costs the server about five times a plain `XADD`. One sending
    /// process never passes the bound (its leases fit in the room it saw); with
    /// several, each may overrun it by what it holds at most.
    async fn try_append(
        &self,
        stream: &str,
        fields: &[(Bytes, Bytes)],
        durable: bool,
        deadline: Instant,
    ) -> Result<Option<String>> {
        let url = self.link.url();
        let mut connection = self.link.shared().await?;
        let leased = match self.leases.lock().get_mut(stream) {
            Some(left) if *left > 0 => {
                *left -= 1;
                true
            }
            _ => false,
        };
        let id: Option<String> = if leased {
            let mut xadd = redis::cmd("XADD");
            xadd.arg(stream).arg("*");
            for (name, value) in fields {
                xadd.arg(name.as_ref()).arg(value.as_ref());
            }
            match xadd.query_async(&mut connection).await {
                Ok(id) => Some(id),
                Err(error) => {
                    self.link.failed(&error);
                    return Err(error::from_redis("XADD", &error));
                }
            }
        } else {
            let mut invocation = scripts::PUBLISH.key(stream);
            invocation.arg(url.maxlen);
            for (name, value) in fields {
                invocation.arg(name.as_ref()).arg(value.as_ref());
            }
            match invocation.invoke_async(&mut connection).await {
                Ok(Some((id, length))) => {
                    self.leases
                        .lock()
                        .insert(stream.to_string(), lease(url.maxlen, length));
                    Some(id)
                }
                Ok(None) => None,
                Err(error) => {
                    self.link.failed(&error);
                    return Err(error::from_redis("XADD", &error));
                }
            }
        };
        if id.is_some() && durable && url.replicas > 0 {
            self.wait_for_replicas(&mut connection, deadline).await?;
        }
        Ok(id)
    }

    /// `WAIT` until `replicas` replicas have the writes of `connection` (the entry
    /// just added among them). While fewer confirm (a replica reconnecting, say
    /// after a failover) it asks again until `deadline`: the entry is written, so
    /// asking again never adds it twice. Each `WAIT` blocks the connection at most
    /// `wait_timeout`.
    async fn wait_for_replicas(
        &self,
        connection: &mut redis::aio::MultiplexedConnection,
        deadline: Instant,
    ) -> Result<()> {
        let url = self.link.url();
        let began = Instant::now();
        let mut attempt = 0;
        loop {
            let asked = Instant::now();
            let limit = url
                .wait_timeout
                .min(deadline.saturating_duration_since(asked))
                .max(Duration::from_millis(1));
            // `WAIT n 0` would block forever: the limit is at least 1 ms.
            let confirmed: i64 = redis::cmd("WAIT")
                .arg(url.replicas)
                .arg(limit.as_millis() as u64)
                .query_async(connection)
                .await
                .map_err(|e| {
                    self.link.failed(&e);
                    error::from_redis("WAIT", &e)
                })?;
            if confirmed >= i64::from(url.replicas) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(provider(RedisError::Replicas {
                    confirmed,
                    wanted: url.replicas,
                    timeout: began.elapsed(),
                }));
            }
            attempt += 1;
            tracing::debug!(confirmed, attempt, "durable send waits for replicas");
            if asked.elapsed() < limit / 2 {
                // WAIT answered early (no replica at all?): do not spin.
                let pause = BACKOFF.delay(attempt);
                tokio::time::sleep(pause.min(deadline.saturating_duration_since(Instant::now())))
                    .await;
            }
        }
    }
}

enum Failure {
    Full,
    Down(String),
}

impl Failure {
    fn describe(&self) -> &str {
        match self {
            Failure::Full => "the stream is full",
            Failure::Down(reason) => reason,
        }
    }
}

impl Provider for RedisProvider {
    fn name(&self) -> &'static str {
        NAME
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::NONE.with_dead_letters().with_delayed()
    }

    /// The stream, the group, the dead-letter stream and the delay queues'
    /// sorted sets, as keys on the server.
    fn broker_names(&self, queue: &QueueSpec) -> Option<String> {
        let mut names = format!(
            "group {} on stream {}, dead letters in stream {}",
            queue.name,
            self.inner.stream_key(&queue.event),
            self.dead_letter_key(queue),
        );
        let delays: Vec<String> = queue
            .delay_queues()
            .iter()
            .map(|name| self.inner.key(name))
            .collect();
        if !delays.is_empty() {
            names.push_str(&format!(
                ", delayed retries in sorted sets {}",
                delays.join(", ")
            ));
        }
        Some(names)
    }

    async fn declare(&self, queues: &[QueueSpec]) -> Result<()> {
        for spec in queues {
            self.inner.ensure_group(spec).await?;
        }
        Ok(())
    }

    async fn publish(&self, route: Route<'_>, envelope: Envelope) -> Result<()> {
        let span = tracing::debug_span!(
            "redis.send",
            event = route.address,
            message_id = envelope.message_id()
        );
        let stream = self.inner.stream_key(route.address);
        let fields = fields::to_fields(&envelope, None);
        self.inner
            .append(&stream, &fields, route.durable)
            .instrument(span)
            .await
            .map(|_| ())
    }

    async fn subscribe(
        &self,
        queue: &QueueSpec,
        options: ConsumeOptions,
    ) -> Result<Box<dyn Consumer>> {
        self.inner.ensure_group(queue).await?;
        consumer::subscribe(
            Arc::clone(&self.inner),
            queue,
            usize::from(options.prefetch.max(1)),
        )
        .await
    }

    async fn close(&self) -> Result<()> {
        // Acks given so far reach the server before the provider goes.
        self.inner.tasks.wait_idle(COMMAND_TIMEOUT).await;
        self.inner.letter_deletions.wait_idle(COMMAND_TIMEOUT).await;
        Ok(())
    }

    async fn dead_letters(&self, queue: &QueueSpec, limit: usize) -> Result<Vec<Envelope>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        self.inner.letter_deletions.wait_idle(COMMAND_TIMEOUT).await;
        let reply: Value = self
            .inner
            .link
            .query(
                "listing dead letters",
                redis::cmd("XRANGE")
                    .arg(self.dead_letter_key(queue))
                    .arg("-")
                    .arg("+")
                    .arg("COUNT")
                    .arg(limit),
            )
            .await?;
        Ok(consumer::entries(&reply)
            .into_iter()
            .map(|(_, entry)| entry.envelope)
            .collect())
    }

    async fn dead_letter_depth(&self, queue: &QueueSpec) -> Result<usize> {
        if !self.inner.group_exists(queue).await? {
            return Err(Error::QueueNotFound {
                queue: queue.name.clone(),
            });
        }
        self.inner.letter_deletions.wait_idle(COMMAND_TIMEOUT).await;
        let depth: u64 = self
            .inner
            .link
            .query(
                "counting dead letters",
                redis::cmd("XLEN").arg(self.dead_letter_key(queue)),
            )
            .await?;
        Ok(usize::try_from(depth).unwrap_or(usize::MAX))
    }

    async fn take_dead_letters(
        &self,
        queue: &QueueSpec,
        prefetch: u16,
    ) -> Result<Box<dyn Consumer>> {
        self.inner.letter_deletions.wait_idle(COMMAND_TIMEOUT).await;
        consumer::take_letters(
            Arc::clone(&self.inner),
            self.dead_letter_key(queue),
            usize::from(prefetch.max(1)),
        )
        .await
    }

    /// Added to the sorted set `eventing:schedule:<event>`, due at the server's
    /// now + `delay`; a subscription of the event moves it into the stream when due.
    async fn publish_delayed(
        &self,
        route: Route<'_>,
        delay: Duration,
        envelope: Envelope,
    ) -> Result<()> {
        let span = tracing::debug_span!(
            "redis.send_delayed",
            event = route.address,
            message_id = envelope.message_id(),
            ?delay
        );
        let member = fields::pack_waiting(
            &uuid::Uuid::new_v4().simple().to_string(),
            &fields::to_fields(&envelope, None),
        );
        self.inner
            .schedule(route.address, member, delay, route.durable)
            .instrument(span)
            .await
    }

    async fn send_to_queue(&self, queue: &QueueSpec, envelope: Envelope) -> Result<()> {
        if !self.inner.group_exists(queue).await? {
            return Err(Error::QueueNotFound {
                queue: queue.name.clone(),
            });
        }
        let stream = self.inner.stream_key(&queue.event);
        let fields = fields::to_fields(&envelope, Some(&queue.name));
        self.inner.append(&stream, &fields, true).await.map(|_| ())
    }
}

fn connect(config: ProviderConfig) -> ConnectFuture {
    Box::pin(async move { Ok(RedisProvider::connect(config).await?.into_dyn()) })
}

eventing::register_provider!(
    ["redis", "rediss", "redis+sentinel", "rediss+sentinel"],
    connect
);

#[cfg(test)]
mod lease_tests {
    use super::{LEASE_MAX, lease};

    #[test]
    fn a_lease_is_a_sixteenth_of_the_room_and_at_most_the_maximum() {
        assert_eq!(lease(1_000_000, 1), LEASE_MAX);
        assert_eq!(lease(1_000_000, 999_000), 1_000 / 16);
        assert_eq!(lease(20, 1), 1);
        assert_eq!(lease(20, 5), 0, "within 16 of the bound every send checks");
        assert_eq!(lease(20, 20), 0);
        assert_eq!(lease(20, 25), 0, "a stream past the bound grants nothing");
    }
}

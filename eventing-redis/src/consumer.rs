//! Consuming a consumer group: the read loop, the deliveries it yields and how
//! they are settled; and the reader of a dead-letter stream.
//!
//! Each subscription is a consumer `<server>-<uuid>` of its queue's group, reading
//! with `XREADGROUP ... COUNT <room> BLOCK` on a connection of its own, so that at
//! most `prefetch` entries are unsettled at this instance. Between reads it claims
//! entries other members left idle for `claim_idle` (`XAUTOCLAIM`: a crashed
//! member's, or requeued ones), and keeps the idle time of its own in-flight
//! entries at zero (`XCLAIM ... JUSTID`) so that a slow handler is not robbed.
//!
//! A read error (the connection, or the group gone) ends the stream, so the
//! runtime declares and subscribes again. Cancel wakes a blocked read
//! (`CLIENT UNBLOCK`); what that read still brings is requeued at once.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use eventing::provider::{Acker, ChannelConsumer, Consumer, Delivery};
use eventing::topology::QueueSpec;
use eventing::{BoxFuture, Envelope, Result};
use parking_lot::Mutex;
use redis::Value;
use redis::aio::MultiplexedConnection;
use tokio::sync::{Notify, mpsc, watch};
use tokio::time::Instant;
use tracing::Instrument as _;

use crate::error::from_redis;
use crate::fields::{self, Entry};
use crate::{ALIVE_TTL, Inner, scripts};

// ---------------------------------------------------------------------------------
// replies

/// The bytes of a string reply.
pub(crate) fn bytes_of(value: &Value) -> Option<&[u8]> {
    match value {
        Value::BulkString(bytes) => Some(bytes),
        Value::SimpleString(text) => Some(text.as_bytes()),
        _ => None,
    }
}

fn text_of(value: &Value) -> Option<String> {
    bytes_of(value).map(|b| String::from_utf8_lossy(b).into_owned())
}

/// The value of `key` in a flat `[k, v, k, v, ...]` reply or a map.
pub(crate) fn map_get<'a>(value: &'a Value, key: &[u8]) -> Option<&'a Value> {
    match value {
        Value::Array(items) => items
            .chunks_exact(2)
            .find(|pair| bytes_of(&pair[0]) == Some(key))
            .map(|pair| &pair[1]),
        Value::Map(pairs) => pairs
            .iter()
            .find(|(k, _)| bytes_of(k) == Some(key))
            .map(|(_, v)| v),
        _ => None,
    }
}

/// The entries of an `XRANGE`-shaped reply: `[[id, [field, value, ...]], ...]`.
/// An entry without fields (deleted) is left out.
pub(crate) fn entries(value: &Value) -> Vec<(String, Entry)> {
    let Value::Array(items) = value else {
        return Vec::new();
    };
    items
        .iter()
        .filter_map(|item| {
            let Value::Array(parts) = item else {
                return None;
            };
            let id = text_of(parts.first()?)?;
            let pairs: Vec<(Vec<u8>, Vec<u8>)> = match parts.get(1)? {
                Value::Array(flat) => flat
                    .chunks_exact(2)
                    .filter_map(|p| Some((bytes_of(&p[0])?.to_vec(), bytes_of(&p[1])?.to_vec())))
                    .collect(),
                Value::Map(pairs) => pairs
                    .iter()
                    .filter_map(|(k, v)| Some((bytes_of(k)?.to_vec(), bytes_of(v)?.to_vec())))
                    .collect(),
                _ => return None,
            };
            Some((id, fields::from_fields(pairs)))
        })
        .collect()
}

/// The entries of an `XREADGROUP` reply for one stream (nil: none).
fn read_entries(value: &Value) -> Vec<(String, Entry)> {
    match value {
        Value::Array(streams) => streams
            .iter()
            .flat_map(|stream| match stream {
                Value::Array(parts) if parts.len() == 2 => entries(&parts[1]),
                _ => Vec::new(),
            })
            .collect(),
        Value::Map(streams) => streams.iter().flat_map(|(_, e)| entries(e)).collect(),
        _ => Vec::new(),
    }
}

// ---------------------------------------------------------------------------------
// settling

/// Settles the deliveries of one subscription.
pub(crate) struct Settle {
    inner: Arc<Inner>,
    stream: String,
    group: String,
    consumer: String,
    dead_letters: String,
    /// Tag -> entry id, for what is delivered and not settled.
    pending: Arc<Mutex<HashMap<u64, String>>>,
    next_tag: AtomicU64,
    settled: Arc<Notify>,
    /// Set by a requeue: the read loop claims soon.
    claim_soon: AtomicBool,
    /// The queue (its delay queues take retry copies).
    queue: QueueSpec,
    /// Entry ids acknowledged and not yet sent, and whether a task is sending.
    acks: Arc<Mutex<Acks>>,
}

/// Acknowledgements waiting to go out in one `XACK`.
#[derive(Default)]
struct Acks {
    ids: Vec<String>,
    sending: bool,
}

/// The most entry ids one `XACK` carries.
const ACKS_PER_XACK: usize = 512;

impl Settle {
    fn take(&self, tag: u64) -> Option<String> {
        let id = self.pending.lock().remove(&tag);
        self.settled.notify_one();
        id
    }

    fn unsettled(&self) -> usize {
        self.pending.lock().len()
    }

    fn xack(&self, id: &str) -> redis::Cmd {
        let mut cmd = redis::cmd("XACK");
        cmd.arg(&self.stream).arg(&self.group).arg(id);
        cmd
    }

    /// Acknowledges `id` in the background (counted for `close`). Ids acknowledged
    /// while an `XACK` is on its way go together in the next one, so a busy
    /// consumer sends one command for many entries and an idle one waits for none.
    fn ack_id(&self, id: String) {
        {
            let mut acks = self.acks.lock();
            acks.ids.push(id);
            if acks.sending {
                return;
            }
            acks.sending = true;
        }
        let (inner, acks) = (Arc::clone(&self.inner), Arc::clone(&self.acks));
        let (stream, group) = (self.stream.clone(), self.group.clone());
        self.inner.tasks.spawn(async move {
            loop {
                let ids = {
                    let mut acks = acks.lock();
                    if acks.ids.is_empty() {
                        acks.sending = false;
                        return;
                    }
                    let keep = acks.ids.len().saturating_sub(ACKS_PER_XACK);
                    acks.ids.split_off(keep)
                };
                let mut cmd = redis::cmd("XACK");
                cmd.arg(&stream).arg(&group).arg(&ids);
                if let Err(error) = inner.link.query::<i64>("XACK", &cmd).await {
                    tracing::debug!(
                        %error,
                        entries = ids.len(),
                        "ack not sent; the entries will be claimed again"
                    );
                }
            }
        });
    }
}

impl Acker for Settle {
    fn ack(&self, tag: u64) {
        if let Some(id) = self.take(tag) {
            self.ack_id(id);
        }
    }

    fn requeue(&self, tag: u64) {
        let Some(id) = self.take(tag) else {
            return;
        };
        // Redis has no NACK: make the entry look abandoned for `claim_idle`, so the
        // next XAUTOCLAIM of any member (this one included) takes it.
        let idle = self.inner.claim_idle().as_millis() as u64 + 1;
        let mut cmd = redis::cmd("XCLAIM");
        cmd.arg(&self.stream)
            .arg(&self.group)
            .arg(&self.consumer)
            .arg(0)
            .arg(&id)
            .arg("IDLE")
            .arg(idle)
            .arg("JUSTID");
        let inner = Arc::clone(&self.inner);
        self.claim_soon.store(true, Ordering::Relaxed);
        self.inner.tasks.spawn(async move {
            if let Err(error) = inner.link.query::<Value>("XCLAIM", &cmd).await {
                tracing::debug!(%error, id, "requeue not sent; the entry is claimed after claim_idle");
            }
        });
    }

    fn dead_letter(&self, tag: u64, letter: Envelope) -> BoxFuture<'static, Result<()>> {
        let id = self.pending.lock().get(&tag).cloned();
        let Some(id) = id else {
            return Box::pin(std::future::ready(Ok(()))); // settled already
        };
        // The letter is added and the original acknowledged in one transaction.
        let mut pipe = redis::pipe();
        pipe.atomic();
        let add = pipe.cmd("XADD").arg(&self.dead_letters).arg("*");
        for (name, value) in fields::to_fields(&letter, None) {
            add.arg(name.as_ref()).arg(value.as_ref());
        }
        pipe.ignore().add_command(self.xack(&id)).ignore();
        let inner = Arc::clone(&self.inner);
        let pending = Arc::clone(&self.pending);
        let settled = Arc::clone(&self.settled);
        Box::pin(async move {
            // Stored before the original is acknowledged (one transaction); if it
            // fails, the original stays unsettled and the runtime requeues it.
            inner
                .link
                .query_pipe::<()>("storing a dead letter", &pipe)
                .await?;
            pending.lock().remove(&tag);
            settled.notify_one();
            Ok(())
        })
    }

    /// Adds a copy to the queue's delay queue for `delay` (a sorted set, due at
    /// the server's now + `delay`) and acknowledges the original, in one script.
    fn delay(
        &self,
        tag: u64,
        delay: Duration,
        envelope: Envelope,
    ) -> BoxFuture<'static, Result<()>> {
        let id = self.pending.lock().get(&tag).cloned();
        let Some(id) = id else {
            return Box::pin(std::future::ready(Ok(()))); // settled already
        };
        let member = fields::pack_waiting(
            &uuid::Uuid::new_v4().simple().to_string(),
            &fields::to_fields(&envelope, Some(&self.queue.name)),
        );
        let key = self.inner.key(&self.queue.delay_queue(delay));
        let delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
        let (stream, group) = (self.stream.clone(), self.group.clone());
        let durable = self.queue.durable;
        let inner = Arc::clone(&self.inner);
        let pending = Arc::clone(&self.pending);
        let settled = Arc::clone(&self.settled);
        Box::pin(async move {
            let mut connection = inner.link.shared().await?;
            // Stored and the original acknowledged at once; if it fails, neither
            // happened and the original stays unsettled.
            scripts::DELAY
                .key(&key)
                .key(&stream)
                .arg(delay_ms)
                .arg(&group)
                .arg(&id)
                .arg(member)
                .invoke_async::<i64>(&mut connection)
                .await
                .map_err(|e| {
                    inner.link.failed(&e);
                    from_redis("delaying a message", &e)
                })?;
            pending.lock().remove(&tag);
            settled.notify_one();
            if durable && inner.link.url().replicas > 0 {
                let deadline = Instant::now() + inner.claim_idle();
                if let Err(error) = inner.wait_for_replicas(&mut connection, deadline).await {
                    // The copy is on the master (the original acknowledged there).
                    tracing::warn!(%error, "a delayed copy is not confirmed by the replicas");
                }
            }
            Ok(())
        })
    }
}

// ---------------------------------------------------------------------------------
// delayed delivery

/// While the subscription lasts: moves the due messages of the queue's delay
/// queues and of the event's schedule into the event's stream, every
/// [`POLL`](crate::POLL) (at once again while there were more due than one
/// script moves).
async fn move_due(
    inner: Weak<Inner>,
    stream: String,
    keys: Vec<String>,
    mut cancelled: watch::Receiver<bool>,
) {
    const LIMIT: usize = 500;
    loop {
        if *cancelled.borrow() {
            return;
        }
        let Some(strong) = inner.upgrade() else {
            return;
        };
        let mut wait = crate::POLL;
        match strong.link.shared().await {
            Ok(mut connection) => {
                let mut invocation = scripts::MOVE.key(&stream);
                for key in &keys {
                    invocation.key(key);
                }
                invocation.arg(strong.link.url().maxlen).arg(LIMIT);
                match invocation
                    .invoke_async::<(u64, u64, i64)>(&mut connection)
                    .await
                {
                    Ok((moved, full, next_due)) => {
                        if moved > 0 {
                            tracing::debug!(moved, stream, "due messages moved into the stream");
                        }
                        if full == 1 {
                            tracing::debug!(stream, "the stream is full: due messages wait");
                        } else if moved >= LIMIT as u64 {
                            wait = Duration::ZERO;
                        } else if let Ok(next) = u64::try_from(next_due) {
                            wait = wait.min(Duration::from_millis(next));
                        }
                    }
                    Err(error) => {
                        strong.link.failed(&error);
                        tracing::debug!(%error, "moving due messages failed");
                    }
                }
            }
            Err(error) => tracing::debug!(%error, "moving due messages: no connection"),
        }
        drop(strong);
        if wait.is_zero() {
            tokio::task::yield_now().await;
            continue;
        }
        tokio::select! {
            _ = cancelled.changed() => {}
            () = tokio::time::sleep(wait) => {}
        }
    }
}

// ---------------------------------------------------------------------------------
// the subscription

/// How often the loop claims idle entries of others.
fn claim_every(inner: &Inner) -> Duration {
    (inner.claim_idle() / 4).clamp(Duration::from_millis(250), Duration::from_secs(5))
}

/// Starts consuming the group of `queue`.
pub(crate) async fn subscribe(
    inner: Arc<Inner>,
    queue: &QueueSpec,
    prefetch: usize,
) -> Result<Box<dyn Consumer>> {
    let block = claim_every(&inner).min(Duration::from_secs(2));
    let mut connection = inner.link.dedicated(block + Duration::from_secs(5)).await?;
    let client_id: i64 = redis::cmd("CLIENT")
        .arg("ID")
        .query_async(&mut connection)
        .await
        .map_err(|e| from_redis("CLIENT ID", &e))?;
    let consumer = format!("{}-{}", inner.server_name, uuid::Uuid::new_v4().simple());
    let settle = Arc::new(Settle {
        inner: Arc::clone(&inner),
        stream: inner.stream_key(&queue.event),
        group: queue.name.clone(),
        consumer,
        dead_letters: inner.key(&queue.dead_letter_queue()),
        pending: Arc::new(Mutex::new(HashMap::new())),
        next_tag: AtomicU64::new(1),
        settled: Arc::new(Notify::new()),
        claim_soon: AtomicBool::new(false),
        queue: queue.clone(),
        acks: Arc::default(),
    });
    tokio::spawn(keep_fresh(Arc::downgrade(&settle)));
    let (consumer, feed) = ChannelConsumer::new();
    let (tx, cancelled) = (feed.deliveries, feed.cancelled);
    let mut waiting: Vec<String> = queue
        .delay_queues()
        .iter()
        .map(|name| inner.key(name))
        .collect();
    waiting.push(inner.schedule_key(&queue.event));
    tokio::spawn(
        move_due(
            Arc::downgrade(&inner),
            settle.stream.clone(),
            waiting,
            cancelled.clone(),
        )
        .instrument(
            tracing::debug_span!("redis.move_due", event = %queue.event, queue = %queue.name),
        ),
    );
    let read = Read {
        span: tracing::debug_span!("redis.consume", queue = %queue.name, consumer = %settle.consumer),
        inner,
        settle,
        connection,
        client_id,
        block,
        prefetch,
        queue: queue.name.clone(),
        per_process: queue.per_process,
        tx,
        cancelled,
    };
    tokio::spawn(read.run());
    Ok(Box::new(consumer))
}

/// While the subscription's deliveries live: resets the idle time of the entries
/// in flight, so no other member claims them. Then retires the consumer from its
/// group if it holds nothing.
async fn keep_fresh(settle: Weak<Settle>) {
    let Some(first) = settle.upgrade() else {
        return;
    };
    let every = first.inner.claim_idle() / 3;
    let (inner, stream, group, consumer) = (
        Arc::clone(&first.inner),
        first.stream.clone(),
        first.group.clone(),
        first.consumer.clone(),
    );
    drop(first);
    loop {
        tokio::time::sleep(every).await;
        let Some(settle) = settle.upgrade() else {
            break;
        };
        let ids: Vec<String> = settle.pending.lock().values().cloned().collect();
        drop(settle);
        for chunk in ids.chunks(200) {
            let mut cmd = redis::cmd("XCLAIM");
            cmd.arg(&stream).arg(&group).arg(&consumer).arg(0);
            for id in chunk {
                cmd.arg(id);
            }
            cmd.arg("JUSTID");
            if let Err(error) = inner.link.query::<Value>("XCLAIM", &cmd).await {
                tracing::debug!(%error, "refreshing in-flight entries failed");
            }
        }
    }
    // Every delivery is settled or dropped: the consumer goes if it holds nothing.
    if let Ok(mut connection) = inner.link.shared().await {
        let retired = scripts::RETIRE
            .key(&stream)
            .arg(&group)
            .arg(&consumer)
            .invoke_async::<i64>(&mut connection)
            .await;
        tracing::debug!(?retired, consumer, "consumer retired");
    }
}

struct Read {
    span: tracing::Span,
    inner: Arc<Inner>,
    settle: Arc<Settle>,
    connection: MultiplexedConnection,
    client_id: i64,
    block: Duration,
    prefetch: usize,
    queue: String,
    per_process: bool,
    tx: mpsc::UnboundedSender<Delivery>,
    cancelled: watch::Receiver<bool>,
}

impl Read {
    async fn run(mut self) {
        let span = self.span.clone();
        let why = tracing::Instrument::instrument(self.read_loop(), span.clone()).await;
        tracing::debug!(parent: &span, why, "read loop ends");
        let cancelled = why == "cancelled";
        if cancelled && self.per_process {
            // A per-process queue goes away with its server.
            let stream = self.settle.stream.clone();
            let mut pipe = redis::pipe();
            pipe.cmd("XGROUP")
                .arg("DESTROY")
                .arg(&stream)
                .arg(&self.queue)
                .ignore()
                .cmd("SREM")
                .arg(format!(
                    "{}eventing:per-process:{stream}",
                    self.inner.link.url().prefix
                ))
                .arg(&self.queue)
                .ignore()
                .cmd("DEL")
                .arg(self.inner.alive_key(&self.queue))
                .ignore();
            if let Err(error) = self
                .inner
                .link
                .query_pipe::<()>("destroying a per-process group", &pipe)
                .await
            {
                tracing::debug!(%error, queue = %self.queue, "per-process group not destroyed");
            }
        }
    }

    async fn read_loop(&mut self) -> &'static str {
        let claim_every = claim_every(&self.inner);
        let mut next_claim = Instant::now();
        let mut next_alive = Instant::now();
        loop {
            if *self.cancelled.borrow() || self.tx.is_closed() {
                return "cancelled";
            }
            let now = Instant::now();
            if self.per_process && now >= next_alive {
                next_alive = now + ALIVE_TTL / 6;
                let mut cmd = redis::cmd("SET");
                cmd.arg(self.inner.alive_key(&self.queue))
                    .arg(&self.inner.server_name)
                    .arg("PX")
                    .arg(ALIVE_TTL.as_millis() as u64);
                if let Err(error) = self.inner.link.query::<()>("SET", &cmd).await {
                    tracing::debug!(%error, "liveness not refreshed");
                }
            }
            if now >= next_claim || self.settle.claim_soon.swap(false, Ordering::Relaxed) {
                next_claim = now + claim_every;
                if let Err(why) = self.claim().await {
                    return why;
                }
            }
            let room = self.prefetch.saturating_sub(self.settle.unsettled());
            if room == 0 {
                tokio::select! {
                    _ = self.settle.settled.notified() => {}
                    _ = self.cancelled.changed() => {}
                    _ = tokio::time::sleep_until(next_claim) => {}
                }
                continue;
            }
            let mut cmd = redis::cmd("XREADGROUP");
            cmd.arg("GROUP")
                .arg(&self.settle.group)
                .arg(&self.settle.consumer)
                .arg("COUNT")
                .arg(room)
                .arg("BLOCK")
                .arg(self.block.as_millis() as u64)
                .arg("STREAMS")
                .arg(&self.settle.stream)
                .arg(">");
            let mut connection = self.connection.clone();
            let read = async move { cmd.query_async::<Value>(&mut connection).await };
            tokio::pin!(read);
            let (reply, late) = tokio::select! {
                reply = &mut read => (reply, false),
                _ = self.cancelled.changed() => {
                    // Wake the blocked read; what it brings goes back at once.
                    let mut unblock = redis::cmd("CLIENT");
                    unblock.arg("UNBLOCK").arg(self.client_id);
                    let _ = self.inner.link.query::<i64>("CLIENT UNBLOCK", &unblock).await;
                    let reply = tokio::time::timeout(self.block + Duration::from_secs(2), read)
                        .await
                        .unwrap_or_else(|_| {
                            Err(redis::RedisError::from((
                                redis::ErrorKind::Io,
                                "read not answered after cancel",
                            )))
                        });
                    (reply, true)
                }
            };
            match reply {
                Ok(value) => {
                    for (id, entry) in read_entries(&value) {
                        self.deliver(id, entry, false, late);
                    }
                }
                Err(error) if error.code() == Some("NOGROUP") => {
                    return "the group or the stream is gone";
                }
                Err(error) => {
                    tracing::debug!(%error, "read failed");
                    return "the connection failed";
                }
            }
        }
    }

    /// Claims entries other members left idle for `claim_idle`, as room allows.
    async fn claim(&mut self) -> std::result::Result<(), &'static str> {
        let mut cursor = "0-0".to_string();
        for _ in 0..10 {
            let room = self.prefetch.saturating_sub(self.settle.unsettled());
            if room == 0 {
                return Ok(());
            }
            let mut cmd = redis::cmd("XAUTOCLAIM");
            cmd.arg(&self.settle.stream)
                .arg(&self.settle.group)
                .arg(&self.settle.consumer)
                .arg(self.inner.claim_idle().as_millis() as u64)
                .arg(&cursor)
                .arg("COUNT")
                .arg(room);
            let reply: Value = match cmd.query_async(&mut self.connection).await {
                Ok(reply) => reply,
                Err(error) if error.code() == Some("NOGROUP") => {
                    return Err("the group or the stream is gone");
                }
                Err(error) => {
                    tracing::debug!(%error, "claim failed");
                    return Err("the connection failed");
                }
            };
            let Value::Array(parts) = &reply else {
                return Ok(());
            };
            let claimed = parts.get(1).map(entries).unwrap_or_default();
            if let Some(Value::Array(deleted)) = parts.get(2)
                && !deleted.is_empty()
            {
                tracing::warn!(
                    stream = %self.settle.stream,
                    count = deleted.len(),
                    "pending entries were deleted from the stream by someone else (XDEL or a trim not done by eventing)"
                );
            }
            for (id, entry) in claimed {
                tracing::debug!(id, "claimed an idle entry");
                self.deliver(id, entry, true, false);
            }
            match parts.first().and_then(text_of) {
                Some(next) if next != "0-0" => cursor = next,
                _ => return Ok(()),
            }
        }
        Ok(())
    }

    /// Hands an entry to the runtime (or acknowledges and skips one put onto
    /// another queue alone; or, after cancel, gives it back).
    fn deliver(&mut self, id: String, entry: Entry, redelivered: bool, late: bool) {
        if let Some(target) = &entry.target
            && target != &self.queue
        {
            // A replay onto another queue of the event: not ours.
            self.settle.ack_id(id);
            return;
        }
        if !entry.has_body {
            tracing::warn!(
                id,
                "entry without a `body` field: delivered with an empty body (it will be dead-lettered as undecodable)"
            );
        }
        let tag = self.settle.next_tag.fetch_add(1, Ordering::Relaxed);
        self.settle.pending.lock().insert(tag, id);
        if late {
            self.settle.requeue(tag);
            return;
        }
        let acker: Arc<dyn Acker> = Arc::clone(&self.settle) as Arc<dyn Acker>;
        let delivery = Delivery::new(entry.envelope, tag, acker).redelivered(redelivered);
        if let Err(unsent) = self.tx.send(delivery) {
            // Nobody reads any more: give it back.
            unsent.0.acker.requeue(tag);
        }
    }
}

// ---------------------------------------------------------------------------------
// dead letters

/// Settles letters taken from a dead-letter stream: an ack deletes the letter.
struct Letters {
    inner: Arc<Inner>,
    key: String,
    pending: Mutex<HashMap<u64, String>>,
    settled: Notify,
}

impl Letters {
    fn take(&self, tag: u64) -> Option<String> {
        let id = self.pending.lock().remove(&tag);
        self.settled.notify_one();
        id
    }
}

impl Acker for Letters {
    fn ack(&self, tag: u64) {
        let Some(id) = self.take(tag) else { return };
        let inner = Arc::clone(&self.inner);
        let mut cmd = redis::cmd("XDEL");
        cmd.arg(&self.key).arg(&id);
        self.inner.letter_deletions.spawn(async move {
            if let Err(error) = inner.link.query::<i64>("XDEL", &cmd).await {
                tracing::warn!(%error, id, "a replayed dead letter was not deleted");
            }
        });
    }

    fn requeue(&self, tag: u64) {
        // It was never removed: it stays where it is, in its order.
        self.take(tag);
    }

    fn dead_letter(&self, tag: u64, letter: Envelope) -> BoxFuture<'static, Result<()>> {
        // Already a dead letter: to the end of its stream, in place of the original.
        let id = self.take(tag);
        let inner = Arc::clone(&self.inner);
        let key = self.key.clone();
        Box::pin(async move {
            let Some(id) = id else { return Ok(()) };
            let mut pipe = redis::pipe();
            pipe.atomic();
            let add = pipe.cmd("XADD").arg(&key).arg("*");
            for (name, value) in fields::to_fields(&letter, None) {
                add.arg(name.as_ref()).arg(value.as_ref());
            }
            pipe.ignore().cmd("XDEL").arg(&key).arg(&id).ignore();
            inner
                .link
                .query_pipe::<()>("moving a dead letter", &pipe)
                .await
        })
    }
}

/// Yields the letters of the dead-letter stream `key` present now, oldest first, at
/// most `prefetch` unsettled; the stream ends after the last of them.
pub(crate) async fn take_letters(
    inner: Arc<Inner>,
    key: String,
    prefetch: usize,
) -> Result<Box<dyn Consumer>> {
    let last: Value = inner
        .link
        .query(
            "reading dead letters",
            redis::cmd("XREVRANGE")
                .arg(&key)
                .arg("+")
                .arg("-")
                .arg("COUNT")
                .arg(1),
        )
        .await?;
    let end = entries(&last).into_iter().next().map(|(id, _)| id);
    let letters = Arc::new(Letters {
        inner: Arc::clone(&inner),
        key,
        pending: Mutex::new(HashMap::new()),
        settled: Notify::new(),
    });
    let (consumer, feed) = ChannelConsumer::new();
    let (tx, mut cancelled) = (feed.deliveries, feed.cancelled);
    tokio::spawn(async move {
        let Some(end) = end else { return };
        let mut start = "-".to_string();
        let mut next_tag = 1u64;
        loop {
            if *cancelled.borrow() || tx.is_closed() {
                return;
            }
            let room = prefetch.saturating_sub(letters.pending.lock().len());
            if room == 0 {
                tokio::select! {
                    _ = letters.settled.notified() => {}
                    _ = cancelled.changed() => {}
                }
                continue;
            }
            let mut cmd = redis::cmd("XRANGE");
            cmd.arg(&letters.key)
                .arg(&start)
                .arg(&end)
                .arg("COUNT")
                .arg(room);
            let batch = match inner
                .link
                .query::<Value>("reading dead letters", &cmd)
                .await
            {
                Ok(reply) => entries(&reply),
                Err(error) => {
                    tracing::debug!(%error, "reading dead letters failed");
                    return;
                }
            };
            let Some((last_id, _)) = batch.last() else {
                return; // all of them read
            };
            start = format!("({last_id}");
            let done = *last_id == end;
            for (id, entry) in batch {
                let tag = next_tag;
                next_tag += 1;
                letters.pending.lock().insert(tag, id);
                let acker: Arc<dyn Acker> = Arc::clone(&letters) as Arc<dyn Acker>;
                if tx.send(Delivery::new(entry.envelope, tag, acker)).is_err() {
                    return;
                }
            }
            if done {
                return;
            }
        }
    });
    Ok(Box::new(consumer))
}

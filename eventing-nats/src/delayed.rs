//! What waits on the server: the delayed retry stage and scheduled sends.
//!
//! nats-server 2.9 has no per-message schedule, and a delayed `-NAK` of the
//! original message would keep it pending on the queue's consumer, where it counts
//! against `max_ack_pending` (measured on 2.9.10): a queue with more failing
//! messages than that limit would stop taking new ones, and the headers of a
//! NAKed message cannot change (the runtime counts attempts in them). So a message
//! that waits is a *copy* in the work-queue stream [`DELAY_STREAM`] (file storage),
//! with the time it is due in the header [`DUE`]:
//!
//! - a retry copy ([`Acker::delay`](eventing::provider::Acker::delay)) on the
//!   subject of its delay queue `<queue>.delay.<ms>` ([`names::delay_subject`]),
//!   stored (publish ack) before the original is acknowledged;
//! - a scheduled send (`publish_delayed`) on `sched.<event>`.
//!
//! A *mover* drains each subject through a durable pull consumer: a message not
//! due yet is NAKed with the delay left (`-NAK {"delay": ...}`: the server holds
//! it and hands it out again when due); a due one is published to its event's
//! subject (a retry copy with the header
//! [`TARGET_QUEUE`](crate::headers::TARGET_QUEUE), so only its own queue takes
//! it) with `Nats-Msg-Id` `eventing-delay:<sequence>` (a move repeated after a
//! crash or a lost ack is stored once within the event stream's duplicate window,
//! 2 min, longer than `ack_wait`), and only then acknowledged, which removes it
//! from the work queue. Every
//! subscription of a queue runs the movers of the queue's delay queues (instances
//! compete on them); every provider with a subscription runs the mover of
//! scheduled sends, on the consumer [`SCHEDULE_CONSUMER`].
//!
//! A delay queue's messages all wait the same time, so they come due in the order
//! they were stored, and a bounded `max_ack_pending` ([`DELAY_ACK_PENDING`]) only
//! bounds how many the server holds NAKed at once, never making a due message wait
//! behind a later one. Scheduled sends come due in any order: up to
//! [`SCHEDULE_ACK_PENDING`] wait NAKed; beyond that a send due sooner can wait
//! behind them until they are moved.
//!
//! [`DELAY_STREAM`]: crate::names::DELAY_STREAM
//! [`SCHEDULE_CONSUMER`]: crate::names::SCHEDULE_CONSUMER
//! [`DUE`]: crate::headers::DUE

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_nats::jetstream as js;
use async_nats::jetstream::AckKind;
use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, pull};
use async_nats::jetstream::stream::{self, RetentionPolicy, StorageType};
use bytes::Bytes;
use eventing::backoff::Backoff;
use eventing::topology::QueueSpec;
use eventing::{Headers, Result};
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::{Inner, Outgoing, api_error, headers, names, unavailable};

/// How many messages a delay queue's consumer hands out unacknowledged (NAKed
/// ones waiting for their time among them).
pub(crate) const DELAY_ACK_PENDING: i64 = 1_000;

/// The same for the consumer of scheduled sends.
pub(crate) const SCHEDULE_ACK_PENDING: i64 = 10_000;

/// Messages asked for per pull request of a mover.
const BATCH: usize = 512;

/// How long a mover's pull request waits at the server.
const PULL_EXPIRES: Duration = Duration::from_secs(2);

/// Messages a mover settles at once.
const CONCURRENCY: usize = 256;

/// After a failed move, how long until the message is tried again.
const MOVE_RETRY: Duration = Duration::from_secs(1);

/// Pauses of a mover whose consumer cannot be created (server down).
const BACKOFF: Backoff =
    Backoff::new(Duration::from_millis(100), Duration::from_secs(2)).jitter(0.5);

/// Milliseconds since the Unix epoch, `delay` from now.
pub(crate) fn due_after(delay: Duration) -> u64 {
    let due = SystemTime::now() + delay;
    due.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn now_ms() -> u64 {
    due_after(Duration::ZERO)
}

/// Where due messages of a mover go.
#[derive(Clone, Debug)]
pub(crate) enum Target {
    /// Retry copies of one queue: back to that queue alone.
    Queue {
        event: String,
        durable: bool,
        /// The escaped queue name (the target-queue header's value).
        target: String,
    },
    /// Scheduled sends: to their event (named by the subject), every queue.
    Events,
}

/// One subject of the delay stream and its consumer.
#[derive(Clone, Debug)]
pub(crate) struct Job {
    pub(crate) consumer: String,
    pub(crate) subject: String,
    target: Target,
    per_process: bool,
    ack_pending: i64,
    description: String,
}

impl Job {
    /// The jobs of the delay queues of `spec` (none without delays).
    pub(crate) fn of_queue(spec: &QueueSpec) -> Result<Vec<Job>> {
        spec.retry_delays
            .iter()
            .map(|&delay| {
                let name = spec.delay_queue(delay);
                Ok(Job {
                    consumer: names::consumer(&name)?,
                    subject: names::delay_subject(&name),
                    target: Target::Queue {
                        event: spec.event.clone(),
                        durable: spec.durable,
                        target: names::escape(&spec.name),
                    },
                    per_process: spec.per_process,
                    ack_pending: DELAY_ACK_PENDING,
                    description: format!("eventing delay queue {name}"),
                })
            })
            .collect()
    }

    /// The job of scheduled sends.
    fn schedule() -> Job {
        Job {
            consumer: names::SCHEDULE_CONSUMER.to_string(),
            subject: names::SCHEDULE_SUBJECTS.to_string(),
            target: Target::Events,
            per_process: false,
            ack_pending: SCHEDULE_ACK_PENDING,
            description: "eventing scheduled sends".into(),
        }
    }
}

impl Inner {
    /// Creates the delay stream unless known to exist.
    pub(crate) async fn ensure_delay_stream(&self) -> Result<()> {
        if self.delay_stream.load(Ordering::Acquire) {
            return Ok(());
        }
        let config = stream::Config {
            name: names::DELAY_STREAM.to_string(),
            subjects: vec![
                names::DELAY_SUBJECTS.to_string(),
                names::SCHEDULE_SUBJECTS.to_string(),
            ],
            description: Some(
                "eventing: retry copies in the delayed stage and scheduled sends".into(),
            ),
            storage: StorageType::File,
            retention: RetentionPolicy::WorkQueue,
            num_replicas: self.url.replicas,
            ..Default::default()
        };
        self.js
            .get_or_create_stream(config)
            .await
            .map_err(|e| api_error("creating the delay stream", &e))?;
        self.delay_stream.store(true, Ordering::Release);
        Ok(())
    }

    /// Creates (or finds) the consumer of `job`.
    pub(crate) async fn job_consumer(&self, job: &Job) -> Result<js::consumer::PullConsumer> {
        self.ensure_delay_stream().await?;
        let config = pull::Config {
            durable_name: Some(job.consumer.clone()),
            description: Some(job.description.clone()),
            filter_subject: job.subject.clone(),
            ack_policy: AckPolicy::Explicit,
            ack_wait: self.url.ack_wait,
            deliver_policy: DeliverPolicy::All,
            max_ack_pending: job.ack_pending,
            inactive_threshold: if job.per_process {
                self.url.inactive_threshold
            } else {
                Duration::ZERO
            },
            num_replicas: self.url.replicas,
            ..Default::default()
        };
        let created = self
            .js
            .create_consumer_on_stream(config.clone(), names::DELAY_STREAM)
            .await;
        match created {
            Ok(consumer) => Ok(consumer),
            Err(error) if error.to_string().contains("stream not found") => {
                // Deleted behind our back: create it again.
                self.delay_stream.store(false, Ordering::Release);
                self.ensure_delay_stream().await?;
                self.js
                    .create_consumer_on_stream(config, names::DELAY_STREAM)
                    .await
                    .map_err(|e| api_error(&format!("creating `{}`", job.description), &e))
            }
            Err(error) => Err(api_error(
                &format!("creating `{}`", job.description),
                &error,
            )),
        }
    }

    /// Stores a message that waits until `due` (ms since the epoch) on `subject`
    /// of the delay stream, retrying until the send timeout; returns after the
    /// publish ack. `durable` is recorded for scheduled sends.
    pub(crate) async fn store_waiting(
        &self,
        subject: String,
        headers_of: &Headers,
        body: Bytes,
        due: u64,
        durable: Option<bool>,
    ) -> Result<()> {
        let deadline = Instant::now() + self.send_timeout;
        let due = due.to_string();
        let mut extra = vec![(headers::DUE, due.as_str())];
        if let Some(durable) = durable {
            extra.push((headers::DURABLE, if durable { "true" } else { "false" }));
        }
        let map = headers::to_nats(headers_of, &extra)?;
        let mut attempt = 0;
        loop {
            let tried = async {
                self.ensure_delay_stream().await?;
                let ack = self
                    .publisher
                    .publish_with_headers(subject.clone(), map.clone(), body.clone())
                    .await
                    .map_err(|e| unavailable(format!("storing a delayed message: {e}")))?;
                ack.await
                    .map(|_| ())
                    .map_err(|e| unavailable(format!("storing a delayed message: {e}")))
            };
            let error = match tried.await {
                Ok(()) => return Ok(()),
                Err(error @ eventing::Error::Unavailable { .. }) => error,
                Err(error) => return Err(error),
            };
            if error.to_string().contains("stream not found") {
                self.delay_stream.store(false, Ordering::Release);
            }
            attempt += 1;
            let wait = BACKOFF.delay(attempt);
            if Instant::now() + wait >= deadline {
                return Err(error);
            }
            tracing::debug!(subject, attempt, %error, "storing a delayed message failed; retrying");
            tokio::time::sleep(wait).await;
        }
    }

    /// Deletes the consumers of `jobs` and what waits on their subjects (the
    /// retries of a per-process queue whose subscription ended).
    pub(crate) async fn drop_jobs(&self, jobs: &[Job]) {
        for job in jobs {
            self.delete_consumer(names::DELAY_STREAM, &job.consumer)
                .await;
            let body = format!("{{\"filter\":\"{}\"}}", job.subject);
            let subject = format!("$JS.API.STREAM.PURGE.{}", names::DELAY_STREAM);
            if let Err(error) = self.api(subject, Bytes::from(body)).await {
                tracing::debug!(%error, subject = job.subject, "delayed retries not purged");
            }
        }
    }
}

/// Runs the movers of `jobs` until `stop` turns true (or its sender goes).
pub(crate) fn spawn_movers(inner: &Arc<Inner>, jobs: &[Job], stop: &watch::Receiver<bool>) {
    for job in jobs {
        tokio::spawn(run(Arc::downgrade(inner), job.clone(), stop.clone()));
    }
}

/// Starts this provider's mover of scheduled sends, once; it runs until the
/// provider is closed or dropped.
pub(crate) fn ensure_scheduler(inner: &Arc<Inner>) {
    if inner.scheduler.swap(true, Ordering::AcqRel) {
        return;
    }
    let stop = inner.stop.subscribe();
    tokio::spawn(run(Arc::downgrade(inner), Job::schedule(), stop));
}

/// A mover: pulls the messages of `job`, moves the due ones, NAKs the others
/// with the time they have left.
async fn run(inner: Weak<Inner>, job: Job, mut stop: watch::Receiver<bool>) {
    let span = tracing::debug_span!("nats.mover", consumer = %job.consumer);
    let _ = tracing::Instrument::instrument(
        async move {
            let mut attempt = 0;
            'consumer: loop {
                if *stop.borrow() {
                    return;
                }
                let Some(strong) = inner.upgrade() else {
                    return;
                };
                let consumer = match strong.job_consumer(&job).await {
                    Ok(consumer) => consumer,
                    Err(error) => {
                        drop(strong);
                        attempt += 1;
                        tracing::debug!(%error, attempt, "mover: no consumer yet");
                        tokio::select! {
                            _ = stop.changed() => return,
                            () = tokio::time::sleep(BACKOFF.delay(attempt)) => continue,
                        }
                    }
                };
                drop(strong);
                attempt = 0;
                loop {
                    if *stop.borrow() {
                        return;
                    }
                    let Some(strong) = inner.upgrade() else {
                        return;
                    };
                    let batch = consumer
                        .batch()
                        .max_messages(BATCH)
                        .expires(PULL_EXPIRES)
                        .messages()
                        .await;
                    let mut messages = match batch {
                        Ok(messages) => messages,
                        Err(error) => {
                            tracing::debug!(%error, "mover: pull failed");
                            tokio::select! {
                                _ = stop.changed() => return,
                                () = tokio::time::sleep(MOVE_RETRY) => continue 'consumer,
                            }
                        }
                    };
                    let mut running = FuturesUnordered::new();
                    let mut stopped = false;
                    let mut failed = false;
                    loop {
                        tokio::select! {
                            biased;
                            _ = stop.changed(), if !stopped => {
                                stopped = true;
                                break;
                            }
                            Some(()) = running.next(), if !running.is_empty() => {}
                            next = messages.next(), if running.len() < CONCURRENCY => match next {
                                Some(Ok(message)) => running.push(settle(&strong, &job, message)),
                                Some(Err(error)) => {
                                    tracing::debug!(%error, "mover: pull ended");
                                    failed = true;
                                    break;
                                }
                                None => break,
                            },
                        }
                    }
                    // What was taken is settled before anything else.
                    while running.next().await.is_some() {}
                    drop(running);
                    if stopped {
                        return;
                    }
                    if failed {
                        drop(strong);
                        tokio::select! {
                            _ = stop.changed() => return,
                            () = tokio::time::sleep(MOVE_RETRY) => continue 'consumer,
                        }
                    }
                }
            }
        },
        span,
    )
    .await;
}

/// Moves `message` if it is due, else NAKs it with the time it has left.
async fn settle(inner: &Inner, job: &Job, message: js::Message) {
    let due = message
        .headers
        .as_ref()
        .and_then(|h| headers::find(h, headers::DUE))
        .and_then(|v| v.as_str().parse::<u64>().ok());
    let now = now_ms();
    if let Some(due) = due
        && due > now
    {
        let left = Duration::from_millis(due - now);
        if let Err(error) = message.ack_with(AckKind::Nak(Some(left))).await {
            tracing::debug!(%error, "mover: NAK not sent; the message comes back after ack_wait");
        }
        return;
    }
    // Due (or without a due time: moved at once rather than held for ever).
    let (event, durable, target) = match &job.target {
        Target::Queue {
            event,
            durable,
            target,
        } => (event.clone(), *durable, Some(target.as_str())),
        Target::Events => {
            let event = names::event_of_schedule_subject(message.subject.as_str());
            let durable = message
                .headers
                .as_ref()
                .and_then(|h| headers::find(h, headers::DURABLE))
                .is_none_or(|v| v.as_str() != "false");
            let Some(event) = event else {
                tracing::error!(subject = %message.subject, "scheduled send on a subject that names no event: left in place");
                let _ = message.ack_with(AckKind::Nak(Some(MOVE_RETRY * 60))).await;
                return;
            };
            (event, durable, None)
        }
    };
    let sequence = message.info().map(|i| i.stream_sequence).unwrap_or(0);
    let id = format!("{}:{sequence}", names::DELAY_STREAM);
    let envelope = headers::to_envelope(
        message.headers.as_ref(),
        message.payload.clone(),
        None,
        None,
    );
    let with_target;
    let only_id;
    let extra: &[(&str, &str)] = match target {
        Some(target) => {
            with_target = [
                (headers::TARGET_QUEUE, target),
                (headers::MSG_ID, id.as_str()),
            ];
            &with_target
        }
        None => {
            only_id = [(headers::MSG_ID, id.as_str())];
            &only_id
        }
    };
    let moved = inner
        .publish(
            &event,
            durable,
            Outgoing {
                headers: &envelope.headers,
                extra,
                dedupe: false,
            },
            envelope.body.clone(),
        )
        .await;
    match moved {
        Ok(()) => {
            // A plain ack: if it is lost the message comes back after ack_wait
            // (30 s) and is moved again, a duplicate the event stream drops
            // (same Nats-Msg-Id) within its 2 minute window.
            if let Err(error) = message.ack().await {
                tracing::debug!(%error, "mover: ack of a moved message not sent");
            }
        }
        Err(error) => {
            tracing::warn!(%error, event, "mover: a due message could not be published; trying again");
            let _ = message.ack_with(AckKind::Nak(Some(MOVE_RETRY))).await;
        }
    }
}

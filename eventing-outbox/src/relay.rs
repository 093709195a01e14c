//! The relay: publishes committed outbox rows through the provider.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use eventing::Envelope;
use eventing::backoff::Backoff;
use futures_util::StreamExt;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::backend::{Backend, ClaimSpec, Failure, StoredRow, now_ms};
use crate::error::{Error, Result};
use crate::outbox::Outbox;

/// How a relay works.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct RelayOptions {
    /// Rows claimed at once (default 100).
    pub batch: u32,
    /// How often to look for rows without a wake-up (default 1 s): rows committed
    /// by another process on SQLite, or a missed `NOTIFY`.
    pub poll_interval: Duration,
    /// SQLite: how long a claim is this relay's alone (default 30 s). A relay that
    /// dies keeps its rows this long; one that publishes for longer stops and
    /// claims again. PostgreSQL holds rows by row locks instead.
    pub lease: Duration,
    /// Waits between attempts while publishing fails (default 50 ms doubling to 5 s).
    pub backoff: Backoff,
    /// Sent rows are deleted once older than this (default 1 hour); `None` keeps them.
    pub retention: Option<Duration>,
    /// How often the retention cleanup runs (default 1 minute).
    pub cleanup_interval: Duration,
    /// The relay's name in the table and logs (default a fresh UUID). Give a restarted
    /// relay its old name to take its SQLite leases back at once.
    pub name: String,
}

impl Default for RelayOptions {
    fn default() -> Self {
        Self {
            batch: 100,
            poll_interval: Duration::from_secs(1),
            lease: Duration::from_secs(30),
            backoff: Backoff::new(Duration::from_millis(50), Duration::from_secs(5)),
            retention: Some(Duration::from_secs(3600)),
            cleanup_interval: Duration::from_secs(60),
            name: eventing::header::new_message_id(),
        }
    }
}

impl RelayOptions {
    pub(crate) fn spec(&self) -> ClaimSpec {
        ClaimSpec {
            relay: self.name.clone(),
            batch: i64::from(self.batch.max(1)),
            lease: self.lease,
        }
    }
}

/// What a relay did so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RelayStats {
    /// Rows published and marked sent.
    pub published: u64,
    /// Publishes or database calls that failed (and were retried).
    pub failures: u64,
    /// Sent rows deleted by the retention policy.
    pub deleted: u64,
    /// Rows set aside because they can never be published (see
    /// [`Outbox::failed`](crate::Outbox::failed)).
    pub failed: u64,
}

#[derive(Default)]
struct Counters {
    published: AtomicU64,
    failures: AtomicU64,
    deleted: AtomicU64,
    failed: AtomicU64,
}

/// A running relay task. Dropping it stops the task.
pub struct Relay {
    stop: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
    counters: Arc<Counters>,
}

impl Relay {
    pub(crate) fn spawn<DB: Backend>(outbox: Outbox<DB>, options: RelayOptions) -> Self {
        let (stop, stopped) = watch::channel(false);
        let counters = Arc::new(Counters::default());
        let task = tokio::spawn(run(outbox, options, stopped, Arc::clone(&counters)));
        Self {
            stop,
            task: Some(task),
            counters,
        }
    }

    /// What it did so far.
    pub fn stats(&self) -> RelayStats {
        RelayStats {
            published: self.counters.published.load(Ordering::Relaxed),
            failures: self.counters.failures.load(Ordering::Relaxed),
            deleted: self.counters.deleted.load(Ordering::Relaxed),
            failed: self.counters.failed.load(Ordering::Relaxed),
        }
    }

    /// Stops after the batch in hand and waits for the task.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// One claim-publish-mark round.
pub(crate) struct Pass {
    pub(crate) claimed: usize,
    pub(crate) published: usize,
    /// A row set aside for good (it can never be published): the relay goes on.
    pub(crate) failed: usize,
    /// A publish that failed for now: the relay backs off and tries again.
    pub(crate) error: Option<Error>,
}

pub(crate) async fn pass<DB: Backend>(outbox: &Outbox<DB>, spec: &ClaimSpec) -> Result<Pass> {
    let shared = &outbox.inner;
    let claimed = DB::claim(&shared.pool, &shared.tables, spec).await?;
    let started = Instant::now();
    let mut sent = Vec::with_capacity(claimed.rows.len());
    let mut failure = None;
    for row in &claimed.rows {
        // A lease must not run out under a slow batch: stop and claim again.
        if started.elapsed() > spec.lease / 2 {
            break;
        }
        let id = row.id;
        match publish(outbox, row).await {
            Ok(()) => sent.push(id),
            Err(error) => {
                failure = Some((id, error));
                break;
            }
        }
    }
    let count = claimed.rows.len();
    let (failure, error) = match failure {
        Some((id, error)) if permanent(&error) => {
            let reason = error.to_string();
            tracing::error!(row = id, %reason, relay = %spec.relay, "outbox row can never be published; set aside");
            (
                Some(Failure {
                    id,
                    dead: Some(reason),
                }),
                None,
            )
        }
        Some((id, error)) => (Some(Failure { id, dead: None }), Some(error)),
        None => (None, None),
    };
    DB::finish(
        &shared.pool,
        &shared.tables,
        spec,
        claimed,
        &sent,
        failure.as_ref(),
    )
    .await?;
    Ok(Pass {
        claimed: count,
        published: sent.len(),
        failed: usize::from(error.is_none() && failure.is_some()),
        error,
    })
}

/// True when publishing the row again cannot succeed: it cannot be read back, or
/// the runtime or the broker refuses its content for good. Anything else (the broker
/// down, a timeout, a refusal that may pass) is retried.
fn permanent(error: &Error) -> bool {
    match error {
        Error::CorruptRow { .. } => true,
        Error::Eventing(error) => matches!(
            error,
            eventing::Error::TooLarge { .. }
                | eventing::Error::Encode { .. }
                | eventing::Error::Pipeline { .. }
                | eventing::Error::UnknownEvent { .. }
                | eventing::Error::Unsupported { .. }
        ),
        _ => false,
    }
}

async fn publish<DB: Backend>(outbox: &Outbox<DB>, row: &StoredRow) -> Result<()> {
    let headers: Vec<(String, String)> =
        serde_json::from_str(&row.headers).map_err(|e| Error::CorruptRow {
            id: row.id,
            reason: format!("headers: {e}"),
        })?;
    let envelope = Envelope {
        headers: headers.into_iter().collect(),
        body: Bytes::copy_from_slice(&row.body),
    };
    outbox
        .inner
        .manager
        .publish_prepared(&row.address, row.durable, envelope)
        .await?;
    Ok(())
}

async fn run<DB: Backend>(
    outbox: Outbox<DB>,
    options: RelayOptions,
    mut stopped: watch::Receiver<bool>,
    counters: Arc<Counters>,
) {
    let spec = options.spec();
    let shared = Arc::clone(&outbox.inner);
    let mut wakes = match DB::wake_stream(&shared.pool, &shared.tables).await {
        Ok(stream) => stream,
        Err(error) => {
            tracing::warn!(%error, relay = %spec.relay, "no commit notifications; polling");
            None
        }
    };
    let mut failures: u32 = 0;
    let mut last_cleanup = Instant::now();
    tracing::info!(relay = %spec.relay, database = DB::DATABASE, "outbox relay started");
    while !*stopped.borrow() {
        let outcome = pass(&outbox, &spec).await;
        let (more, error) = match outcome {
            Ok(pass) => {
                counters
                    .published
                    .fetch_add(pass.published as u64, Ordering::Relaxed);
                counters
                    .failed
                    .fetch_add(pass.failed as u64, Ordering::Relaxed);
                (
                    pass.claimed as i64 >= spec.batch || pass.failed > 0,
                    pass.error,
                )
            }
            Err(error) => (false, Some(error)),
        };
        if let Some(error) = error {
            failures = failures.saturating_add(1);
            counters.failures.fetch_add(1, Ordering::Relaxed);
            let delay = options.backoff.delay(failures);
            tracing::warn!(%error, relay = %spec.relay, attempt = failures, ?delay, "outbox relay failed; retrying");
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = stopped.changed() => {}
            }
            continue;
        }
        failures = 0;
        if let Some(retention) = options.retention {
            if last_cleanup.elapsed() >= options.cleanup_interval {
                last_cleanup = Instant::now();
                let before = now_ms() - retention.as_millis() as i64;
                match DB::delete_sent(&shared.pool, &shared.tables, before).await {
                    Ok(n) => {
                        counters.deleted.fetch_add(n, Ordering::Relaxed);
                    }
                    Err(error) => tracing::warn!(%error, "outbox retention cleanup failed"),
                }
            }
        }
        if more {
            continue;
        }
        let notified = shared.wake.notified();
        tokio::select! {
            _ = notified => {}
            Some(()) = async {
                match wakes.as_mut() {
                    Some(stream) => stream.next().await,
                    None => std::future::pending().await,
                }
            } => {}
            _ = tokio::time::sleep(options.poll_interval) => {}
            _ = stopped.changed() => {}
        }
    }
    tracing::info!(relay = %spec.relay, "outbox relay stopped");
}

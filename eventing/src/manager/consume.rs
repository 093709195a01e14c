//! The loop that feeds one listener from its queue: bounded concurrency, pipelines,
//! retries with backoff, the delayed retry stage, dead letters, and a draining
//! shutdown.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use tokio::sync::watch;
use tracing::Instrument;

use super::{Counters, ListenerOptions, RetryPolicy};
use crate::call::CallError;
use crate::envelope::{Envelope, header};
use crate::listener::{Context, ErasedListener, ListenerDescriptor};
use crate::metrics::{self, ListenerMetrics};
use crate::pipeline::{Call, EnvelopePipeline, Outcome};
use crate::provider::{Acker, ConsumeOptions, Consumer, Delivery, DynProvider};
use crate::topology::QueueSpec;

/// A listener bound to its queue.
pub(super) struct Active {
    pub(super) descriptor: &'static ListenerDescriptor,
    pub(super) queue: QueueSpec,
    pub(super) queue_name: Arc<str>,
    pub(super) handler: Arc<dyn ErasedListener>,
    pub(super) pipelines: Arc<[Arc<dyn EnvelopePipeline>]>,
    pub(super) options: ListenerOptions,
    pub(super) stats: Arc<Counters>,
    pub(super) provider: Arc<dyn DynProvider>,
    pub(super) reconnect: RetryPolicy,
    /// Larger bodies are dead-lettered without decoding (the manager's
    /// `max_body_size`, the limit its sends observe).
    pub(super) max_body: usize,
    pub(super) state: AtomicU8,
    /// The event versions the listener accepts.
    pub(super) accepts: Option<semver::VersionReq>,
    pub(super) metrics: ListenerMetrics,
}

/// Listener states as stored in [`Active::state`].
pub(super) const CONSUMING: u8 = 1;
pub(super) const RECONNECTING: u8 = 2;
pub(super) const STOPPED: u8 = 3;

impl Active {
    fn set_state(&self, state: u8) {
        self.state.store(state, Ordering::Relaxed);
    }

    /// Declares the queue again and subscribes anew (after a lost connection).
    async fn resubscribe(&self) -> crate::Result<Box<dyn Consumer>> {
        self.provider
            .declare(std::slice::from_ref(&self.queue))
            .await?;
        let options = ConsumeOptions::new(self.options.prefetch);
        self.provider.subscribe(&self.queue, options).await
    }
}

pub(super) async fn run(
    mut consumer: Box<dyn Consumer>,
    active: Arc<Active>,
    mut stop: watch::Receiver<bool>,
    shutdown_timeout: Duration,
) {
    let concurrency = active.options.concurrency.max(1);
    let mut running: FuturesUnordered<Running> = FuturesUnordered::new();
    // Created once: a fresh `changed()` per message would register and drop a waiter
    // under a lock on every iteration.
    let stopping = async move {
        while !*stop.borrow_and_update() {
            if stop.changed().await.is_err() {
                break;
            }
        }
    };
    tokio::pin!(stopping);
    // Drives running calls and watches for shutdown while waiting on `$wait`;
    // breaks out of `$outer` on shutdown.
    macro_rules! while_waiting_for {
        ($outer:lifetime, $wait:expr) => {{
            let wait = $wait;
            tokio::pin!(wait);
            loop {
                tokio::select! {
                    biased;
                    () = &mut stopping => break $outer,
                    Some(()) = running.next(), if !running.is_empty() => {}
                    out = &mut wait => break out,
                }
            }
        }};
    }
    active.set_state(CONSUMING);
    'consuming: loop {
        let woke = std::future::poll_fn(|cx| {
            pump(
                cx,
                stopping.as_mut(),
                &mut running,
                &mut consumer,
                &active,
                concurrency,
            )
        })
        .await;
        if woke == Woke::Stop {
            break;
        }
        // The stream ended without cancel(): the connection is gone. Subscribe again
        // with capped exponential backoff and jitter, while running calls go on.
        active.set_state(RECONNECTING);
        active.stats.reconnects.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(queue = %active.queue.name, "consumer lost; resubscribing");
        let mut attempt = 0;
        consumer = loop {
            attempt += 1;
            let wait = active.reconnect.backoff(attempt);
            while_waiting_for!('consuming, tokio::time::sleep(wait));
            match while_waiting_for!('consuming, active.resubscribe()) {
                Ok(fresh) => break fresh,
                Err(error) => tracing::warn!(
                    queue = %active.queue.name, attempt, %error, "resubscribe failed"
                ),
            }
        };
        tracing::info!(queue = %active.queue.name, attempt, "resubscribed");
        active.set_state(CONSUMING);
    }

    // Shutdown: take no more, give back what is buffered, let running calls finish.
    if let Err(error) = consumer.cancel().await {
        tracing::warn!(queue = %active.queue.name, %error, "cancelling the consumer failed");
    }
    let give_back = async {
        while let Some(item) = consumer.next().await {
            if let Ok(delivery) = item {
                delivery.acker.requeue(delivery.tag);
            }
        }
    };
    let finish = async { while running.next().await.is_some() {} };
    let drained = tokio::time::timeout(shutdown_timeout, async {
        tokio::join!(give_back, finish);
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            queue = %active.queue.name,
            still_running = running.len(),
            "shutdown timeout: unfinished messages go back to the broker"
        );
    }
    drop(running);
    drop(consumer);
    active.set_state(STOPPED);
}

/// Why the consume loop woke up.
#[derive(Debug, PartialEq, Eq)]
enum Woke {
    Stop,
    Lost,
}

/// A listener call still running (or retrying, or dead-lettering).
type Running = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Deliveries taken per wake-up before yielding to other tasks.
const BATCH: u32 = 128;

/// Runs finished calls off, takes deliveries while there is room and starts them.
/// Returns when shutdown begins or the stream ends (lost connection).
fn pump(
    cx: &mut TaskContext<'_>,
    stopping: Pin<&mut impl Future<Output = ()>>,
    running: &mut FuturesUnordered<Running>,
    consumer: &mut Box<dyn Consumer>,
    active: &Arc<Active>,
    concurrency: usize,
) -> Poll<Woke> {
    if stopping.poll(cx).is_ready() {
        return Poll::Ready(Woke::Stop);
    }
    let mut budget = BATCH;
    loop {
        while let Poll::Ready(Some(())) = running.poll_next_unpin(cx) {}
        let mut started = false;
        while running.len() < concurrency {
            if budget == 0 {
                // Let other tasks run; come back at once.
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            budget -= 1;
            match consumer.poll_next_unpin(cx) {
                Poll::Ready(Some(Ok(delivery))) => {
                    if let Some(call) = start(delivery, active, cx) {
                        running.push(call);
                        started = true;
                    }
                }
                Poll::Ready(Some(Err(error))) => {
                    tracing::warn!(queue = %active.queue.name, %error, "consumer error");
                }
                Poll::Ready(None) => return Poll::Ready(Woke::Lost),
                Poll::Pending => break,
            }
        }
        if !started {
            return Poll::Pending;
        }
        // Poll what was just pushed so it registers its wake-ups.
    }
}

/// Starts handling a delivery. Most listener calls finish at their first poll: then
/// the message is acknowledged here and nothing is allocated for it; otherwise the
/// rest of the handling is returned to run alongside the others.
fn start(delivery: Delivery, active: &Arc<Active>, cx: &mut TaskContext<'_>) -> Option<Running> {
    let span = tracing::info_span!(
        "handle",
        event = %active.queue.event,
        listener = active.descriptor.name(),
        message_id = %delivery.envelope.message_id(),
        trace_id = tracing::field::Empty,
    );
    // Before the span is first entered: an OpenTelemetry layer fixes its parent then.
    crate::trace::adopt_remote_parent(&span, &delivery.envelope);
    let entered = span.clone();
    entered.in_scope(|| {
        let Delivery {
            envelope: original,
            tag,
            redelivered,
            acker,
        } = delivery;
        let (prior, stage) = retry_state(&original);
        let mut handling = Handling {
            active: Arc::clone(active),
            envelope: original.clone(),
            original,
            prior,
            stage,
            tag,
            redelivered,
            acker,
            span,
            started: metrics::now(),
        };
        if let Some(reason) = handling.refuse() {
            let span = handling.span.clone();
            return Some(Box::pin(handling.dead_letter(reason, 0).instrument(span)) as Running);
        }
        let mut call = handling.call(1);
        let span = handling.span.clone();
        match call.as_mut().poll(cx) {
            Poll::Ready(outcome) => match handling.settle(outcome, 1) {
                Next::Done => None,
                next => Some(Box::pin(handling.proceed(next, 1).instrument(span)) as Running),
            },
            Poll::Pending => Some(Box::pin(
                async move {
                    let next = handling.settle(call.await, 1);
                    handling.proceed(next, 1).await;
                }
                .instrument(span),
            )),
        }
    })
}

/// What to do after a call.
enum Next {
    Done,
    Retry(Duration),
    /// To the delayed stage: wait this long on the broker (the last error given).
    Delay(Duration, String),
    DeadLetter(String),
}

/// Listener calls in earlier rounds and delays waited, from the headers of a
/// message back from the delayed stage (absent or malformed: a first round).
fn retry_state(envelope: &Envelope) -> (u32, u32) {
    let read = |name: &str| {
        let value = envelope.headers.get(name)?;
        let parsed = value.parse::<u32>().ok();
        if parsed.is_none() {
            tracing::warn!(header = name, value, "malformed retry header; taken as 0");
        }
        parsed
    };
    (
        read(header::RETRY_ATTEMPTS).unwrap_or(0),
        read(header::RETRY_STAGE).unwrap_or(0),
    )
}

/// One delivery being handled.
struct Handling {
    active: Arc<Active>,
    /// As received, for dead-lettering.
    original: Envelope,
    /// As the receiving pipelines left it.
    envelope: Envelope,
    /// Listener calls in earlier rounds (the delayed stage's `x-retry-attempts`).
    prior: u32,
    /// Delays of the delayed stage already waited (`x-retry-stage`).
    stage: u32,
    tag: u64,
    redelivered: bool,
    acker: Arc<dyn Acker>,
    span: tracing::Span,
    started: metrics::Started,
}

impl Handling {
    /// The reason to dead-letter the message without calling the listener, if any:
    /// a body over the size limit, another event's message, a version outside the
    /// listener's range, or a receiving pipeline refusing it.
    fn refuse(&mut self) -> Option<String> {
        let active = &self.active;
        let size = self.original.body.len();
        if size > active.max_body {
            return Some(format!(
                "body of {size} bytes exceeds the limit of {} bytes (max_body_size)",
                active.max_body
            ));
        }
        if let Some(sent_to) = self.original.headers.get(header::EVENT) {
            if sent_to != active.queue.event {
                return Some(format!(
                    "unknown event `{sent_to}` on the queue of event `{}`",
                    active.queue.event
                ));
            }
        }
        if let Some(accepts) = &active.accepts {
            let sent = self.original.headers.get(header::EVENT_VERSION);
            let version = sent.map(|v| semver::Version::parse(v).map_err(|e| (v, e)));
            match version {
                None => {
                    return Some(format!(
                        "no `{}` header; listener `{}` accepts versions {accepts}",
                        header::EVENT_VERSION,
                        active.descriptor.name()
                    ));
                }
                Some(Err((text, error))) => {
                    return Some(format!(
                        "malformed `{}` header `{text}`: {error}",
                        header::EVENT_VERSION
                    ));
                }
                Some(Ok(version)) if !accepts.matches(&version) => {
                    return Some(format!(
                        "event version {version} is outside the range {accepts} that listener `{}` accepts",
                        active.descriptor.name()
                    ));
                }
                Some(Ok(_)) => {}
            }
        }
        for pipeline in active.pipelines.iter() {
            if let Err(error) = pipeline.handle(&mut self.envelope, active.descriptor) {
                return Some(format!(
                    "pipeline `{}` refused the message: {error}",
                    pipeline.name()
                ));
            }
        }
        None
    }

    /// Call number `attempt` of the listener, wrapped by the pipelines.
    fn call(&self, attempt: u32) -> Call {
        let active = &self.active;
        let ctx = Context {
            headers: self.envelope.headers.clone(),
            listener: active.descriptor,
            queue: Arc::clone(&active.queue_name),
            attempt: self.prior.saturating_add(attempt),
            redelivered: self.redelivered,
        };
        let mut call = active.handler.call(&self.envelope, ctx);
        for pipeline in active.pipelines.iter().rev() {
            call = pipeline.around(&self.envelope, active.descriptor, call);
        }
        call
    }

    /// Acknowledges a success, or decides between a retry and a dead letter.
    fn settle(&self, outcome: Outcome, attempt: u32) -> Next {
        let active = &self.active;
        match outcome.inner {
            Ok(()) => {
                self.acker.ack(self.tag);
                active.stats.handled.fetch_add(1, Ordering::Relaxed);
                active.metrics.handled(self.started);
                Next::Done
            }
            Err(CallError::Decode(reason)) => {
                Next::DeadLetter(format!("undecodable body: {reason}"))
            }
            Err(CallError::Failed(error)) => {
                active.stats.failed.fetch_add(1, Ordering::Relaxed);
                active.metrics.failed();
                let retry = &active.options.retry;
                if attempt >= retry.max_attempts.max(1) {
                    let stage = usize::try_from(self.stage).unwrap_or(usize::MAX);
                    if let Some(&delay) = retry.delays.get(stage) {
                        return Next::Delay(delay, error.to_string());
                    }
                    let total = self.prior.saturating_add(attempt);
                    let delayed = if self.stage == 0 {
                        String::new()
                    } else {
                        format!(" (in {} rounds, after delays)", self.stage + 1)
                    };
                    return Next::DeadLetter(format!(
                        "listener failed {total} times{delayed}; last error: {error}"
                    ));
                }
                let wait = retry.backoff(attempt);
                tracing::warn!(%error, attempt, ?wait, "listener failed; retrying");
                Next::Retry(wait)
            }
        }
    }

    /// Carries on after call number `attempt`: retries, then dead-letters.
    async fn proceed(self, mut next: Next, mut attempt: u32) {
        loop {
            match next {
                Next::Done => return,
                Next::DeadLetter(reason) => return self.dead_letter(reason, attempt).await,
                Next::Delay(delay, error) => return self.delay(delay, attempt, error).await,
                Next::Retry(wait) => {
                    tokio::time::sleep(wait).await;
                    attempt += 1;
                    self.active.stats.retried.fetch_add(1, Ordering::Relaxed);
                    self.active.metrics.retried();
                    let outcome = self.call(attempt).await;
                    next = self.settle(outcome, attempt);
                }
            }
        }
    }

    /// Hands the message, as received plus the retry headers, to the delayed
    /// stage after call number `attempt` of this round failed with `error`: the
    /// provider stores it to come back to this queue after `delay`, then settles
    /// the original. If that fails it is dead-lettered (or, failing that too,
    /// requeued).
    async fn delay(self, delay: Duration, attempt: u32, error: String) {
        let active = &self.active;
        let total = self.prior.saturating_add(attempt);
        let stage = self.stage.saturating_add(1);
        tracing::warn!(%error, attempts = total, stage, ?delay, "listener failed; delayed redelivery");
        let mut copy = self.original.clone();
        copy.headers
            .insert(header::RETRY_ATTEMPTS, total.to_string());
        copy.headers.insert(header::RETRY_STAGE, stage.to_string());
        match self.acker.delay(self.tag, delay, copy).await {
            Ok(()) => {
                active.stats.delayed.fetch_add(1, Ordering::Relaxed);
                active.metrics.delayed();
            }
            Err(failure) => {
                let reason = format!(
                    "listener failed {total} times and the delayed redelivery after {delay:?} \
                     failed ({failure}); last error: {error}"
                );
                self.dead_letter(reason, attempt).await;
            }
        }
    }

    /// Moves the message, as received plus the reason headers, to the dead-letter
    /// queue; if that fails it goes back to the queue. `attempts`: calls in this
    /// round (the letter counts those of earlier rounds too).
    async fn dead_letter(self, reason: String, attempts: u32) {
        let attempts = self.prior.saturating_add(attempts);
        tracing::error!(%reason, attempts, "dead-lettering message");
        let active = &self.active;
        let mut letter = self.original;
        let headers = &mut letter.headers;
        for name in header::RETRY_HEADERS {
            headers.remove(name);
        }
        headers.insert(header::DEAD_LETTER_REASON, reason);
        headers.insert(header::DEAD_LETTER_ATTEMPTS, attempts.to_string());
        headers.insert(header::DEAD_LETTER_QUEUE, &active.queue.name);
        headers.insert(header::DEAD_LETTER_LISTENER, active.descriptor.name());
        match self.acker.dead_letter(self.tag, letter).await {
            Ok(()) => {
                active.stats.dead_lettered.fetch_add(1, Ordering::Relaxed);
                active.metrics.dead_lettered();
            }
            Err(error) => {
                tracing::error!(%error, "dead-lettering failed; the message goes back");
                self.acker.requeue(self.tag);
            }
        }
    }
}

//! The loop that feeds one listener from its queue: bounded concurrency, pipelines,
//! retries with backoff, dead letters, and a draining shutdown.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use tokio::sync::watch;
use tracing::Instrument;

use super::{Counters, ListenerOptions, RetryPolicy};
use crate::envelope::header;
use crate::listener::{CallError, Context, ErasedListener, ListenerDescriptor};
use crate::pipeline::EnvelopePipeline;
use crate::provider::{ConsumeOptions, Consumer, Delivery, Provider};
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
    pub(super) provider: Arc<dyn Provider>,
    pub(super) reconnect: RetryPolicy,
    pub(super) state: AtomicU8,
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
        let options = ConsumeOptions {
            prefetch: self.options.prefetch,
        };
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
    let mut running = FuturesUnordered::new();
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
        tokio::select! {
            biased;
            () = &mut stopping => break,
            Some(()) = running.next(), if !running.is_empty() => {}
            item = consumer.next(), if running.len() < concurrency => match item {
                Some(Ok(delivery)) => running.push(handle(delivery, Arc::clone(&active))),
                Some(Err(error)) => {
                    tracing::warn!(queue = %active.queue.name, %error, "consumer error");
                }
                None => {
                    // The connection is gone: subscribe again with capped exponential
                    // backoff and jitter, while running calls go on.
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
            },
        }
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

/// Handles one delivery to the end: acknowledged, or dead-lettered with a reason.
async fn handle(delivery: Delivery, active: Arc<Active>) {
    let span = tracing::info_span!(
        "handle",
        event = %active.queue.event,
        listener = active.descriptor.name(),
        message_id = %delivery.envelope.message_id(),
    );
    handle_in_span(delivery, active).instrument(span).await;
}

async fn handle_in_span(delivery: Delivery, active: Arc<Active>) {
    let Delivery {
        envelope: original,
        tag,
        redelivered,
        acker,
    } = delivery;
    let dead_letter = |reason: String, attempts: u32| {
        let acker = Arc::clone(&acker);
        let active = Arc::clone(&active);
        let mut letter = original.clone();
        async move {
            tracing::error!(%reason, attempts, "dead-lettering message");
            let headers = &mut letter.headers;
            headers.insert(header::DEAD_LETTER_REASON, reason);
            headers.insert(header::DEAD_LETTER_ATTEMPTS, attempts.to_string());
            headers.insert(header::DEAD_LETTER_QUEUE, active.queue.name.clone());
            headers.insert(header::DEAD_LETTER_LISTENER, active.descriptor.name());
            match acker.dead_letter(tag, letter).await {
                Ok(()) => {
                    active.stats.dead_lettered.fetch_add(1, Ordering::Relaxed);
                }
                Err(error) => {
                    tracing::error!(%error, "dead-lettering failed; the message goes back");
                    acker.requeue(tag);
                }
            }
        }
    };

    let sent_to = original.headers.get(header::EVENT);
    if let Some(sent_to) = sent_to {
        if sent_to != active.queue.event {
            let reason = format!(
                "unknown event `{sent_to}` on the queue of event `{}`",
                active.queue.event
            );
            return dead_letter(reason, 0).await;
        }
    }
    let mut envelope = original.clone();
    for pipeline in active.pipelines.iter() {
        if let Err(error) = pipeline.handle(&mut envelope, active.descriptor) {
            let reason = format!(
                "pipeline `{}` refused the message: {error}",
                pipeline.name()
            );
            return dead_letter(reason, 0).await;
        }
    }

    let retry = &active.options.retry;
    let max_attempts = retry.max_attempts.max(1);
    let mut attempt = 1;
    loop {
        let ctx = Context {
            headers: envelope.headers.clone(),
            listener: active.descriptor,
            queue: Arc::clone(&active.queue_name),
            attempt,
            redelivered,
        };
        let mut call = active.handler.call(&envelope, ctx);
        for pipeline in active.pipelines.iter().rev() {
            call = pipeline.around(&envelope, active.descriptor, call);
        }
        let outcome = call.await;
        match outcome.inner {
            Ok(()) => {
                acker.ack(tag);
                active.stats.handled.fetch_add(1, Ordering::Relaxed);
                return;
            }
            Err(CallError::Decode(reason)) => {
                return dead_letter(format!("undecodable body: {reason}"), attempt).await;
            }
            Err(CallError::Failed(error)) => {
                active.stats.failed.fetch_add(1, Ordering::Relaxed);
                if attempt >= max_attempts {
                    let reason = format!("listener failed {attempt} times; last error: {error}");
                    return dead_letter(reason, attempt).await;
                }
                let wait = retry.backoff(attempt);
                tracing::warn!(%error, attempt, ?wait, "listener failed; retrying");
                tokio::time::sleep(wait).await;
                attempt += 1;
                active.stats.retried.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

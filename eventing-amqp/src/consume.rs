//! Consuming one queue: a channel with `basic.qos`, a stream of deliveries, and the
//! batched acknowledgements (see [`crate::ack`]).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use eventing::provider::{Acker, Consumer, Delivery};
use eventing::topology::QueueSpec;
use eventing::{BoxFuture, Envelope, Result};
use futures_util::Stream;
use lapin::Channel;
use lapin::options::{BasicAckOptions, BasicCancelOptions, BasicNackOptions};
use lapin::types::ShortString;
use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::ack::{AckWindow, Flush, Step, Then, Unknown};
use crate::error::broker;
use crate::headers;
use crate::publish::Publisher;
use crate::topology::DeadLetterQueue;

/// How long `cancel` waits for the broker's `basic.cancel-ok`.
const CANCEL_TIMEOUT: Duration = Duration::from_secs(10);

/// Settles the deliveries of one consumer channel.
///
/// Acks due now are sent from the task that settles or polls (the consumer's own
/// task, in practice), with the window locked, so frames leave in the order the
/// window decided them; a small task per consumer only keeps the time limits and
/// sends the last acknowledgements when the consumer goes away.
pub(crate) struct Settler {
    channel: Channel,
    queue: Arc<str>,
    window: Mutex<AckWindow>,
    wake: Notify,
}

impl Settler {
    pub(crate) fn new(channel: Channel, queue: &str, prefetch: u16) -> Self {
        Self {
            channel,
            queue: Arc::from(queue),
            window: Mutex::new(AckWindow::new(prefetch)),
            wake: Notify::new(),
        }
    }

    fn delivered(&self, tag: u64) {
        self.window.lock().delivered(tag);
    }

    fn ack(&self, tag: u64) {
        let mut window = self.window.lock();
        let then = window.ack(tag, Instant::now());
        self.follow(&mut window, then, tag, "ack");
    }

    fn requeue(&self, tag: u64) {
        let mut window = self.window.lock();
        let then = window.requeue(tag);
        self.follow(&mut window, then, tag, "requeue");
    }

    fn follow(&self, window: &mut AckWindow, then: Result<Then, Unknown>, tag: u64, what: &str) {
        match then {
            Ok(Then::Flush) => self.flush(window),
            Ok(Then::WakeTimer) => self.wake.notify_one(),
            Ok(Then::Nothing) => {}
            Err(Unknown) => tracing::debug!(
                queue = %self.queue,
                tag,
                what,
                "ignored: the delivery is not held by this consumer (its channel closed)"
            ),
        }
    }

    fn idle(&self) {
        let mut window = self.window.lock();
        if window.idle() {
            self.flush(&mut window);
        }
    }

    /// Sends what is due; the window is locked.
    fn flush(&self, window: &mut AckWindow) {
        if window.is_closing() {
            self.wake.notify_one();
            return;
        }
        if let Some(flush) = window.take_due(Instant::now())
            && let Err(error) = self.send(&flush)
        {
            self.lost(window, &error);
        }
    }

    /// Queues the frames of `flush` on the channel, in order. Called with the window
    /// locked, so frames from different tasks cannot overtake each other.
    fn send(&self, flush: &Flush) -> lapin::Result<()> {
        for &tag in &flush.requeue {
            let options = BasicNackOptions {
                multiple: false,
                requeue: true,
            };
            start(self.channel.basic_nack(tag, options))?;
        }
        if let Some(tag) = flush.ack_up_to {
            start(
                self.channel
                    .basic_ack(tag, BasicAckOptions { multiple: true }),
            )?;
        }
        for &tag in &flush.ack_each {
            start(
                self.channel
                    .basic_ack(tag, BasicAckOptions { multiple: false }),
            )?;
        }
        Ok(())
    }

    fn lost(&self, window: &mut AckWindow, error: &lapin::Error) {
        tracing::warn!(
            queue = %self.queue,
            %error,
            "acknowledgements not sent; the broker will deliver those messages again"
        );
        window.abandon();
        self.wake.notify_one();
    }

    /// Sends everything settled now, the acks above an open delivery included.
    fn settle_now(&self) {
        let mut window = self.window.lock();
        if let Some(flush) = window.take_settled()
            && let Err(error) = self.send(&flush)
        {
            self.lost(&mut window, &error);
        }
    }

    /// Sends what is settled, then closes the channel: the broker requeues every
    /// delivery not acknowledged by then.
    pub(crate) fn close(&self) {
        if self.window.lock().close() {
            self.wake.notify_one();
        }
    }
}

/// Polls a lapin `basic_ack`/`basic_nack` future once and lets go of it. lapin
/// queues the frame during that first poll, before the future waits to learn that
/// it was written; so frames are queued in call order, and a closed channel is
/// reported at once. Later failures show up as a closed channel.
fn start(call: impl Future<Output = lapin::Result<()>>) -> lapin::Result<()> {
    let mut call = std::pin::pin!(call);
    match call.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(result) => result,
        Poll::Pending => Ok(()),
    }
}

/// The task that keeps a consumer's time limits and sends its last
/// acknowledgements, until the consumer is closed.
pub(crate) async fn send_acks(settler: Arc<Settler>) {
    enum Next {
        Again,
        Sleep(Option<Instant>),
        Close,
        Stop,
    }
    loop {
        let next = {
            let mut window = settler.window.lock();
            match window.next_step(Instant::now()) {
                Step::Stop => Next::Stop,
                Step::Wait(deadline) => {
                    window.armed(deadline);
                    Next::Sleep(deadline)
                }
                Step::Send { flush, close } => match settler.send(&flush) {
                    Err(error) => {
                        settler.lost(&mut window, &error);
                        Next::Close
                    }
                    Ok(()) if close => Next::Close,
                    Ok(()) => Next::Again,
                },
            }
        };
        match next {
            Next::Again => {}
            Next::Stop => return,
            Next::Close => {
                close_channel(&settler).await;
                return;
            }
            Next::Sleep(Some(deadline)) => {
                let deadline = tokio::time::Instant::from_std(deadline);
                tokio::select! {
                    () = settler.wake.notified() => {}
                    () = tokio::time::sleep_until(deadline) => {}
                }
            }
            Next::Sleep(None) => settler.wake.notified().await,
        }
    }
}

async fn close_channel(settler: &Settler) {
    if settler.channel.status().connected()
        && let Err(error) = settler.channel.close(200, "OK".into()).await
    {
        tracing::debug!(queue = %settler.queue, %error, "closing the consumer channel");
    }
}

/// The provider's [`Acker`] for one consumer.
struct AmqpAcker {
    settler: Arc<Settler>,
    publisher: Arc<Publisher>,
    /// Where its dead letters go; `None` for a consumer of a dead-letter queue,
    /// whose letters are not dead-lettered again.
    dead_letters: Option<DeadLetterQueue>,
    /// The queue consumed, for its delay queues (`None` for a dead-letter queue).
    spec: Option<Arc<QueueSpec>>,
}

/// Headers RabbitMQ adds when it dead-letters a message (here: when a delay
/// queue's time to live runs out). A delayed copy leaves them behind, so they do
/// not pile up round after round.
const BROKER_DEATH_HEADERS: [&str; 7] = [
    "x-death",
    "x-first-death-exchange",
    "x-first-death-queue",
    "x-first-death-reason",
    "x-last-death-exchange",
    "x-last-death-queue",
    "x-last-death-reason",
];

impl Acker for AmqpAcker {
    fn ack(&self, tag: u64) {
        self.settler.ack(tag);
    }

    fn requeue(&self, tag: u64) {
        self.settler.requeue(tag);
    }

    fn dead_letter(&self, tag: u64, envelope: Envelope) -> BoxFuture<'static, Result<()>> {
        let settler = Arc::clone(&self.settler);
        let publisher = Arc::clone(&self.publisher);
        let Some(dlq) = self.dead_letters.clone() else {
            // A letter of a dead-letter queue is not moved to another one.
            return Box::pin(std::future::ready(Err(eventing::Error::Unsupported {
                provider: crate::error::PROVIDER,
                operation: "dead-lettering a message of a dead-letter queue",
            })));
        };
        Box::pin(async move {
            // Stored and confirmed first: a crash in between leaves a duplicate in the
            // dead-letter queue at worst, never a lost message.
            publisher.dead_letter(&dlq, &envelope).await?;
            tracing::debug!(
                queue = %settler.queue,
                dlq = %dlq.name,
                message_id = envelope.message_id(),
                "dead-lettered"
            );
            settler.ack(tag);
            Ok(())
        })
    }

    /// Publishes the copy, confirmed, to `<queue>.delay.<ms>` (its time to live
    /// is `delay`; it then dead-letters back to the queue alone), then acks.
    fn delay(
        &self,
        tag: u64,
        delay: Duration,
        mut envelope: Envelope,
    ) -> BoxFuture<'static, Result<()>> {
        let Some(spec) = self.spec.clone() else {
            return Box::pin(std::future::ready(Err(eventing::Error::Unsupported {
                provider: crate::error::PROVIDER,
                operation: "delaying a message of a dead-letter queue",
            })));
        };
        let settler = Arc::clone(&self.settler);
        let publisher = Arc::clone(&self.publisher);
        for name in BROKER_DEATH_HEADERS {
            envelope.headers.remove(name);
        }
        Box::pin(async move {
            let queue = eventing_rabbitmq::topology::delay_queue(&spec, delay);
            let on_demand = eventing_rabbitmq::topology::delay_queue_on_demand(&spec);
            publisher
                .to_waiting_queue(&queue, &envelope, spec.durable, on_demand)
                .await?;
            tracing::debug!(
                queue = %settler.queue,
                delay_queue = %queue.name,
                message_id = envelope.message_id(),
                "delayed"
            );
            settler.ack(tag);
            Ok(())
        })
    }
}

/// A subscription: lapin's consumer stream turned into [`Delivery`]s.
pub(crate) struct AmqpConsumer {
    stream: lapin::Consumer,
    settler: Arc<Settler>,
    acker: Arc<dyn Acker>,
    tag: ShortString,
    cancelled: bool,
}

impl AmqpConsumer {
    /// `dead_letters`: where the acker dead-letters to (`None` when consuming a
    /// dead-letter queue).
    pub(crate) fn new(
        stream: lapin::Consumer,
        settler: Arc<Settler>,
        publisher: Arc<Publisher>,
        dead_letters: Option<DeadLetterQueue>,
        spec: Option<&QueueSpec>,
    ) -> Self {
        let acker = Arc::new(AmqpAcker {
            settler: Arc::clone(&settler),
            publisher,
            dead_letters,
            spec: spec.map(|spec| Arc::new(spec.clone())),
        });
        Self {
            tag: stream.tag(),
            stream,
            settler,
            acker,
            cancelled: false,
        }
    }
}

impl Stream for AmqpConsumer {
    type Item = Result<Delivery>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        match Pin::new(&mut this.stream).poll_next(cx) {
            Poll::Ready(Some(Ok(delivery))) => {
                let tag = delivery.delivery_tag;
                this.settler.delivered(tag);
                let envelope = headers::to_envelope(&delivery.properties, delivery.data);
                let acker = Arc::clone(&this.acker);
                Poll::Ready(Some(Ok(
                    Delivery::new(envelope, tag, acker).redelivered(delivery.redelivered)
                )))
            }
            Poll::Ready(Some(Err(error))) => Poll::Ready(Some(Err(broker(
                "consuming from queue",
                &this.settler.queue,
                error,
            )))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => {
                // Nothing else to hand out: send the acks that are due.
                this.settler.idle();
                Poll::Pending
            }
        }
    }
}

impl Consumer for AmqpConsumer {
    fn cancel(&mut self) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            if std::mem::replace(&mut self.cancelled, true) {
                return Ok(());
            }
            let channel = &self.settler.channel;
            if !channel.status().connected() {
                return Ok(());
            }
            // Acks given so far go out before the cancel, and the broker answers
            // the cancel after them: once it returns, they are settled.
            self.settler.settle_now();
            let cancel = channel.basic_cancel(self.tag.clone(), BasicCancelOptions::default());
            match tokio::time::timeout(CANCEL_TIMEOUT, cancel).await {
                Ok(Ok(())) => {
                    tracing::debug!(queue = %self.settler.queue, "consumer cancelled");
                    Ok(())
                }
                Ok(Err(error)) => Err(broker(
                    "cancelling the consumer of queue",
                    &self.settler.queue,
                    error,
                )),
                Err(_) => Err(eventing::Error::Timeout {
                    operation: "cancelling an AMQP consumer",
                    after: CANCEL_TIMEOUT,
                }),
            }
        })
    }
}

impl Drop for AmqpConsumer {
    fn drop(&mut self) {
        // Acks already given go out; the channel then closes and the broker
        // redelivers whatever was not acknowledged.
        self.settler.close();
    }
}

/// A consumer of nothing: the stream ends at once (a dead-letter queue that does
/// not exist holds no letters).
pub(crate) struct Finished;

impl Stream for Finished {
    type Item = Result<Delivery>;

    fn poll_next(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        Poll::Ready(None)
    }
}

impl Consumer for Finished {
    fn cancel(&mut self) -> BoxFuture<'_, Result<()>> {
        Box::pin(std::future::ready(Ok(())))
    }
}

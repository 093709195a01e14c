//! One STOMP session: the `CONNECT` handshake, a writer task, a reader task,
//! heart-beats in both directions, receipts and subscriptions.
//!
//! Frames are encoded by the caller (so size errors reach it) and handed to the
//! writer task through a bounded channel; the writer batches whatever is queued
//! into one write and sends a heart-beat when it has written nothing for a
//! period. The reader task decodes frames, completes receipts, routes `MESSAGE`
//! frames to their subscription's bounded channel and watches the broker's
//! heart-beats: silence past the window, an `ERROR` frame without a pending
//! receipt, EOF or an I/O error closes the session, fails every pending receipt
//! and ends every subscription.
//!
//! The decoder reads past what it cannot take whole ([`StompCodec::recovering`]):
//! a `MESSAGE` over the limits or with malformed header lines reaches its
//! subscription as [`Inbound::Rejected`]
//! (without its body when the frame was too large), so the subscriber can
//! dead-letter and acknowledge it. Closing the session instead would only make
//! the broker deliver it again, forever.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use futures_util::StreamExt;
use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncWriteExt, ReadBuf};
use tokio::sync::{mpsc, oneshot};
use tokio::time::{Instant, Interval, MissedTickBehavior};
use tokio_util::codec::FramedRead;
use tokio_util::sync::CancellationToken;

use crate::codec::{CodecLimits, FrameError, Received, RecoveringCodec, Rejected, StompCodec};
use crate::config::StompConfig;
use crate::dialect::Dialect;
use crate::error::{BrokerError, StompError};
use crate::frame::{Command, Frame};
use crate::transport::{ReadHalf, Transport, WriteHalf};

/// Most bytes the writer gathers into one write.
const MAX_BATCH: usize = 256 * 1024;

/// How long a polite close waits for the broker's receipt of `DISCONNECT`.
pub(crate) const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

type ReceiptResult = Result<(), StompError>;

/// A handle on one STOMP session; clones share it.
#[derive(Clone)]
pub(crate) struct Connection {
    tx: mpsc::Sender<Bytes>,
    shared: Arc<Shared>,
}

struct Shared {
    /// `stomp://host:port (role)`, for logs.
    label: String,
    codec: StompCodec,
    receipts: Mutex<HashMap<String, oneshot::Sender<ReceiptResult>>>,
    subscriptions: Mutex<HashMap<String, mpsc::Sender<Inbound>>>,
    closed: CancellationToken,
    /// A polite close (`DISCONNECT`) is under way.
    closing: AtomicBool,
    reason: Mutex<Option<StompError>>,
    next_receipt: AtomicU64,
    /// The `server` header of `CONNECTED` (`RabbitMQ/3.10.8`, `ActiveMQ/5.17.2`).
    server: Option<String>,
}

/// What a subscription receives.
#[derive(Debug)]
pub(crate) enum Inbound {
    /// A `MESSAGE` frame.
    Message(Frame),
    /// A `MESSAGE` the decoder could not take whole: what was wrong, the
    /// headers it could read, and the body unless the frame was over the limit.
    Rejected(Rejected),
}

/// How a session is used.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Options {
    /// For logs: `publisher`, `consumer`, ...
    pub(crate) role: &'static str,
    /// Bounds the frames queued for the writer.
    pub(crate) capacity: usize,
}

/// Heart-beat periods agreed with the broker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Heartbeats {
    /// How often this client must send something.
    pub(crate) send: Option<Duration>,
    /// How often the broker promised to send something.
    pub(crate) receive: Option<Duration>,
}

impl Heartbeats {
    /// STOMP 1.2 negotiation: the client offers `cx,cy` (it can send every cx
    /// ms, wants to receive every cy ms), the server answers `sx,sy`; each
    /// direction runs at the larger of its two values, or not at all when one
    /// of them is 0.
    pub(crate) fn negotiate(offered: Duration, answer: Option<&str>) -> Heartbeats {
        let (sx, sy) = answer
            .and_then(|text| text.split_once(','))
            .and_then(|(sx, sy)| {
                Some((
                    sx.trim().parse::<u64>().ok()?,
                    sy.trim().parse::<u64>().ok()?,
                ))
            })
            .unwrap_or((0, 0));
        let ours = u64::try_from(offered.as_millis()).unwrap_or(u64::MAX);
        let period = |a: u64, b: u64| (a > 0 && b > 0).then(|| Duration::from_millis(a.max(b)));
        Heartbeats {
            send: period(ours, sy),
            receive: period(ours, sx),
        }
    }

    /// How long the broker may stay silent before the connection counts as
    /// lost: twice its period, for network and scheduling jitter.
    pub(crate) fn window(&self) -> Option<Duration> {
        self.receive.map(|period| period * 2)
    }
}

impl Connection {
    /// Connects, logs in and starts the reader and writer tasks.
    pub(crate) async fn open(
        config: &StompConfig,
        transport: &Transport,
        options: Options,
    ) -> Result<Connection, StompError> {
        let Options { role, capacity } = options;
        let label = format!("{} ({role})", config.display_endpoint());
        let (read, mut write) = transport.open(&config.host, config.port).await?;
        let codec = StompCodec::with_limits(config.limits);
        let decoder = StompCodec::with_limits(config.limits).recovering();
        let mut framed = FramedRead::new(
            Counted {
                inner: read,
                bytes: 0,
            },
            decoder,
        );
        let (heartbeats, server) = tokio::time::timeout(
            config.connect_timeout,
            handshake(config, &codec, &mut write, &mut framed),
        )
        .await
        .map_err(|_| StompError::Connect {
            endpoint: config.endpoint(),
            reason: format!("no CONNECTED within {:?}", config.connect_timeout),
        })??;
        tracing::debug!(broker = %label, ?heartbeats, "STOMP session open");
        // RabbitMQ's plugin would store a needless `content-length` in every
        // message's headers table.
        let codec = match config.dialect_of(server.as_deref()) {
            Dialect::RabbitMq => codec.length_when_needed(),
            _ => codec,
        };

        let (tx, rx) = mpsc::channel(capacity.max(1));
        let shared = Arc::new(Shared {
            label,
            codec,
            receipts: Mutex::new(HashMap::new()),
            subscriptions: Mutex::new(HashMap::new()),
            closed: CancellationToken::new(),
            closing: AtomicBool::new(false),
            reason: Mutex::new(None),
            next_receipt: AtomicU64::new(1),
            server,
        });
        tokio::spawn(write_loop(rx, write, Arc::clone(&shared), heartbeats.send));
        tokio::spawn(read_loop(framed, Arc::clone(&shared), heartbeats.window()));
        Ok(Connection { tx, shared })
    }

    /// `stomp://host:port (role)`.
    pub(crate) fn label(&self) -> &str {
        &self.shared.label
    }

    /// The broker's `server` header, if it sent one.
    pub(crate) fn server(&self) -> Option<&str> {
        self.shared.server.as_deref()
    }

    /// Whether the session is over.
    pub(crate) fn is_closed(&self) -> bool {
        self.shared.closed.is_cancelled()
    }

    /// Waits until the session is over.
    pub(crate) async fn closed(&self) {
        self.shared.closed.cancelled().await;
    }

    /// Why the session ended, once it has.
    pub(crate) fn close_reason(&self) -> Option<StompError> {
        self.shared.reason.lock().clone()
    }

    fn closed_error(&self) -> StompError {
        self.close_reason().unwrap_or_else(|| StompError::Closed {
            reason: "the writer stopped".into(),
        })
    }

    /// This session's frame limits.
    pub(crate) fn limits(&self) -> CodecLimits {
        *self.shared.codec.limits()
    }

    /// Encodes a frame with this session's limits.
    pub(crate) fn encode(&self, frame: &Frame) -> Result<Bytes, StompError> {
        let mut buf = BytesMut::with_capacity(256 + frame.body.len());
        self.shared
            .codec
            .encode_frame(frame, &mut buf)
            .map_err(|e| StompError::Encode(Arc::new(e)))?;
        Ok(buf.freeze())
    }

    /// Queues a frame for the writer, waiting while the queue is full.
    pub(crate) async fn send(&self, frame: &Frame) -> Result<(), StompError> {
        let bytes = self.encode(frame)?;
        if self.is_closed() {
            return Err(self.closed_error());
        }
        self.tx.send(bytes).await.map_err(|_| self.closed_error())
    }

    /// Queues a frame without waiting (acknowledgements from sync code). If the
    /// queue is full a task waits for room; if the session is over the frame
    /// is dropped: the broker redelivers whatever was not acknowledged.
    pub(crate) fn send_now(&self, frame: &Frame) {
        let bytes = match self.encode(frame) {
            Ok(bytes) => bytes,
            Err(error) => {
                tracing::error!(broker = %self.label(), %error, "cannot encode {}", frame.command);
                return;
            }
        };
        match self.tx.try_send(bytes) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(bytes)) => {
                let tx = self.tx.clone();
                if let Ok(handle) = tokio::runtime::Handle::try_current() {
                    handle.spawn(async move {
                        let _ = tx.send(bytes).await;
                    });
                }
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                tracing::debug!(broker = %self.label(), "session closed; {} dropped", frame.command);
            }
        }
    }

    /// Sends `frame` with a `receipt` header and waits for the broker's
    /// `RECEIPT` (or the `ERROR` that answers it) at most `timeout`.
    pub(crate) async fn request(
        &self,
        mut frame: Frame,
        timeout: Duration,
        operation: &'static str,
    ) -> Result<(), StompError> {
        let id = self
            .shared
            .next_receipt
            .fetch_add(1, Ordering::Relaxed)
            .to_string();
        let (done, pending) = oneshot::channel();
        self.shared.receipts.lock().insert(id.clone(), done);
        if self.is_closed() {
            self.shared.receipts.lock().remove(&id);
            return Err(self.closed_error());
        }
        frame.push_header("receipt", id.clone());
        if let Err(error) = self.send(&frame).await {
            self.shared.receipts.lock().remove(&id);
            return Err(error);
        }
        match tokio::time::timeout(timeout, pending).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(self.closed_error()),
            Err(_) => {
                self.shared.receipts.lock().remove(&id);
                Err(StompError::Timeout {
                    operation,
                    after: timeout,
                })
            }
        }
    }

    /// Routes `MESSAGE` frames of subscription `id` to the returned channel.
    pub(crate) fn subscription(&self, id: &str, capacity: usize) -> mpsc::Receiver<Inbound> {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        if !self.is_closed() {
            self.shared.subscriptions.lock().insert(id.to_string(), tx);
        }
        rx
    }

    /// Ends the session politely: `DISCONNECT`, its receipt (bounded), then the
    /// socket closes. The broker returns unacknowledged messages to their
    /// queues. If a close is already under way, waits for it (bounded).
    pub(crate) async fn close(&self) {
        if self.shared.closing.swap(true, Ordering::AcqRel) {
            let _ = tokio::time::timeout(CLOSE_TIMEOUT * 2, self.shared.closed.cancelled()).await;
            return;
        }
        if self.is_closed() {
            return;
        }
        let _ = self
            .request(Frame::new(Command::Disconnect), CLOSE_TIMEOUT, "DISCONNECT")
            .await;
        self.shared.fail(StompError::Closed {
            reason: "closed by the client".into(),
        });
    }

    /// Queues `last` (e.g. `UNSUBSCRIBE`) and `DISCONNECT`, then closes in the
    /// background; usable from `Drop`.
    pub(crate) fn close_soon(&self, last: Option<Frame>) {
        if self.is_closed() || self.shared.closing.load(Ordering::Acquire) {
            return;
        }
        if let Some(frame) = last {
            self.send_now(&frame);
        }
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                let this = self.clone();
                handle.spawn(async move { this.close().await });
            }
            Err(_) => self.shared.fail(StompError::Closed {
                reason: "dropped outside a runtime".into(),
            }),
        }
    }
}

impl Shared {
    /// Ends the session once: records why, stops both tasks, fails pending
    /// receipts and ends every subscription (after what it has buffered).
    fn fail(&self, error: StompError) {
        {
            let mut reason = self.reason.lock();
            if reason.is_some() {
                return;
            }
            *reason = Some(error.clone());
        }
        self.closed.cancel();
        let receipts = std::mem::take(&mut *self.receipts.lock());
        for (_, done) in receipts {
            let _ = done.send(Err(error.clone()));
        }
        self.subscriptions.lock().clear();
    }
}

/// Writes `CONNECT` and reads the answer, skipping heart-beats: the agreed
/// heart-beats and the broker's `server` header.
///
/// Every session has a `client-id` of its own: ActiveMQ refuses one that a
/// connection still closing has (others ignore it or use it for logs).
async fn handshake(
    config: &StompConfig,
    codec: &StompCodec,
    write: &mut WriteHalf,
    framed: &mut FramedRead<Counted, RecoveringCodec>,
) -> Result<(Heartbeats, Option<String>), StompError> {
    let endpoint = config.endpoint();
    let millis = config.heartbeat.as_millis();
    let mut connect = Frame::new(Command::Connect)
        .header("accept-version", "1.2")
        .header("host", config.vhost.clone())
        .header("heart-beat", format!("{millis},{millis}"))
        .header("client-id", crate::activemq::client_id());
    if let Some(login) = &config.login {
        connect.push_header("login", login.clone());
    }
    if let Some(passcode) = &config.passcode {
        connect.push_header("passcode", passcode.clone());
    }
    let mut buf = BytesMut::new();
    codec
        .encode_frame(&connect, &mut buf)
        .map_err(|e| match e {
            // The message names the header, never its value.
            FrameError::UnencodableHeader { name, .. } => StompError::InvalidUrl {
                reason: format!("the `{name}` cannot contain line breaks"),
            },
            other => StompError::Encode(Arc::new(other)),
        })?;
    let io = |e: std::io::Error| StompError::Connect {
        endpoint: endpoint.clone(),
        reason: e.to_string(),
    };
    write.write_all(&buf).await.map_err(io)?;
    write.flush().await.map_err(io)?;
    loop {
        match framed.next().await {
            Some(Ok(Received::Heartbeat)) => continue,
            Some(Ok(Received::Rejected(rejected))) => {
                return Err(StompError::Closed {
                    reason: format!(
                        "expected CONNECTED, got an unreadable {}",
                        rejected.frame.command
                    ),
                });
            }
            Some(Ok(Received::Frame(frame))) => match frame.command {
                Command::Connected => {
                    if frame.get("version") != Some("1.2") {
                        return Err(StompError::Closed {
                            reason: format!(
                                "the broker does not speak STOMP 1.2 (version {:?})",
                                frame.get("version").unwrap_or("1.0")
                            ),
                        });
                    }
                    let heartbeats =
                        Heartbeats::negotiate(config.heartbeat, frame.get("heart-beat"));
                    return Ok((heartbeats, frame.get("server").map(str::to_owned)));
                }
                Command::Error => {
                    return Err(StompError::ConnectRefused {
                        endpoint,
                        error: BrokerError::from_frame(&frame),
                    });
                }
                other => {
                    return Err(StompError::Closed {
                        reason: format!("expected CONNECTED, got {other}"),
                    });
                }
            },
            Some(Err(FrameError::Io(e))) => return Err(io(e)),
            Some(Err(e)) => return Err(StompError::Frame(Arc::new(e))),
            None => {
                return Err(StompError::Closed {
                    reason: "the broker closed the connection during CONNECT".into(),
                });
            }
        }
    }
}

async fn tick(interval: &mut Option<Interval>) {
    match interval {
        Some(interval) => {
            interval.tick().await;
        }
        None => std::future::pending().await,
    }
}

fn ticker(period: Option<Duration>) -> Option<Interval> {
    period.map(|period| {
        let mut interval = tokio::time::interval_at(Instant::now() + period, period);
        interval.set_missed_tick_behavior(MissedTickBehavior::Delay);
        interval
    })
}

async fn write_loop(
    mut rx: mpsc::Receiver<Bytes>,
    mut out: WriteHalf,
    shared: Arc<Shared>,
    heartbeat: Option<Duration>,
) {
    let mut buf = BytesMut::with_capacity(16 * 1024);
    let mut heartbeat = ticker(heartbeat);
    let mut wrote = false;
    loop {
        tokio::select! {
            biased;
            _ = shared.closed.cancelled() => break,
            item = rx.recv() => match item {
                Some(bytes) => {
                    buf.extend_from_slice(&bytes);
                    drain(&mut rx, &mut buf);
                    wrote = true;
                }
                None => {
                    // Every handle is gone: nobody can use this session.
                    shared.fail(StompError::Closed { reason: "no longer used".into() });
                    break;
                }
            },
            () = tick(&mut heartbeat) => {
                if std::mem::take(&mut wrote) {
                    continue;
                }
                buf.put_u8(b'\n');
            }
        }
        let result = async {
            out.write_all(&buf).await?;
            out.flush().await
        }
        .await;
        buf.clear();
        if let Err(error) = result {
            shared.fail(StompError::Closed {
                reason: format!("write failed: {error}"),
            });
            break;
        }
    }
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, out.shutdown()).await;
}

/// Appends queued frames to `buf`, up to about [`MAX_BATCH`] bytes.
fn drain(rx: &mut mpsc::Receiver<Bytes>, buf: &mut BytesMut) {
    while buf.len() < MAX_BATCH {
        match rx.try_recv() {
            Ok(bytes) => buf.extend_from_slice(&bytes),
            Err(_) => break,
        }
    }
}

/// The broker's side of a session, counting the bytes that arrive: any byte
/// shows the broker is alive, also while a large body (or one being skipped)
/// streams in without completing an item.
struct Counted {
    inner: ReadHalf,
    bytes: u64,
}

impl AsyncRead for Counted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let poll = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = poll {
            let read = buf.filled().len().saturating_sub(before);
            self.bytes = self.bytes.wrapping_add(read as u64);
        }
        poll
    }
}

async fn read_loop(
    mut framed: FramedRead<Counted, RecoveringCodec>,
    shared: Arc<Shared>,
    window: Option<Duration>,
) {
    // Checked twice per window; two checks in a row without a byte from the
    // broker mean it has been silent for at least the whole window.
    let mut check = ticker(window.map(|w| w / 2));
    let mut silent = 0u8;
    let mut received = framed.get_ref().bytes;
    let error = loop {
        let item = tokio::select! {
            biased;
            _ = shared.closed.cancelled() => break None,
            item = framed.next() => item,
            () = tick(&mut check) => {
                let now = framed.get_ref().bytes;
                if now != received {
                    received = now;
                    silent = 0;
                    continue;
                }
                silent += 1;
                if silent >= 2 {
                    break window.map(|after| StompError::HeartbeatTimeout { after });
                }
                continue;
            }
        };
        silent = 0;
        match item {
            Some(Ok(Received::Heartbeat)) => {}
            Some(Ok(Received::Frame(frame))) => {
                if let Err(error) = dispatch(&shared, frame).await {
                    break Some(error);
                }
            }
            Some(Ok(Received::Rejected(rejected))) => {
                let id = rejected.frame.get("subscription").map(str::to_owned);
                route(&shared, id.as_deref(), Inbound::Rejected(rejected)).await;
            }
            Some(Err(FrameError::Io(e))) => {
                break Some(StompError::Closed {
                    reason: format!("read failed: {e}"),
                });
            }
            Some(Err(e)) => break Some(StompError::Frame(Arc::new(e))),
            None => {
                break Some(StompError::Closed {
                    reason: "the broker closed the connection".into(),
                });
            }
        }
    };
    if let Some(error) = error {
        // The broker may close the socket right after its receipt of DISCONNECT.
        if !shared.closed.is_cancelled() && !shared.closing.load(Ordering::Acquire) {
            tracing::warn!(broker = %shared.label, %error, "STOMP session lost");
        }
        shared.fail(error);
    }
}

/// Handles one frame from the broker; an error ends the session.
async fn dispatch(shared: &Shared, frame: Frame) -> Result<(), StompError> {
    match frame.command {
        Command::Message => {
            let id = frame.get("subscription").map(str::to_owned);
            route(shared, id.as_deref(), Inbound::Message(frame)).await;
        }
        Command::Receipt => {
            let done = frame
                .get("receipt-id")
                .and_then(|id| shared.receipts.lock().remove(id));
            if let Some(done) = done {
                let _ = done.send(Ok(()));
            }
        }
        Command::Error => {
            let error = BrokerError::from_frame(&frame);
            let done = frame
                .get("receipt-id")
                .and_then(|id| shared.receipts.lock().remove(id));
            match done {
                Some(done) => {
                    let _ = done.send(Err(StompError::Broker(error)));
                }
                // Not tied to a request: the broker closes the session.
                None => return Err(StompError::Broker(error)),
            }
        }
        other => {
            tracing::debug!(broker = %shared.label, command = %other, "unexpected frame ignored");
        }
    }
    Ok(())
}

/// Hands a `MESSAGE` to its subscription. One whose `subscription` header
/// could not be read goes to the session's only subscription, if it has one
/// (every session of this crate has at most one).
async fn route(shared: &Shared, id: Option<&str>, item: Inbound) {
    let sender = {
        let subscriptions = shared.subscriptions.lock();
        match (id, &item) {
            (Some(id), _) => subscriptions.get(id).cloned(),
            (None, Inbound::Rejected(_)) if subscriptions.len() == 1 => {
                subscriptions.values().next().cloned()
            }
            (None, _) => None,
        }
    };
    let Some(sender) = sender else {
        match item {
            Inbound::Message(_) => tracing::debug!(
                broker = %shared.label,
                "MESSAGE for no active subscription; left unacknowledged"
            ),
            Inbound::Rejected(rejected) => tracing::error!(
                broker = %shared.label,
                size = rejected.size,
                reason = %rejected,
                "unreadable MESSAGE for no active subscription; left unacknowledged"
            ),
        }
        return;
    };
    match sender.try_send(item) {
        Ok(()) => {}
        Err(mpsc::error::TrySendError::Full(item)) => {
            // More than the prefetch in flight: hold the reader (TCP
            // back-pressure) until the consumer catches up.
            let _ = sender.send(item).await;
        }
        // A cancelled consumer: the message goes back when the session closes.
        Err(mpsc::error::TrySendError::Closed(_)) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heartbeat_negotiation() {
        let ten = Duration::from_secs(10);
        let h = Heartbeats::negotiate(ten, Some("5000,20000"));
        assert_eq!(h.send, Some(Duration::from_secs(20)));
        assert_eq!(h.receive, Some(Duration::from_secs(10)));
        assert_eq!(h.window(), Some(Duration::from_secs(20)));

        let h = Heartbeats::negotiate(ten, Some("0,0"));
        assert_eq!(
            h,
            Heartbeats {
                send: None,
                receive: None
            }
        );
        assert_eq!(h.window(), None);

        let h = Heartbeats::negotiate(Duration::ZERO, Some("1000,1000"));
        assert_eq!(
            h,
            Heartbeats {
                send: None,
                receive: None
            }
        );

        let h = Heartbeats::negotiate(Duration::from_millis(500), Some("1000, 0"));
        assert_eq!(h.send, None);
        assert_eq!(h.receive, Some(Duration::from_secs(1)));

        for garbage in [None, Some(""), Some("x,y"), Some("1000")] {
            let h = Heartbeats::negotiate(ten, garbage);
            assert_eq!(
                h,
                Heartbeats {
                    send: None,
                    receive: None
                },
                "{garbage:?}"
            );
        }
    }
}

//! Declaring RabbitMQ topology that STOMP cannot: a minimal AMQP 0-9-1 client.
//!
//! RabbitMQ's STOMP plugin sends to and subscribes on `/exchange/<name>` only if
//! the exchange exists; it never declares one (a `SEND` to a missing exchange is
//! an `ERROR not_found` that closes the connection). The AMQP provider declares
//! each event as a fanout exchange named by the event, durable if the event is.
//! [`RabbitAdmin`] makes the same declaration over AMQP 0-9-1, which every
//! RabbitMQ node serves without plugins, with the same credentials and virtual
//! host as the STOMP session, on a short-lived connection: handshake, one
//! channel, `exchange.declare`/`queue.declare`/`queue.bind` (or the deletes),
//! close. Only what is needed is implemented; deliveries and content frames
//! never happen on this connection.

use std::time::Duration;

use eventing_rabbitmq::{Arg, topology};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::config::StompConfig;
use crate::error::StompError;
use crate::transport::{ReadHalf, Transport, WriteHalf, endpoint};

const FRAME_METHOD: u8 = 1;
const FRAME_HEARTBEAT: u8 = 8;
const FRAME_END: u8 = 0xCE;
/// Largest frame accepted from the broker (RabbitMQ's default frame_max).
const MAX_FRAME: u32 = 128 * 1024;
const CHANNEL: u16 = 1;

const CONNECTION: u16 = 10;
const CHANNEL_CLASS: u16 = 20;
const EXCHANGE: u16 = 40;
const QUEUE: u16 = 50;

/// AMQP reply code of a missing exchange or queue.
const NOT_FOUND: u16 = 404;

/// A short-lived AMQP 0-9-1 session for topology declarations on RabbitMQ.
///
/// ```no_run
/// # async fn demo() -> Result<(), eventing_stomp::StompError> {
/// use eventing_stomp::{RabbitAdmin, StompConfig};
///
/// let config = StompConfig::from_url("stomp://guest:guest@127.0.0.1:61613")?;
/// let mut admin = RabbitAdmin::connect(&config).await?;
/// admin.declare_exchange("shop.OrderPlaced", true).await?;
/// admin.delete_exchange("shop.OrderPlaced").await?;
/// admin.close().await;
/// # Ok(()) }
/// ```
pub struct RabbitAdmin {
    read: ReadHalf,
    write: WriteHalf,
    endpoint: String,
    timeout: Duration,
    channel_open: bool,
}

impl std::fmt::Debug for RabbitAdmin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RabbitAdmin")
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

impl RabbitAdmin {
    /// Connects to the AMQP port of the broker `config` names (`amqp_port`),
    /// with TLS if the STOMP URL is `stomps://`, and logs in with its
    /// credentials (`guest`/`guest` when it has none) on its virtual host.
    pub async fn connect(config: &StompConfig) -> Result<RabbitAdmin, StompError> {
        let transport = Transport::new(config)?;
        RabbitAdmin::open(config, &transport).await
    }

    pub(crate) async fn open(
        config: &StompConfig,
        transport: &Transport,
    ) -> Result<RabbitAdmin, StompError> {
        let (read, write) = transport.open(&config.host, config.amqp_port).await?;
        let mut admin = RabbitAdmin {
            read,
            write,
            endpoint: endpoint(&config.host, config.amqp_port),
            timeout: config.connect_timeout,
            channel_open: false,
        };
        let login = config.login.as_deref().unwrap_or("guest");
        let passcode = config.passcode.as_deref().unwrap_or("guest");
        let timeout = admin.timeout;
        admin
            .bounded("the AMQP handshake", timeout, |a| {
                Box::pin(a.handshake(login, passcode, &config.vhost))
            })
            .await?;
        Ok(admin)
    }

    async fn handshake(
        &mut self,
        login: &str,
        passcode: &str,
        vhost: &str,
    ) -> Result<(), StompError> {
        self.write_all(b"AMQP\x00\x00\x09\x01").await?;
        self.expect(0, CONNECTION, 10).await?; // connection.start
        let mut capabilities = Table::default();
        capabilities.boolean("authentication_failure_close", true);
        let mut properties = Table::default();
        properties.string("product", "eventing-stomp");
        properties.table("capabilities", capabilities);
        let mut start_ok = Args::default();
        start_ok.table(properties);
        start_ok.short("PLAIN")?;
        let mut response = Vec::with_capacity(login.len() + passcode.len() + 2);
        response.push(0);
        response.extend_from_slice(login.as_bytes());
        response.push(0);
        response.extend_from_slice(passcode.as_bytes());
        start_ok.long(&response);
        start_ok.short("en_US")?;
        self.send(0, CONNECTION, 11, start_ok).await?;

        let tune = self.expect(0, CONNECTION, 30).await?;
        let frame_max = match tune.get(2..6) {
            Some(bytes) => u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]),
            None => return Err(self.protocol("short connection.tune")),
        };
        let frame_max = if frame_max == 0 {
            MAX_FRAME
        } else {
            frame_max.min(MAX_FRAME)
        };
        let mut tune_ok = Args::default();
        tune_ok.u16(1); // channel-max: one channel is all this client uses
        tune_ok.u32(frame_max);
        tune_ok.u16(0); // no heart-beats on a short-lived connection
        self.send(0, CONNECTION, 31, tune_ok).await?;

        let mut open = Args::default();
        open.short(vhost)?;
        open.short("")?;
        open.u8(0);
        self.send(0, CONNECTION, 40, open).await?;
        self.expect(0, CONNECTION, 41).await?;
        Ok(())
    }

    /// Declares a fanout exchange named `name`, durable or not, as the AMQP
    /// provider does for an event. An existing exchange with other properties
    /// is an error (`406 PRECONDITION_FAILED`).
    pub async fn declare_exchange(&mut self, name: &str, durable: bool) -> Result<(), StompError> {
        let mut args = Args::default();
        args.u16(0);
        args.short(name)?;
        args.short(topology::EXCHANGE_KIND)?;
        args.u8(if durable { 0b10 } else { 0 });
        args.table(Table::default());
        self.call(format!("declare exchange {name:?}"), EXCHANGE, 10, args)
            .await?;
        Ok(())
    }

    /// Declares a queue; with `expires`, the broker deletes it after it has
    /// been unused that long (`x-expires`).
    pub async fn declare_queue(
        &mut self,
        name: &str,
        durable: bool,
        auto_delete: bool,
        expires: Option<Duration>,
    ) -> Result<(), StompError> {
        let mut arguments = Vec::new();
        if let Some(expires) = expires {
            let millis = i64::try_from(expires.as_millis()).unwrap_or(i64::MAX);
            arguments.push(("x-expires", Arg::Int(millis)));
        }
        self.queue_declare(name, durable, false, auto_delete, &arguments)
            .await
    }

    /// Declares `queue` as RabbitMQ's rule says (durable or exclusive, with its
    /// arguments), as the AMQP provider does.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), eventing_stomp::StompError> {
    /// use eventing::topology::QueueSpec;
    /// use eventing_rabbitmq::{QueueType, topology};
    /// use eventing_stomp::{RabbitAdmin, StompConfig};
    ///
    /// let config = StompConfig::from_url("stomp://guest:guest@127.0.0.1:61613")?;
    /// let mut admin = RabbitAdmin::connect(&config).await?;
    /// let spec = QueueSpec::new("shop.Order", "Billing", true, false, "web-1");
    /// admin
    ///     .declare(&topology::queue(&spec, QueueType::Quorum { delivery_limit: 5 }))
    ///     .await?;
    /// admin.close().await;
    /// # Ok(()) }
    /// ```
    pub async fn declare(&mut self, queue: &topology::Queue) -> Result<(), StompError> {
        self.queue_declare(
            &queue.name,
            queue.durable,
            queue.exclusive,
            false,
            &queue.arguments,
        )
        .await
    }

    async fn queue_declare(
        &mut self,
        name: &str,
        durable: bool,
        exclusive: bool,
        auto_delete: bool,
        arguments: &[(&'static str, Arg)],
    ) -> Result<(), StompError> {
        let mut args = Args::default();
        args.u16(0);
        args.short(name)?;
        args.u8(u8::from(durable) << 1 | u8::from(exclusive) << 2 | u8::from(auto_delete) << 3);
        let mut table = Table::default();
        for (key, value) in arguments {
            table.argument(key, value);
        }
        args.table(table);
        self.call(format!("declare queue {name:?}"), QUEUE, 10, args)
            .await?;
        Ok(())
    }

    /// How many ready messages the queue named `name` holds, or `None` if it does
    /// not exist (a passive declaration; `declare-ok` carries the count).
    pub async fn queue_depth(&mut self, name: &str) -> Result<Option<u32>, StompError> {
        let mut args = Args::default();
        args.u16(0);
        args.short(name)?;
        args.u8(1); // passive
        args.table(Table::default());
        match self
            .call(format!("check queue {name:?}"), QUEUE, 10, args)
            .await
        {
            Ok(reply) => message_count(&reply)
                .map(Some)
                .ok_or_else(|| self.protocol("a queue.declare-ok too short for its counts")),
            Err(StompError::TopologyRefused {
                code: NOT_FOUND, ..
            }) => Ok(None),
            Err(other) => Err(other),
        }
    }

    /// Whether a queue named `name` exists (a passive declaration).
    pub async fn queue_exists(&mut self, name: &str) -> Result<bool, StompError> {
        let mut args = Args::default();
        args.u16(0);
        args.short(name)?;
        args.u8(1); // passive
        args.table(Table::default());
        match self
            .call(format!("check queue {name:?}"), QUEUE, 10, args)
            .await
        {
            Ok(_) => Ok(true),
            Err(StompError::TopologyRefused {
                code: NOT_FOUND, ..
            }) => Ok(false),
            // 405 RESOURCE_LOCKED: it exists, exclusive to another connection.
            Err(StompError::TopologyRefused { code: 405, .. }) => Ok(true),
            Err(other) => Err(other),
        }
    }

    /// Binds `queue` to `exchange` with an empty routing key.
    pub async fn bind_queue(&mut self, queue: &str, exchange: &str) -> Result<(), StompError> {
        let mut args = Args::default();
        args.u16(0);
        args.short(queue)?;
        args.short(exchange)?;
        args.short("")?;
        args.u8(0);
        args.table(Table::default());
        self.call(
            format!("bind queue {queue:?} to {exchange:?}"),
            QUEUE,
            20,
            args,
        )
        .await?;
        Ok(())
    }

    /// Deletes an exchange; a missing one is not an error.
    pub async fn delete_exchange(&mut self, name: &str) -> Result<(), StompError> {
        self.delete("exchange", EXCHANGE, 20, name).await
    }

    /// Deletes a queue and its messages; a missing one is not an error.
    pub async fn delete_queue(&mut self, name: &str) -> Result<(), StompError> {
        self.delete("queue", QUEUE, 40, name).await
    }

    /// `exchange.delete` or `queue.delete` (same arguments: reserved, name, no flags),
    /// treating NOT_FOUND as done.
    async fn delete(
        &mut self,
        kind: &str,
        class: u16,
        method: u16,
        name: &str,
    ) -> Result<(), StompError> {
        let mut args = Args::default();
        args.u16(0);
        args.short(name)?;
        args.u8(0);
        match self
            .call(format!("delete {kind} {name:?}"), class, method, args)
            .await
        {
            Ok(_)
            | Err(StompError::TopologyRefused {
                code: NOT_FOUND, ..
            }) => Ok(()),
            Err(other) => Err(other),
        }
    }

    /// Closes the connection politely (bounded); errors are ignored.
    pub async fn close(mut self) {
        let mut args = Args::default();
        args.u16(200);
        let _ = args.short("bye");
        args.u16(0);
        args.u16(0);
        let timeout = self.timeout;
        let _ = self
            .bounded("closing the AMQP connection", timeout, |a| {
                Box::pin(async move {
                    a.send(0, CONNECTION, 50, args).await?;
                    a.expect(0, CONNECTION, 51).await.map(drop)
                })
            })
            .await;
        let _ = self.write.shutdown().await;
    }

    /// One synchronous method on the channel, opened first if needed.
    async fn call(
        &mut self,
        operation: String,
        class: u16,
        method: u16,
        args: Args,
    ) -> Result<Vec<u8>, StompError> {
        let timeout = self.timeout;
        let result = self
            .bounded("an AMQP declaration", timeout, |a| {
                Box::pin(async move {
                    if !a.channel_open {
                        let mut open = Args::default();
                        open.short("")?;
                        a.send(CHANNEL, CHANNEL_CLASS, 10, open).await?;
                        a.expect(CHANNEL, CHANNEL_CLASS, 11).await?;
                        a.channel_open = true;
                    }
                    a.send(CHANNEL, class, method, args).await?;
                    a.expect(CHANNEL, class, method + 1).await
                })
            })
            .await;
        result.map_err(|error| match error {
            StompError::TopologyRefused { code, text, .. } => StompError::TopologyRefused {
                operation,
                code,
                text,
            },
            other => other,
        })
    }

    async fn bounded<'a, T>(
        &'a mut self,
        what: &'static str,
        timeout: Duration,
        f: impl FnOnce(&'a mut Self) -> futures_util::future::BoxFuture<'a, Result<T, StompError>>,
    ) -> Result<T, StompError> {
        tokio::time::timeout(timeout, f(self))
            .await
            .unwrap_or(Err(StompError::Timeout {
                operation: what,
                after: timeout,
            }))
    }

    async fn send(
        &mut self,
        channel: u16,
        class: u16,
        method: u16,
        args: Args,
    ) -> Result<(), StompError> {
        let size = u32::try_from(args.0.len() + 4).map_err(|_| self.protocol("frame too large"))?;
        let mut frame = Vec::with_capacity(args.0.len() + 12);
        frame.push(FRAME_METHOD);
        frame.extend_from_slice(&channel.to_be_bytes());
        frame.extend_from_slice(&size.to_be_bytes());
        frame.extend_from_slice(&class.to_be_bytes());
        frame.extend_from_slice(&method.to_be_bytes());
        frame.extend_from_slice(&args.0);
        frame.push(FRAME_END);
        self.write_all(&frame).await
    }

    async fn write_all(&mut self, bytes: &[u8]) -> Result<(), StompError> {
        let result = async {
            self.write.write_all(bytes).await?;
            self.write.flush().await
        }
        .await;
        result.map_err(|e| self.io(e))
    }

    /// Reads the next method, skipping heart-beats; answers the broker's
    /// `channel.close`/`connection.close` and returns it as an error.
    async fn expect(
        &mut self,
        channel: u16,
        class: u16,
        method: u16,
    ) -> Result<Vec<u8>, StompError> {
        loop {
            let mut head = [0u8; 7];
            self.read
                .read_exact(&mut head)
                .await
                .map_err(|e| self.io(e))?;
            let kind = head[0];
            let on = u16::from_be_bytes([head[1], head[2]]);
            let size = u32::from_be_bytes([head[3], head[4], head[5], head[6]]);
            if size > MAX_FRAME {
                return Err(self.protocol("frame over 128 KiB"));
            }
            let mut payload = vec![0u8; size as usize + 1];
            self.read
                .read_exact(&mut payload)
                .await
                .map_err(|e| self.io(e))?;
            if payload.pop() != Some(FRAME_END) {
                return Err(self.protocol("missing frame end"));
            }
            if kind == FRAME_HEARTBEAT {
                continue;
            }
            if kind != FRAME_METHOD || payload.len() < 4 {
                return Err(self.protocol("unexpected frame"));
            }
            let got = (
                u16::from_be_bytes([payload[0], payload[1]]),
                u16::from_be_bytes([payload[2], payload[3]]),
            );
            let args = payload.split_off(4);
            if got == (class, method) && on == channel {
                return Ok(args);
            }
            return Err(match got {
                (CHANNEL_CLASS, 40) => {
                    let (code, text) = close_reason(&args);
                    self.channel_open = false;
                    self.send(on, CHANNEL_CLASS, 41, Args::default()).await?;
                    StompError::TopologyRefused {
                        operation: String::new(),
                        code,
                        text,
                    }
                }
                (CONNECTION, 50) => {
                    let (code, text) = close_reason(&args);
                    let _ = self.send(0, CONNECTION, 51, Args::default()).await;
                    StompError::TopologyRefused {
                        operation: "the AMQP session".into(),
                        code,
                        text,
                    }
                }
                (c, m) => self.protocol(&format!(
                    "unexpected method {c}.{m}, wanted {class}.{method}"
                )),
            });
        }
    }

    fn io(&self, error: std::io::Error) -> StompError {
        let reason = if error.kind() == std::io::ErrorKind::UnexpectedEof {
            "the broker closed the connection (wrong credentials or virtual host?)".to_string()
        } else {
            error.to_string()
        };
        StompError::Topology {
            endpoint: self.endpoint.clone(),
            reason,
        }
    }

    fn protocol(&self, what: &str) -> StompError {
        StompError::Topology {
            endpoint: self.endpoint.clone(),
            reason: format!("AMQP protocol error: {what}"),
        }
    }
}

/// Reply code and text of a `close` method.
fn close_reason(args: &[u8]) -> (u16, String) {
    let code = args
        .get(..2)
        .map_or(0, |b| u16::from_be_bytes([b[0], b[1]]));
    let text = args
        .get(2)
        .and_then(|&len| args.get(3..3 + usize::from(len)))
        .map(|t| String::from_utf8_lossy(t).into_owned())
        .unwrap_or_default();
    (code, text)
}

/// Method arguments being encoded.
#[derive(Default)]
struct Args(Vec<u8>);

impl Args {
    fn u8(&mut self, value: u8) {
        self.0.push(value);
    }

    fn u16(&mut self, value: u16) {
        self.0.extend_from_slice(&value.to_be_bytes());
    }

    fn u32(&mut self, value: u32) {
        self.0.extend_from_slice(&value.to_be_bytes());
    }

    fn short(&mut self, text: &str) -> Result<(), StompError> {
        let len = u8::try_from(text.len()).map_err(|_| StompError::TopologyRefused {
            operation: format!("name {:?}...", text.chars().take(40).collect::<String>()),
            code: 0,
            text: "AMQP names are at most 255 bytes".into(),
        })?;
        self.0.push(len);
        self.0.extend_from_slice(text.as_bytes());
        Ok(())
    }

    fn long(&mut self, bytes: &[u8]) {
        self.u32(u32::try_from(bytes.len()).unwrap_or(u32::MAX));
        self.0.extend_from_slice(bytes);
    }

    fn table(&mut self, table: Table) {
        self.long(&table.0);
    }
}

/// An AMQP field table being encoded (only the types this client sends).
#[derive(Default)]
struct Table(Vec<u8>);

impl Table {
    fn key(&mut self, key: &str) {
        // Keys are short literals of this module.
        self.0.push(key.len() as u8);
        self.0.extend_from_slice(key.as_bytes());
    }

    fn boolean(&mut self, key: &str, value: bool) {
        self.key(key);
        self.0.push(b't');
        self.0.push(u8::from(value));
    }

    fn long_long(&mut self, key: &str, value: i64) {
        self.key(key);
        self.0.push(b'l');
        self.0.extend_from_slice(&value.to_be_bytes());
    }

    /// A queue argument of RabbitMQ's rules.
    fn argument(&mut self, key: &str, value: &Arg) {
        match value {
            Arg::Str(text) => self.string(key, text),
            Arg::Int(number) => self.long_long(key, *number),
            Arg::Bool(flag) => self.boolean(key, *flag),
        }
    }

    fn string(&mut self, key: &str, value: &str) {
        self.key(key);
        self.0.push(b'S');
        self.0
            .extend_from_slice(&(value.len() as u32).to_be_bytes());
        self.0.extend_from_slice(value.as_bytes());
    }

    fn table(&mut self, key: &str, value: Table) {
        self.key(key);
        self.0.push(b'F');
        self.0
            .extend_from_slice(&(value.0.len() as u32).to_be_bytes());
        self.0.extend_from_slice(&value.0);
    }
}

/// The message count of a `queue.declare-ok`: the queue name (a short string),
/// then the count as a big-endian u32.
fn message_count(reply: &[u8]) -> Option<u32> {
    let name_len = usize::from(*reply.first()?);
    let count = reply.get(1 + name_len..1 + name_len + 4)?;
    Some(u32::from_be_bytes(count.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn declare_ok_message_count() {
        let mut reply = vec![3];
        reply.extend_from_slice(b"q.x");
        reply.extend_from_slice(&7u32.to_be_bytes());
        reply.extend_from_slice(&1u32.to_be_bytes());
        assert_eq!(message_count(&reply), Some(7));
        assert_eq!(message_count(&reply[..5]), None, "cut short");
        assert_eq!(message_count(&[]), None);
    }

    #[test]
    fn close_reason_is_parsed() {
        let mut args = Args::default();
        args.u16(406);
        args.short("PRECONDITION_FAILED - inequivalent arg 'type'")
            .expect("short");
        args.u16(40);
        args.u16(10);
        assert_eq!(
            close_reason(&args.0),
            (
                406,
                "PRECONDITION_FAILED - inequivalent arg 'type'".to_string()
            )
        );
        assert_eq!(close_reason(&[1]), (0, String::new()));
    }

    #[test]
    fn names_over_255_bytes_are_refused() {
        let mut args = Args::default();
        assert!(args.short(&"x".repeat(255)).is_ok());
        assert!(matches!(
            args.short(&"x".repeat(256)),
            Err(StompError::TopologyRefused { .. })
        ));
    }

    #[test]
    fn rule_arguments_are_encoded_by_type() {
        let mut table = Table::default();
        table.argument("s", &Arg::Str("q".into()));
        table.argument("i", &Arg::Int(7));
        table.argument("b", &Arg::Bool(false));
        assert_eq!(
            table.0,
            [
                1, b's', b'S', 0, 0, 0, 1, b'q', // s = "q"
                1, b'i', b'l', 0, 0, 0, 0, 0, 0, 0, 7, // i = 7 (long-long)
                1, b'b', b't', 0, // b = false
            ]
        );
    }

    #[test]
    fn tables_are_length_prefixed() {
        let mut inner = Table::default();
        inner.boolean("a", true);
        let mut outer = Table::default();
        outer.string("p", "x");
        outer.table("c", inner);
        let mut args = Args::default();
        args.table(outer);
        assert_eq!(
            args.0,
            [
                0, 0, 0, 19, // table length
                1, b'p', b'S', 0, 0, 0, 1, b'x', // p = "x"
                1, b'c', b'F', 0, 0, 0, 4, // c = {
                1, b'a', b't', 1, // a = true }
            ]
        );
    }
}

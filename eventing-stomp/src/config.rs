//! The provider's settings, parsed from a `stomp://` or `stomps://` URL.

use std::fmt;
use std::time::Duration;

use eventing_rabbitmq::{QueueType, QueueTypeParams};
use url::Url;

use crate::codec::CodecLimits;
use crate::dialect::Dialect;
use crate::error::StompError;

/// The query parameters a STOMP URL may carry.
const PARAMETERS: &str = "vhost, heartbeat, broker, declare, amqp_port, \
                          connect_timeout, max_frame, tls_ca, queue_type, delivery_limit, \
                          publishers";

/// Default STOMP port.
pub const DEFAULT_PORT: u16 = 61613;
/// Default STOMP-over-TLS port.
pub const DEFAULT_TLS_PORT: u16 = 61614;

/// Connection settings of the STOMP provider.
///
/// Built from a URL such as
/// `stomp://guest:guest@127.0.0.1:61613?vhost=/&heartbeat=10000`:
///
/// | parameter | default | meaning |
/// |---|---|---|
/// | `vhost` | `/` | the `host` header of `CONNECT` (RabbitMQ's virtual host) |
/// | `heartbeat` | `10000` | heart-beat period in ms, both ways; `0` turns them off |
/// | `broker` | from `CONNECTED` | destination and header mapping: `rabbitmq`, `activemq` (ActiveMQ Classic) or `artemis`; without it, the broker the `server` header of `CONNECTED` names (RabbitMQ if it names none of these) |
/// | `declare` | `amqp` | RabbitMQ: declare exchanges, competing queues and dead-letter queues over AMQP 0-9-1 (see [`RabbitAdmin`](crate::RabbitAdmin)); `none` expects them to exist |
/// | `amqp_port` | `5672` (`5671` for `stomps`) | RabbitMQ's AMQP port, for `declare=amqp` |
/// | `connect_timeout` | `10000` | ms for TCP, TLS and the `CONNECT` handshake |
/// | `max_frame` | 16 MiB | largest frame read or written, in bytes (at least 1024); a received message over it is dead-lettered without its body, with the reason |
/// | `tls_ca` | none | a PEM file of extra trusted certificates (`stomps` only) |
/// | `queue_type` | `classic` | RabbitMQ: `quorum` makes competing queues and their `.dlq` quorum queues, as the AMQP provider's parameter of the same name does (per-process queues stay classic) |
/// | `publishers` | `1`; `8` on ActiveMQ | sessions durable sends are spread over (1 to 64): ActiveMQ stores a persistent message before it reads the next frame of that connection, so one session is one disk write at a time |
/// | `delivery_limit` | `20` | with `queue_type=quorum`: `x-delivery-limit`; the broker dead-letters a message to `<queue>.dlq` after this many deliveries without an acknowledgement |
///
/// The password is never shown by `Debug` or in errors.
///
/// ```
/// use eventing_stomp::StompConfig;
///
/// let config = StompConfig::from_url("stomp://app:s3cret@broker:61613?vhost=prod&heartbeat=5000")?;
/// assert_eq!(config.vhost, "prod");
/// assert_eq!(config.heartbeat.as_millis(), 5000);
/// assert!(!format!("{config:?}").contains("s3cret"));
/// # Ok::<(), eventing_stomp::StompError>(())
/// ```
#[derive(Clone)]
#[non_exhaustive]
pub struct StompConfig {
    /// Broker host name or address.
    pub host: String,
    /// Broker STOMP port.
    pub port: u16,
    /// `stomps://`: TLS with rustls.
    pub tls: bool,
    /// The `login` header, if any.
    pub login: Option<String>,
    /// The `passcode` header, if any (never shown by `Debug`).
    pub passcode: Option<String>,
    /// The `host` header of `CONNECT`: the virtual host.
    pub vhost: String,
    /// The heart-beat period this client offers and asks for; zero turns them off.
    pub heartbeat: Duration,
    /// How destinations and headers are mapped for the broker.
    pub dialect: Dialect,
    /// No `broker` parameter: the dialect is taken from the `server` header of
    /// the broker's `CONNECTED` frame when the provider connects.
    pub detect_dialect: bool,
    /// RabbitMQ's AMQP 0-9-1 port, used only to declare exchanges and queues.
    pub amqp_port: u16,
    /// Whether to declare exchanges, competing queues and dead-letter queues over
    /// AMQP 0-9-1 (RabbitMQ, `declare=amqp`); otherwise (`declare=none`) they
    /// must exist.
    pub declare_topology: bool,
    /// Limit for TCP connect, TLS and the `CONNECT`/`CONNECTED` exchange.
    pub connect_timeout: Duration,
    /// Frame size limits in both directions.
    pub limits: CodecLimits,
    /// Extra trusted certificates (PEM file) for `stomps://`.
    pub tls_ca: Option<String>,
    /// RabbitMQ: the type of competing queues (`queue_type`, `delivery_limit`).
    pub queue_type: QueueType,
    /// Sessions that durable sends are spread over (`publishers`); 0: the
    /// broker's default (see [`publisher_count`](Self::publisher_count)).
    pub publishers: usize,
}

impl StompConfig {
    /// Parses a `stomp://` or `stomps://` URL. Errors never repeat the URL.
    pub fn from_url(url: &str) -> Result<StompConfig, StompError> {
        let parsed = Url::parse(url).map_err(|e| invalid(format!("not a URL ({e})")))?;
        let tls = match parsed.scheme() {
            "stomp" => false,
            "stomps" => true,
            other => {
                return Err(invalid(format!(
                    "scheme `{other}` is not stomp:// or stomps://"
                )));
            }
        };
        let host = parsed
            .host_str()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| invalid("no host".into()))?;
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host)
            .to_string();
        let login = match parsed.username() {
            "" => None,
            user => Some(decode(user, "user name")?),
        };
        let passcode = parsed
            .password()
            .map(|p| decode(p, "password"))
            .transpose()?;
        let mut config = StompConfig {
            host,
            port: parsed
                .port()
                .unwrap_or(if tls { DEFAULT_TLS_PORT } else { DEFAULT_PORT }),
            tls,
            login,
            passcode,
            vhost: "/".to_string(),
            heartbeat: Duration::from_millis(10_000),
            dialect: Dialect::RabbitMq,
            detect_dialect: true,
            amqp_port: if tls { 5671 } else { 5672 },
            declare_topology: true,
            connect_timeout: Duration::from_millis(10_000),
            limits: CodecLimits::default(),
            tls_ca: None,
            queue_type: QueueType::Classic,
            publishers: 0,
        };
        let mut queue_type = QueueTypeParams::default();
        for (name, value) in parsed.query_pairs() {
            if queue_type.accept(&name, &value).map_err(invalid)? {
                continue;
            }
            match &*name {
                "vhost" => config.vhost = value.into_owned(),
                "heartbeat" => config.heartbeat = Duration::from_millis(number(&name, &value)?),
                "broker" => {
                    config.detect_dialect = false;
                    config.dialect = match &*value {
                        "rabbitmq" => Dialect::RabbitMq,
                        "activemq" => Dialect::ActiveMq,
                        "artemis" => Dialect::Artemis,
                        _ => {
                            return Err(invalid(
                                "`broker` must be `rabbitmq`, `activemq` or `artemis`".into(),
                            ));
                        }
                    }
                }
                "amqp_port" => {
                    config.amqp_port = u16::try_from(number(&name, &value)?)
                        .map_err(|_| invalid("`amqp_port` is not a port number".into()))?;
                }
                "declare" => {
                    config.declare_topology = match &*value {
                        "amqp" => true,
                        "none" => false,
                        _ => return Err(invalid("`declare` must be `amqp` or `none`".into())),
                    }
                }
                "connect_timeout" => {
                    config.connect_timeout = Duration::from_millis(number(&name, &value)?.max(1));
                }
                "max_frame" => {
                    let bytes = usize::try_from(number(&name, &value)?)
                        .map_err(|_| invalid("`max_frame` is too large".into()))?;
                    config.limits.max_frame_bytes = bytes.max(1024);
                }
                "tls_ca" => config.tls_ca = Some(value.into_owned()),
                "publishers" => {
                    config.publishers = match number(&name, &value)? {
                        n @ 1..=64 => n as usize,
                        _ => return Err(invalid("`publishers` must be 1 to 64".into())),
                    };
                }
                other => {
                    return Err(invalid(format!(
                        "unknown parameter `{other}` (known: {PARAMETERS})"
                    )));
                }
            }
        }
        if config.tls_ca.is_some() && !tls {
            return Err(invalid("`tls_ca` needs a stomps:// URL".into()));
        }
        config.queue_type = queue_type.finish().map_err(invalid)?;
        config.check_dialect()?;
        Ok(config)
    }

    /// Sets the dialect of the broker that answered (the `server` header of
    /// `CONNECTED`) unless the URL chose one, and checks the settings against it.
    pub(crate) fn detected(&mut self, server: Option<&str>) -> Result<(), StompError> {
        if self.detect_dialect {
            self.dialect = self.dialect_of(server);
            tracing::debug!(
                server,
                dialect = self.dialect.name(),
                "STOMP broker recognised"
            );
        }
        self.check_dialect()
    }

    /// The dialect for a broker whose `CONNECTED` named `server`: the URL's
    /// choice, or else the one `server` names (RabbitMQ when it names none we know).
    pub(crate) fn dialect_of(&self, server: Option<&str>) -> Dialect {
        if self.detect_dialect {
            server
                .and_then(Dialect::from_server)
                .unwrap_or(Dialect::RabbitMq)
        } else {
            self.dialect
        }
    }

    fn check_dialect(&self) -> Result<(), StompError> {
        if self.queue_type != QueueType::Classic && self.dialect != Dialect::RabbitMq {
            return Err(invalid(format!(
                "`queue_type` and `delivery_limit` are RabbitMQ's (broker=rabbitmq), not {}'s",
                self.dialect.name()
            )));
        }
        Ok(())
    }

    /// How many sessions durable sends are spread over: `publishers`, or by
    /// default 8 on ActiveMQ (which stores one persistent message of a
    /// connection at a time) and 1 elsewhere.
    pub fn publisher_count(&self) -> usize {
        match (self.publishers, self.dialect) {
            (0, Dialect::ActiveMq) => 8,
            (0, _) => 1,
            (n, _) => n,
        }
    }

    /// `host:port` for connecting.
    pub(crate) fn endpoint(&self) -> String {
        crate::transport::endpoint(&self.host, self.port)
    }

    /// The broker as it may appear in logs: scheme, host and port, no credentials.
    pub fn display_endpoint(&self) -> String {
        let scheme = if self.tls { "stomps" } else { "stomp" };
        format!("{scheme}://{}", self.endpoint())
    }
}

impl fmt::Debug for StompConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StompConfig")
            .field("endpoint", &self.display_endpoint())
            .field("login", &self.login)
            .field("passcode", &self.passcode.as_ref().map(|_| "***"))
            .field("vhost", &self.vhost)
            .field("heartbeat", &self.heartbeat)
            .field("dialect", &self.dialect)
            .field("detect_dialect", &self.detect_dialect)
            .field("amqp_port", &self.amqp_port)
            .field("declare_topology", &self.declare_topology)
            .field("connect_timeout", &self.connect_timeout)
            .field("limits", &self.limits)
            .field("tls_ca", &self.tls_ca)
            .field("queue_type", &self.queue_type)
            .field("publishers", &self.publishers)
            .finish()
    }
}

fn invalid(reason: String) -> StompError {
    StompError::InvalidUrl { reason }
}

fn number(name: &str, value: &str) -> Result<u64, StompError> {
    value
        .parse()
        .map_err(|_| invalid(format!("`{name}` must be a whole number")))
}

fn decode(text: &str, what: &str) -> Result<String, StompError> {
    percent_encoding::percent_decode_str(text)
        .decode_utf8()
        .map(|s| s.into_owned())
        .map_err(|_| invalid(format!("the {what} is not percent-encoded UTF-8")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults() {
        let config = StompConfig::from_url("stomp://127.0.0.1").expect("valid");
        assert_eq!(config.port, DEFAULT_PORT);
        assert!(!config.tls);
        assert_eq!(config.login, None);
        assert_eq!(config.passcode, None);
        assert_eq!(config.vhost, "/");
        assert_eq!(config.heartbeat, Duration::from_secs(10));
        assert_eq!(config.dialect, Dialect::RabbitMq);
        assert!(config.detect_dialect);
        assert_eq!(config.amqp_port, 5672);
        assert_eq!(config.endpoint(), "127.0.0.1:61613");

        let tls = StompConfig::from_url("stomps://broker.example").expect("valid");
        assert_eq!(tls.port, DEFAULT_TLS_PORT);
        assert_eq!(tls.amqp_port, 5671);
        assert!(tls.tls);
    }

    #[test]
    fn everything_set() {
        let config = StompConfig::from_url(
            "stomp://us%40er:p%3Ass+w@[::1]:1234/?vhost=%2Fprod&heartbeat=0&broker=artemis\
             &amqp_port=5673&declare=none&connect_timeout=500&max_frame=65536",
        )
        .expect("valid");
        assert_eq!(config.login.as_deref(), Some("us@er"));
        assert_eq!(config.passcode.as_deref(), Some("p:ss+w"));
        assert_eq!(config.host, "::1");
        assert_eq!(config.endpoint(), "[::1]:1234");
        assert_eq!(config.vhost, "/prod");
        assert_eq!(config.heartbeat, Duration::ZERO);
        assert_eq!(config.dialect, Dialect::Artemis);
        assert!(!config.detect_dialect);
        assert_eq!(config.amqp_port, 5673);
        assert!(!config.declare_topology);
        assert_eq!(config.connect_timeout, Duration::from_millis(500));
        assert_eq!(config.limits.max_frame_bytes, 65536);
    }

    #[test]
    fn errors_do_not_repeat_the_url() {
        for url in [
            "amqp://guest:secret@h",
            "stomp://guest:secret@h?nope=1",
            "stomp://guest:secret@h?heartbeat=soon",
            "stomp://guest:secret@h?broker=kafka",
            "stomp://guest:secret@h?tls_ca=/x.pem",
            "stomp://guest:secret@:61613",
            "not a url secret",
        ] {
            let error = StompConfig::from_url(url).expect_err(url).to_string();
            assert!(!error.contains("secret"), "{error}");
        }
        let error = StompConfig::from_url("stomp://h?nope=1").expect_err("unknown");
        assert!(error.to_string().contains("known: vhost"), "{error}");
    }

    #[test]
    fn quorum_queues_as_on_amqp_urls() {
        let classic = StompConfig::from_url("stomp://h").expect("valid");
        assert_eq!(classic.queue_type, QueueType::Classic);
        let quorum = StompConfig::from_url("stomp://h?queue_type=quorum").expect("valid");
        assert_eq!(
            quorum.queue_type,
            QueueType::Quorum {
                delivery_limit: eventing_rabbitmq::DEFAULT_DELIVERY_LIMIT
            }
        );
        let limited = StompConfig::from_url("stomp://h?delivery_limit=7&queue_type=quorum&vhost=/")
            .expect("valid");
        assert_eq!(limited.queue_type, QueueType::Quorum { delivery_limit: 7 });
        for (url, expected) in [
            ("stomp://h?queue_type=stream", "`queue_type` must be"),
            (
                "stomp://h?queue_type=quorum&delivery_limit=0",
                "`delivery_limit` must be",
            ),
            ("stomp://h?delivery_limit=5", "needs `queue_type=quorum`"),
            (
                "stomp://h?queue_type=quorum&queue_type=quorum",
                "more than once",
            ),
            ("stomp://h?queue_type=quorum&broker=artemis", "RabbitMQ's"),
            (
                "stomp://h?queue-type=quorum",
                "unknown parameter `queue-type`",
            ),
        ] {
            let error = StompConfig::from_url(url).expect_err(url).to_string();
            assert!(error.contains(expected), "{url}: {error}");
        }
    }

    #[test]
    fn the_url_wins_over_the_server_header() {
        let mut auto = StompConfig::from_url("stomp://h:61623").expect("valid");
        auto.detected(Some("ActiveMQ/5.17.2")).expect("fine");
        assert_eq!(auto.dialect, Dialect::ActiveMq);
        let mut unknown = StompConfig::from_url("stomp://h").expect("valid");
        unknown.detected(Some("Apollo/1.7")).expect("fine");
        assert_eq!(unknown.dialect, Dialect::RabbitMq);
        let mut chosen = StompConfig::from_url("stomp://h?broker=rabbitmq").expect("valid");
        chosen.detected(Some("ActiveMQ/5.17.2")).expect("fine");
        assert_eq!(chosen.dialect, Dialect::RabbitMq);
        let activemq = StompConfig::from_url("stomp://h?broker=activemq").expect("valid");
        assert_eq!(activemq.dialect, Dialect::ActiveMq);
        let mut quorum = StompConfig::from_url("stomp://h?queue_type=quorum").expect("valid");
        let error = quorum
            .detected(Some("ActiveMQ/5.17.2"))
            .expect_err("quorum queues are RabbitMQ's");
        assert!(error.to_string().contains("not activemq's"), "{error}");
    }

    #[test]
    fn durable_sends_spread_over_publishers() {
        let mut auto = StompConfig::from_url("stomp://h").expect("valid");
        assert_eq!(auto.publisher_count(), 1);
        auto.detected(Some("ActiveMQ/5.17.2")).expect("fine");
        assert_eq!(auto.publisher_count(), 8);
        let set = StompConfig::from_url("stomp://h?broker=activemq&publishers=2").expect("valid");
        assert_eq!(set.publisher_count(), 2);
        for url in ["stomp://h?publishers=0", "stomp://h?publishers=65"] {
            let error = StompConfig::from_url(url).expect_err(url).to_string();
            assert!(error.contains("`publishers` must be 1 to 64"), "{error}");
        }
    }

    #[test]
    fn debug_hides_the_password() {
        let config =
            StompConfig::from_url("stomps://guest:hunter2@h:1?tls_ca=/ca.pem").expect("valid");
        let debug = format!("{config:?}");
        assert!(!debug.contains("hunter2"), "{debug}");
        assert!(debug.contains("***"), "{debug}");
        assert!(debug.contains("stomps://h:1"), "{debug}");
        assert_eq!(config.display_endpoint(), "stomps://h:1");
    }

    #[test]
    fn redact_url_hides_credentials_of_stomp_urls() {
        assert_eq!(
            eventing::redact_url("stomp://guest:guest@127.0.0.1:61613?vhost=/"),
            "stomp://***@127.0.0.1:61613?vhost=/"
        );
        assert_eq!(
            eventing::redact_url("stomps://u:p%40ss@broker/?heartbeat=0"),
            "stomps://***@broker/?heartbeat=0"
        );
        assert_eq!(
            eventing::redact_url("stomp://127.0.0.1:61613"),
            "stomp://127.0.0.1:61613"
        );
    }
}

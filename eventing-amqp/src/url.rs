//! Reading the provider URL without ever echoing its credentials.
//!
//! Besides lapin's own query parameters (`heartbeat`, `frame_max`, `channel_max`,
//! `connection_timeout`, `auth_mechanism`) the URL takes:
//!
//! | parameter | default | meaning |
//! |---|---|---|
//! | `queue_type` | `classic` | `quorum`: competing queues and their `.dlq` are quorum queues (replicated on a cluster); per-process queues stay classic (they are exclusive) |
//! | `delivery_limit` | `20` | with `queue_type=quorum`: `x-delivery-limit`; the broker dead-letters a message to `<queue>.dlq` after this many deliveries without an acknowledgement |
//! | `tls_ca` (or RabbitMQ's name `cacertfile`) | none | `amqps://` only: a PEM file of certificates to trust besides the system's roots (a private CA) |
//! | `failover` | none | other nodes of the cluster, `host:port` pairs separated by commas (`failover=10.0.0.2:5672,10.0.0.3:5672`), reached with the URL's credentials, vhost, scheme and TLS settings when the host in use cannot be reached |
//!
//! An unknown parameter, a repeated one or a bad value is an
//! [`Error::InvalidUrl`] naming the parameter.

use eventing::{Error, redact_url};
use lapin::tcp::OwnedTLSConfig;
use lapin::uri::{AMQPScheme, AMQPUri};

use eventing_rabbitmq::{QueueType, QueueTypeParams};

/// lapin's own query parameters, which it parses.
const LAPIN_PARAMETERS: [&str; 5] = [
    "heartbeat",
    "frame_max",
    "channel_max",
    "connection_timeout",
    "auth_mechanism",
];

/// Every query parameter the URL may carry, for error messages.
const PARAMETERS: &str = "heartbeat, frame_max, channel_max, connection_timeout, \
                          auth_mechanism, queue_type, delivery_limit, tls_ca (or cacertfile), failover";

/// The most hosts `failover` may list.
const MAX_FAILOVER: usize = 32;

/// A parsed `amqp://` or `amqps://` URL and its redacted form for logs.
pub(crate) struct BrokerUrl {
    pub(crate) uri: AMQPUri,
    /// Extra trusted certificates (`tls_ca`) for `amqps://`; empty otherwise.
    pub(crate) tls: OwnedTLSConfig,
    /// The type of competing queues (`queue_type`, `delivery_limit`).
    pub(crate) queue_type: QueueType,
    /// The other nodes to connect to (`failover`), in the URL's order.
    pub(crate) failover: Vec<Endpoint>,
    /// The URL with user and password replaced by `***`.
    pub(crate) redacted: String,
}

impl std::fmt::Debug for BrokerUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BrokerUrl")
            .field("url", &self.redacted)
            .field("queue_type", &self.queue_type)
            .field("failover", &self.failover)
            .finish_non_exhaustive()
    }
}

/// A `host:port` of the URL's `failover` list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Endpoint {
    pub(crate) host: String,
    pub(crate) port: u16,
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

impl BrokerUrl {
    /// The URI of every host to try, the URL's own first, then the `failover`
    /// ones; each with the URL's credentials, vhost and parameters.
    pub(crate) fn hosts(&self) -> Vec<AMQPUri> {
        let mut hosts = vec![self.uri.clone()];
        hosts.extend(self.failover.iter().map(|endpoint| {
            let mut uri = self.uri.clone();
            uri.authority.host.clone_from(&endpoint.host);
            uri.authority.port = endpoint.port;
            uri
        }));
        hosts
    }
}

/// Parses an AMQP URL such as `amqp://guest:guest@127.0.0.1:5672/%2f` (the vhost is
/// percent-encoded; `%2f` is `/`). Errors never contain the user or password.
pub(crate) fn parse(url: &str) -> Result<BrokerUrl, Error> {
    let redacted = redact_url(url);
    let uri: AMQPUri = url.parse().map_err(|reason: String| Error::InvalidUrl {
        reason: format!(
            "`{redacted}` is not an AMQP URL: {}",
            scrub(&reason, url, &redacted)
        ),
    })?;
    if uri.scheme == AMQPScheme::AMQPS && !cfg!(feature = "rustls") {
        return Err(Error::InvalidUrl {
            reason: format!(
                "`{redacted}`: amqps:// needs TLS; enable the `rustls` feature of eventing-amqp"
            ),
        });
    }
    let options = Options::from_query(url, uri.scheme == AMQPScheme::AMQPS).map_err(|reason| {
        Error::InvalidUrl {
            reason: format!("`{redacted}`: {reason}"),
        }
    })?;
    let tls = match &options.tls_ca {
        Some(path) => OwnedTLSConfig {
            identity: None,
            cert_chain: Some(read_certificates(path).map_err(|reason| Error::InvalidUrl {
                reason: format!("`{redacted}`: {reason}"),
            })?),
        },
        None => OwnedTLSConfig::default(),
    };
    Ok(BrokerUrl {
        uri,
        tls,
        queue_type: options.queue_type,
        failover: options.failover,
        redacted,
    })
}

/// What the URL's own query parameters say.
#[derive(Debug, Default, PartialEq, Eq)]
struct Options {
    queue_type: QueueType,
    tls_ca: Option<String>,
    failover: Vec<Endpoint>,
}

impl Options {
    /// Reads the parameters after the `?` of `url` (`tls` for `amqps://`).
    fn from_query(url: &str, tls: bool) -> Result<Options, String> {
        let query = url
            .split_once('?')
            .map_or("", |(_, query)| query)
            .split('#')
            .next()
            .unwrap_or("");
        let mut seen: Vec<String> = Vec::new();
        let mut queue_type = QueueTypeParams::default();
        let mut tls_ca = None;
        let mut failover = Vec::new();
        for pair in query.split('&').filter(|pair| !pair.is_empty()) {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            let name = decode(name).ok_or("a parameter name is not percent-encoded UTF-8")?;
            let value = decode(value)
                .ok_or_else(|| format!("the value of `{name}` is not percent-encoded UTF-8"))?;
            let key = if name == "cacertfile" {
                "tls_ca"
            } else {
                name.as_str()
            };
            if seen.iter().any(|s| s == key) {
                return Err(format!("`{name}` is given more than once"));
            }
            seen.push(key.to_string());
            match key {
                rabbitmq if queue_type.accept(rabbitmq, &value)? => {}
                "tls_ca" => {
                    if !tls {
                        return Err(format!("`{name}` needs an amqps:// URL"));
                    }
                    if value.is_empty() {
                        return Err(format!("`{name}` is empty; it names a PEM file"));
                    }
                    tls_ca = Some(value);
                }
                "failover" => failover = parse_failover(&value)?,
                lapin if LAPIN_PARAMETERS.contains(&lapin) => {}
                other => {
                    return Err(format!("unknown parameter `{other}` (known: {PARAMETERS})"));
                }
            }
        }
        let queue_type = queue_type.finish()?;
        Ok(Options {
            queue_type,
            tls_ca,
            failover,
        })
    }
}

/// Reads `failover`'s comma-separated `host:port` pairs.
fn parse_failover(value: &str) -> Result<Vec<Endpoint>, String> {
    if value.trim().is_empty() {
        return Err("`failover` is empty; it lists `host:port` pairs separated by commas".into());
    }
    let mut endpoints: Vec<Endpoint> = Vec::new();
    for entry in value.split(',').map(str::trim) {
        let bad = |why: &str| format!("`failover` entry `{entry}`: {why}");
        if entry.is_empty() {
            return Err(bad("empty (two commas in a row, or a trailing comma)"));
        }
        if entry.contains('@') || entry.contains('/') {
            return Err(bad(
                "give only `host:port`; the credentials, vhost and scheme are the URL's",
            ));
        }
        if entry.starts_with('[') {
            return Err(bad(
                "IPv6 literals are not supported; use a host name or an IPv4 address",
            ));
        }
        let (host, port) = entry
            .rsplit_once(':')
            .ok_or_else(|| bad("expected `host:port`"))?;
        let valid_host = !host.is_empty()
            && host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-' || c == '_');
        if !valid_host {
            return Err(bad("the host is not a host name or an IPv4 address"));
        }
        let port = port
            .parse::<u16>()
            .ok()
            .filter(|port| *port != 0)
            .ok_or_else(|| bad("the port must be a whole number from 1 to 65535"))?;
        let endpoint = Endpoint {
            host: host.to_string(),
            port,
        };
        if endpoints.contains(&endpoint) {
            return Err(bad("listed more than once"));
        }
        endpoints.push(endpoint);
    }
    if endpoints.len() > MAX_FAILOVER {
        return Err(format!(
            "`failover` lists {} hosts; at most {MAX_FAILOVER}",
            endpoints.len()
        ));
    }
    Ok(endpoints)
}

/// The PEM text of the certificate file `path`; an error unless it holds one.
fn read_certificates(path: &str) -> Result<String, String> {
    let pem =
        std::fs::read_to_string(path).map_err(|e| format!("cannot read tls_ca `{path}`: {e}"))?;
    if !pem.contains("-----BEGIN CERTIFICATE-----") {
        return Err(format!("tls_ca `{path}` holds no PEM certificate"));
    }
    Ok(pem)
}

/// Percent-decodes a query component (`+` is a space), or `None` if the result is
/// not UTF-8 or an escape is malformed.
fn decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = text.get(i + 1..i + 3)?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            byte => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// Removes the URL and anything that looks like its user info from a parser message.
fn scrub(message: &str, url: &str, redacted: &str) -> String {
    let mut message = message.replace(url, redacted);
    if let Some(rest) = url.split_once("://").map(|(_, rest)| rest) {
        let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
        if let Some((userinfo, _)) = authority.rsplit_once('@') {
            for secret in userinfo.split(':').filter(|s| s.len() >= 3) {
                message = message.replace(secret, "***");
            }
        }
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "s3cr3t-pw";

    #[test]
    fn parses_the_default_url() {
        let url = parse("amqp://guest:guest@127.0.0.1:5672/%2f").expect("valid");
        assert_eq!(url.uri.vhost, "/");
        assert_eq!(url.uri.authority.port, 5672);
        assert_eq!(url.redacted, "amqp://***@127.0.0.1:5672/%2f");
    }

    #[test]
    fn credentials_never_show() {
        let good = format!("amqp://user:{SECRET}@127.0.0.1:5672/%2f");
        let parsed = parse(&good).expect("valid");
        assert!(!format!("{parsed:?}").contains(SECRET));
        for bad in [
            format!("amqp://user:{SECRET}@[::1:5672/%2f"),
            format!("amqp://user:{SECRET}@host:99999/%2f"),
            format!("ftp://user:{SECRET}@host/"),
            format!("amqp://user:{SECRET}@host:5672/%2f?heartbeat=soon"),
        ] {
            let error = parse(&bad).expect_err(&redact_url(&bad));
            for text in [error.to_string(), format!("{error:?}")] {
                assert!(!text.contains(SECRET), "leaks the password: {text}");
                assert!(!text.contains("user:"), "leaks the user: {text}");
            }
        }
    }

    #[test]
    fn queue_type_and_delivery_limit() {
        let classic = parse("amqp://127.0.0.1/%2f").expect("valid");
        assert_eq!(classic.queue_type, QueueType::Classic);
        let explicit = parse("amqp://127.0.0.1/%2f?queue_type=classic").expect("valid");
        assert_eq!(explicit.queue_type, QueueType::Classic);
        let quorum = parse("amqp://127.0.0.1/%2f?heartbeat=5&queue_type=quorum").expect("valid");
        assert_eq!(
            quorum.queue_type,
            QueueType::Quorum {
                delivery_limit: eventing_rabbitmq::DEFAULT_DELIVERY_LIMIT
            }
        );
        assert_eq!(
            quorum.uri.query.heartbeat,
            Some(5),
            "lapin's parameters still apply"
        );
        let limited = parse("amqp://h/%2f?delivery_limit=3&queue_type=quorum").expect("valid");
        assert_eq!(limited.queue_type, QueueType::Quorum { delivery_limit: 3 });
    }

    #[test]
    fn bad_parameters_are_typed_errors_naming_them() {
        for (url, expected) in [
            ("amqp://h/%2f?queue_type=stream", "`queue_type` must be"),
            ("amqp://h/%2f?queue_type=", "`queue_type` must be"),
            (
                "amqp://h/%2f?queue_type=quorum&delivery_limit=0",
                "`delivery_limit` must be",
            ),
            (
                "amqp://h/%2f?queue_type=quorum&delivery_limit=-1",
                "`delivery_limit` must be",
            ),
            (
                "amqp://h/%2f?queue_type=quorum&delivery_limit=lots",
                "`delivery_limit` must be",
            ),
            (
                "amqp://h/%2f?queue_type=quorum&delivery_limit=4294967295",
                "`delivery_limit` must be",
            ),
            ("amqp://h/%2f?delivery_limit=5", "needs `queue_type=quorum`"),
            (
                "amqp://h/%2f?queue-type=quorum",
                "unknown parameter `queue-type`",
            ),
            (
                "amqp://h/%2f?queue_type=quorum&queue_type=classic",
                "more than once",
            ),
            ("amqp://h/%2f?tls_ca=/ca.pem", "needs an amqps:// URL"),
            ("amqp://h/%2f?cacertfile=/ca.pem", "needs an amqps:// URL"),
            ("amqp://h/%2f?queue_type=%ff", "not percent-encoded UTF-8"),
        ] {
            let error = parse(url).expect_err(url);
            assert!(
                matches!(error, Error::InvalidUrl { .. }),
                "{url}: {error:?}"
            );
            let text = error.to_string();
            assert!(text.contains(expected), "{url}: {text}");
        }
        let error = parse("amqp://h/%2f?nope=1")
            .expect_err("unknown")
            .to_string();
        assert!(error.contains("known: heartbeat"), "{error}");
    }

    #[test]
    fn failover_hosts_share_the_urls_credentials_vhost_and_parameters() {
        let url = parse(&format!(
            "amqp://user:{SECRET}@127.0.0.1:5672/prod?heartbeat=7&failover=127.0.0.1:5673,%20rabbit-2.example:5674&queue_type=quorum"
        ))
        .expect("valid");
        assert_eq!(
            url.failover,
            [
                Endpoint {
                    host: "127.0.0.1".into(),
                    port: 5673
                },
                Endpoint {
                    host: "rabbit-2.example".into(),
                    port: 5674
                }
            ]
        );
        let hosts = url.hosts();
        assert_eq!(hosts.len(), 3);
        assert_eq!(hosts[0], url.uri, "the URL's own host comes first");
        for (uri, (host, port)) in hosts[1..]
            .iter()
            .zip([("127.0.0.1", 5673), ("rabbit-2.example", 5674)])
        {
            assert_eq!(uri.authority.host, host);
            assert_eq!(uri.authority.port, port);
            assert_eq!(uri.authority.userinfo, url.uri.authority.userinfo);
            assert_eq!(uri.vhost, "prod");
            assert_eq!(uri.query.heartbeat, Some(7));
            assert_eq!(uri.scheme, url.uri.scheme);
        }
        assert!(!format!("{url:?}").contains(SECRET));
        assert!(format!("{url:?}").contains("5674"));
        let none = parse("amqp://127.0.0.1/%2f").expect("valid");
        assert!(none.failover.is_empty());
        assert_eq!(none.hosts(), std::slice::from_ref(&none.uri));
        let encoded = parse("amqp://h/%2f?failover=a%3A1%2Cb%3A2").expect("percent-encoded");
        assert_eq!(encoded.failover.len(), 2);
    }

    #[test]
    fn bad_failover_entries_are_typed_errors_naming_them() {
        for (query, expected) in [
            ("failover=", "`failover` is empty"),
            (
                "failover=127.0.0.1",
                "entry `127.0.0.1`: expected `host:port`",
            ),
            (
                "failover=127.0.0.1:",
                "entry `127.0.0.1:`: the port must be",
            ),
            ("failover=127.0.0.1:0", "the port must be"),
            ("failover=127.0.0.1:65536", "the port must be"),
            ("failover=127.0.0.1:-1", "the port must be"),
            ("failover=:5672", "the host is not"),
            ("failover=a:1,,b:2", "entry ``: empty"),
            ("failover=a:1,", "entry ``: empty"),
            ("failover=a:1,a:1", "entry `a:1`: listed more than once"),
            ("failover=guest:pw@a:1", "give only `host:port`"),
            ("failover=a:1/vhost", "give only `host:port`"),
            ("failover=[::1]:5672", "IPv6 literals are not supported"),
            ("failover=a b:1", "the host is not"),
            (
                "failover=a:1&failover=b:2",
                "`failover` is given more than once",
            ),
        ] {
            let url = format!("amqp://user:{SECRET}@h/%2f?{query}");
            let error = parse(&url).expect_err(query);
            assert!(
                matches!(error, Error::InvalidUrl { .. }),
                "{query}: {error:?}"
            );
            let text = error.to_string();
            assert!(text.contains(expected), "{query}: {text}");
            assert!(!text.contains(SECRET), "{query}: {text}");
        }
        let many = (1..=MAX_FAILOVER + 1)
            .map(|port| format!("h:{port}"))
            .collect::<Vec<_>>()
            .join(",");
        let text = parse(&format!("amqp://h/%2f?failover={many}"))
            .expect_err("too many")
            .to_string();
        assert!(text.contains("at most 32"), "{text}");
    }

    #[test]
    fn decodes_query_components() {
        assert_eq!(decode("a%2Fb+c").as_deref(), Some("a/b c"));
        assert_eq!(decode("%").as_deref(), None);
        assert_eq!(decode("%zz").as_deref(), None);
        assert_eq!(decode("%e2%82%ac").as_deref(), Some("\u{20ac}"));
    }

    #[cfg(feature = "rustls")]
    #[test]
    fn tls_ca_is_read_and_checked() {
        let dir = std::env::temp_dir().join(format!("eventing-amqp-url-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let good = dir.join("ca.pem");
        std::fs::write(
            &good,
            "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
        )
        .expect("write");
        let bad = dir.join("empty.pem");
        std::fs::write(&bad, "nothing here").expect("write");
        let url = format!(
            "amqps://user:{SECRET}@127.0.0.1:5671/%2f?tls_ca={}",
            good.display()
        );
        let parsed = parse(&url).expect("valid");
        assert!(
            parsed
                .tls
                .cert_chain
                .as_deref()
                .is_some_and(|pem| pem.contains("MIIB"))
        );
        let alias = parse(&format!("amqps://h/%2f?cacertfile={}", good.display())).expect("valid");
        assert!(alias.tls.cert_chain.is_some());
        for (path, expected) in [
            (bad.display().to_string(), "holds no PEM certificate"),
            (
                dir.join("missing.pem").display().to_string(),
                "cannot read tls_ca",
            ),
        ] {
            let url = format!("amqps://user:{SECRET}@h/%2f?tls_ca={path}");
            let text = parse(&url).expect_err(&path).to_string();
            assert!(text.contains(expected), "{text}");
            assert!(!text.contains(SECRET), "{text}");
        }
        let both = format!("amqps://h/%2f?tls_ca={0}&cacertfile={0}", good.display());
        assert!(
            parse(&both)
                .expect_err("twice")
                .to_string()
                .contains("more than once")
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[cfg(not(feature = "rustls"))]
    #[test]
    fn amqps_without_tls_is_a_clear_error() {
        let error = parse(&format!("amqps://user:{SECRET}@host/%2f")).expect_err("no TLS");
        let text = error.to_string();
        assert!(text.contains("rustls"), "{text}");
        assert!(!text.contains(SECRET));
    }
}

//! `redis://`, `rediss://` and `redis+sentinel://` URLs: server, credentials and
//! parameters.
//!
//! ```text
//! redis://127.0.0.1:6379                          no authentication, database 0
//! redis://user:pass@host:6379/2                   ACL user and password (percent-encoded), database 2
//! redis://:pass@host                              `requirepass` password only; port 6379
//! rediss://host:6380?tls_ca=/path/ca.pem          TLS (feature `rustls`), trusting this CA (PEM)
//! redis+sentinel://s1:26379,s2:26379/mymaster     the master `mymaster` as Sentinel names it
//! ```
//!
//! Parameters (anything else is an [`Error::InvalidUrl`]):
//!
//! | parameter | default | meaning |
//! |---|---|---|
//! | `claim_idle` | 15 | seconds an entry may stay unacknowledged in a consumer that no longer touches it before another member claims it (`XAUTOCLAIM`) |
//! | `maxlen` | 1000000 | entries one event stream may hold; at the bound sends wait for consumers (then fail with `Unavailable`); see the crate docs |
//! | `replicas` | 0 | durable sends wait (`WAIT`) until this many replicas have the entry |
//! | `wait_timeout` | 1000 | milliseconds one `WAIT` may block; while fewer replicas confirm, a durable send asks again until the send timeout, then fails |
//! | `prefix` | (none) | put before every key this provider writes (`<prefix><event>`, ...) |
//! | `tls_ca` | (system roots) | PEM file of the CA to trust; implies TLS |
//! | `db` | 0 | the database, for `redis+sentinel://` URLs (their path is the master name) |
//!
//! The URL is never logged; errors do not repeat it. Credentials go to the data
//! nodes; the sentinels of a `redis+sentinel://` URL are reached without them.

use std::path::PathBuf;
use std::time::Duration;

use eventing::{Error, Result};

/// The Redis port when a URL names none.
pub const DEFAULT_PORT: u16 = 6379;
/// The Sentinel port when a URL names none.
pub const DEFAULT_SENTINEL_PORT: u16 = 26379;

/// What a URL says.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RedisUrl {
    /// Where the server is: one address, or sentinels and a master name.
    pub servers: Servers,
    /// `rediss://`, or a CA given.
    pub tls: bool,
    pub(crate) user: Option<String>,
    pub(crate) password: Option<String>,
    /// The database number.
    pub db: i64,
    /// `claim_idle`.
    pub claim_idle: Duration,
    /// `maxlen`.
    pub maxlen: u64,
    /// `replicas`.
    pub replicas: u32,
    /// `wait_timeout`.
    pub wait_timeout: Duration,
    /// `prefix`.
    pub prefix: String,
    /// `tls_ca`.
    pub tls_ca: Option<PathBuf>,
}

/// Where the server is.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Servers {
    /// One server: host and port.
    Direct(String, u16),
    /// The current master of `master`, asked of these sentinels (host, port).
    Sentinel {
        /// The sentinels.
        sentinels: Vec<(String, u16)>,
        /// The master's name as the sentinels know it.
        master: String,
    },
}

impl std::fmt::Debug for RedisUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let auth = match (&self.user, &self.password) {
            (None, None) => "none",
            (None, Some(_)) => "password",
            (Some(_), _) => "user and password",
        };
        f.debug_struct("RedisUrl")
            .field("servers", &self.servers)
            .field("tls", &self.tls)
            .field("auth", &auth)
            .field("db", &self.db)
            .field("claim_idle", &self.claim_idle)
            .field("maxlen", &self.maxlen)
            .field("replicas", &self.replicas)
            .finish_non_exhaustive()
    }
}

fn bad(reason: impl Into<String>) -> Error {
    Error::InvalidUrl {
        reason: reason.into(),
    }
}

/// Percent-decodes `text`; `what` names it in the error (never the text itself).
fn decode(text: &str, what: &str) -> Result<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| bad(format!("a bad `%` escape in the {what}")))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| bad(format!("the {what} is not UTF-8 once decoded")))
}

fn host_port(text: &str, default_port: u16) -> Result<(String, u16)> {
    if text.is_empty() {
        return Err(bad("a server address is empty"));
    }
    if let Some(rest) = text.strip_prefix('[') {
        // [v6]:port
        let (host, after) = rest
            .split_once(']')
            .ok_or_else(|| bad("an IPv6 address lacks its `]`"))?;
        let port = match after.strip_prefix(':') {
            Some(port) => port
                .parse()
                .map_err(|_| bad("a server port is not a number"))?,
            None if after.is_empty() => default_port,
            None => return Err(bad("junk after an IPv6 address")),
        };
        return Ok((host.to_string(), port));
    }
    match text.split_once(':') {
        Some((host, port)) if !host.is_empty() => Ok((
            host.to_string(),
            port.parse()
                .map_err(|_| bad("a server port is not a number"))?,
        )),
        Some(_) => Err(bad("a server address has no host")),
        None => Ok((text.to_string(), default_port)),
    }
}

fn seconds(value: &str, key: &str) -> Result<Duration> {
    value
        .parse::<f64>()
        .ok()
        .filter(|s| s.is_finite() && *s > 0.0 && *s <= 86_400.0)
        .map(Duration::from_secs_f64)
        .ok_or_else(|| bad(format!("`{key}` must be a number of seconds above 0")))
}

/// Parses a `redis://`, `rediss://`, `redis+sentinel://` or `rediss+sentinel://` URL.
pub fn parse(url: &str) -> Result<RedisUrl> {
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| bad("expected redis://host:port"))?;
    let (tls, sentinel) = match scheme.to_ascii_lowercase().as_str() {
        "redis" => (false, false),
        "rediss" => (true, false),
        "redis+sentinel" => (false, true),
        "rediss+sentinel" => (true, true),
        _ => {
            return Err(bad(
                "the scheme must be redis, rediss, redis+sentinel or rediss+sentinel",
            ));
        }
    };
    if rest.contains('#') {
        return Err(bad("a Redis URL has no fragment"));
    }
    let (before_query, query) = rest.split_once('?').unwrap_or((rest, ""));
    let (authority, path) = before_query.split_once('/').unwrap_or((before_query, ""));
    let (userinfo, hosts) = match authority.rsplit_once('@') {
        Some((userinfo, hosts)) => (Some(userinfo), hosts),
        None => (None, authority),
    };
    let (user, password) = match userinfo {
        None => (None, None),
        Some(info) => match info.split_once(':') {
            Some((user, pass)) => (
                Some(decode(user, "user")?).filter(|u| !u.is_empty()),
                Some(decode(pass, "password")?),
            ),
            // `redis://secret@host`: a lone word is the password (as redis-cli -a).
            None if !info.is_empty() => (None, Some(decode(info, "password")?)),
            None => return Err(bad("empty credentials before `@`")),
        },
    };
    let mut parsed = RedisUrl {
        servers: Servers::Direct(String::new(), DEFAULT_PORT),
        tls,
        user,
        password,
        db: 0,
        claim_idle: Duration::from_secs(15),
        maxlen: 1_000_000,
        replicas: 0,
        wait_timeout: Duration::from_millis(1000),
        prefix: String::new(),
        tls_ca: None,
    };
    let mut db_param = None;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let value = decode(value, "parameter")?;
        match key {
            "claim_idle" => parsed.claim_idle = seconds(&value, key)?,
            "maxlen" => {
                parsed.maxlen = value
                    .parse()
                    .ok()
                    .filter(|n| *n >= 10)
                    .ok_or_else(|| bad("`maxlen` must be a whole number of at least 10"))?;
            }
            "replicas" => {
                parsed.replicas = value
                    .parse()
                    .ok()
                    .filter(|n| *n <= 16)
                    .ok_or_else(|| bad("`replicas` must be 0 to 16"))?;
            }
            "wait_timeout" => {
                parsed.wait_timeout = value
                    .parse::<u64>()
                    .ok()
                    .filter(|ms| (1..=600_000).contains(ms))
                    .map(Duration::from_millis)
                    .ok_or_else(|| bad("`wait_timeout` must be 1 to 600000 milliseconds"))?;
            }
            "prefix" => parsed.prefix = value,
            "tls_ca" => {
                parsed.tls_ca = Some(PathBuf::from(value));
                parsed.tls = true;
            }
            "db" => {
                db_param = Some(
                    value
                        .parse::<i64>()
                        .ok()
                        .filter(|d| *d >= 0)
                        .ok_or_else(|| bad("`db` must be a database number"))?,
                );
            }
            other => {
                return Err(bad(format!(
                    "unknown parameter `{other}` (known: claim_idle, maxlen, replicas, wait_timeout, prefix, tls_ca, db)"
                )));
            }
        }
    }
    if sentinel {
        let master = decode(path.trim_end_matches('/'), "master name")?;
        if master.is_empty() || master.contains('/') {
            return Err(bad(
                "a redis+sentinel URL names the master as its path: redis+sentinel://host:26379/mymaster",
            ));
        }
        let sentinels = hosts
            .split(',')
            .map(|h| host_port(h, DEFAULT_SENTINEL_PORT))
            .collect::<Result<Vec<_>>>()?;
        parsed.servers = Servers::Sentinel { sentinels, master };
        parsed.db = db_param.unwrap_or(0);
    } else {
        if hosts.contains(',') {
            return Err(bad(
                "one server per redis:// URL (use redis+sentinel:// for several)",
            ));
        }
        let (host, port) = host_port(hosts, DEFAULT_PORT)?;
        parsed.servers = Servers::Direct(host, port);
        let path = path.trim_end_matches('/');
        parsed.db = match (path.is_empty(), db_param) {
            (true, db) => db.unwrap_or(0),
            (false, None) => path
                .parse::<i64>()
                .ok()
                .filter(|d| *d >= 0)
                .ok_or_else(|| bad("the path of a redis:// URL is a database number"))?,
            (false, Some(_)) => return Err(bad("give the database once (path or `db`)")),
        };
    }
    if parsed.tls && !cfg!(feature = "rustls") {
        return Err(bad(
            "TLS needs eventing-redis's `rustls` feature (rediss://, tls_ca)",
        ));
    }
    Ok(parsed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms() {
        let u = parse("redis://127.0.0.1:6390").unwrap();
        assert_eq!(u.servers, Servers::Direct("127.0.0.1".into(), 6390));
        assert!(u.user.is_none() && u.password.is_none() && !u.tls && u.db == 0);
        let u = parse("redis://us%40er:p%3Ass@h/3?claim_idle=2.5&maxlen=100").unwrap();
        assert_eq!(u.user.as_deref(), Some("us@er"));
        assert_eq!(u.password.as_deref(), Some("p:ss"));
        assert_eq!(u.servers, Servers::Direct("h".into(), DEFAULT_PORT));
        assert_eq!(u.db, 3);
        assert_eq!(u.claim_idle, Duration::from_millis(2500));
        assert_eq!(u.maxlen, 100);
        let u = parse("redis://:secret@h:1").unwrap();
        assert!(u.user.is_none() && u.password.as_deref() == Some("secret"));
        let u = parse("redis+sentinel://a:1,b/mymaster?db=2&replicas=1").unwrap();
        assert_eq!(
            u.servers,
            Servers::Sentinel {
                sentinels: vec![("a".into(), 1), ("b".into(), DEFAULT_SENTINEL_PORT)],
                master: "mymaster".into()
            }
        );
        assert_eq!((u.db, u.replicas), (2, 1));
        let u = parse("redis://[::1]:7000?prefix=app%3A").unwrap();
        assert_eq!(u.servers, Servers::Direct("::1".into(), 7000));
        assert_eq!(u.prefix, "app:");
    }

    #[test]
    fn errors_never_repeat_the_url() {
        for url in [
            "redis://u:secret@h?bogus=1",
            "amqp://u:secret@h",
            "redis://u:secret@h/notadb",
            "redis://u:secret@h:port",
            "redis://u:secret@a,b",
            "redis://u:secret@h?maxlen=1",
            "redis://u:secret@h?claim_idle=-1",
            "redis+sentinel://u:secret@h",
            "redis://u:secret@h/1?db=2",
            "redis://u:secret@h#frag",
            "redis://u:sec%zzret@h",
        ] {
            let error = parse(url).expect_err(url);
            assert!(matches!(error, Error::InvalidUrl { .. }));
            let text = error.to_string();
            assert!(!text.contains("secret"), "{text}");
        }
        assert!(format!("{:?}", parse("redis://u:secret@h").unwrap()).contains("user and"));
        assert!(!format!("{:?}", parse("redis://u:secret@h").unwrap()).contains("secret"));
    }

    #[cfg(not(feature = "rustls"))]
    #[test]
    fn tls_needs_the_feature() {
        assert!(parse("rediss://h").is_err());
    }
}

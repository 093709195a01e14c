//! `nats://` and `tls://` URLs: servers, credentials and parameters.
//!
//! ```text
//! nats://127.0.0.1:4222                     no authentication
//! nats://user:pass@host:4222                user and password (percent-encoded)
//! nats://token@host:4222                    token
//! nats://host:4222?nkey_seed_file=/path     NKey: the file holds the seed (SU...)
//! nats://host:4222?credentials=/path        a .creds file (JWT and seed)
//! tls://host:4222?tls_ca=/path/ca.pem       TLS, trusting this CA (PEM)
//! nats://h1:4222,h2:4222,h3:4222            several servers of one cluster
//! ```
//!
//! Parameters: `tls_ca`, `nkey_seed_file`, `credentials`, `ack_wait` (seconds a
//! delivery may stay unacknowledged before NATS redelivers it; default 30),
//! `inactive_threshold` (seconds an idle per-process consumer survives its server;
//! default 60), `replicas` (stream replicas in a cluster; default 1), `server_order`
//! (`random`, the default, or `retain`: try the servers in the URL's order). Anything else
//! is an [`Error::InvalidUrl`]. The URL is never logged; errors do not repeat it.

use std::path::PathBuf;
use std::time::Duration;

use eventing::{Error, Result};

/// What a URL says.
#[derive(Clone, PartialEq, Eq)]
pub struct NatsUrl {
    /// Server addresses as async-nats takes them (`nats://host:port`, `tls://host:port`).
    pub servers: Vec<String>,
    /// `tls://`, or a CA given.
    pub tls: bool,
    pub(crate) auth: Auth,
    /// `tls_ca`: the PEM file of the CA to trust.
    pub tls_ca: Option<PathBuf>,
    /// `ack_wait`.
    pub ack_wait: Duration,
    /// `inactive_threshold`.
    pub inactive_threshold: Duration,
    /// `replicas`.
    pub replicas: usize,
    /// `retention=interest` (instead of the default `limits`).
    pub interest: bool,
    /// `max_age`: how long an event stream with limits retention keeps a message.
    pub max_age: Duration,
    /// `server_order=retain`: try the servers in the URL's order (first the first)
    /// instead of a random one, on connect and on reconnect.
    pub retain_order: bool,
    /// `dedupe=true`: the message id travels as `Nats-Msg-Id`, so the server stores
    /// a publish retried after a lost ack once (within the stream's duplicate
    /// window). Off by default: on nats-server 2.9 the duplicate tracking costs
    /// about a third of the publish throughput (see docs/nats.md).
    pub dedupe: bool,
}

#[derive(Clone, PartialEq, Eq)]
pub(crate) enum Auth {
    None,
    UserPassword(String, String),
    Token(String),
    NkeySeedFile(PathBuf),
    Credentials(PathBuf),
}

impl std::fmt::Debug for NatsUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let auth = match self.auth {
            Auth::None => "none",
            Auth::UserPassword(..) => "user and password",
            Auth::Token(_) => "token",
            Auth::NkeySeedFile(_) => "nkey",
            Auth::Credentials(_) => "credentials file",
        };
        f.debug_struct("NatsUrl")
            .field("servers", &self.servers)
            .field("tls", &self.tls)
            .field("auth", &auth)
            .field("ack_wait", &self.ack_wait)
            .field("dedupe", &self.dedupe)
            .finish_non_exhaustive()
    }
}

fn bad(reason: impl Into<String>) -> Error {
    Error::InvalidUrl {
        reason: reason.into(),
    }
}

fn decode(part: &str, what: &str) -> Result<String> {
    crate::names::decode(part, b'%')
        .ok_or_else(|| bad(format!("the {what} has a malformed %-escape")))
}

fn seconds(value: &str, name: &str) -> Result<Duration> {
    let secs: f64 = value
        .parse()
        .map_err(|_| bad(format!("`{name}` must be a number of seconds")))?;
    if !(secs > 0.0 && secs < 86_400.0 * 365.0) {
        return Err(bad(format!("`{name}` must be positive")));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Parses a `nats://` or `tls://` URL.
pub fn parse(url: &str) -> Result<NatsUrl> {
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| bad("expected nats://host:port or tls://host:port"))?;
    let tls_scheme = match scheme.to_ascii_lowercase().as_str() {
        "nats" => false,
        "tls" => true,
        other => return Err(bad(format!("scheme `{other}` is not nats or tls"))),
    };
    let (before_query, query) = rest.split_once('?').unwrap_or((rest, ""));
    if before_query.contains('#') || query.contains('#') {
        return Err(bad("a NATS URL has no fragment"));
    }
    let authority = before_query.trim_end_matches('/');
    if authority.contains('/') {
        return Err(bad("a NATS URL has no path"));
    }
    let (userinfo, hosts) = match authority.rsplit_once('@') {
        Some((userinfo, hosts)) => (Some(userinfo), hosts),
        None => (None, authority),
    };
    let mut auth = match userinfo {
        None => Auth::None,
        Some(info) => match info.split_once(':') {
            Some((user, pass)) => {
                Auth::UserPassword(decode(user, "user")?, decode(pass, "password")?)
            }
            None if info.is_empty() => return Err(bad("empty credentials before `@`")),
            None => Auth::Token(decode(info, "token")?),
        },
    };
    let mut parsed = NatsUrl {
        servers: Vec::new(),
        tls: tls_scheme,
        auth: Auth::None,
        tls_ca: None,
        ack_wait: Duration::from_secs(30),
        inactive_threshold: Duration::from_secs(60),
        replicas: 1,
        interest: false,
        max_age: Duration::from_secs(7 * 86_400),
        retain_order: false,
        dedupe: false,
    };
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let value = decode(value, "parameter")?;
        let set_auth = |auth: &mut Auth, new: Auth| -> Result<()> {
            if *auth != Auth::None {
                return Err(bad("give one kind of credentials only"));
            }
            *auth = new;
            Ok(())
        };
        match key {
            "tls_ca" => {
                parsed.tls_ca = Some(PathBuf::from(value));
                parsed.tls = true;
            }
            "nkey_seed_file" => set_auth(&mut auth, Auth::NkeySeedFile(value.into()))?,
            "credentials" => set_auth(&mut auth, Auth::Credentials(value.into()))?,
            "ack_wait" => parsed.ack_wait = seconds(&value, key)?,
            "max_age" => parsed.max_age = seconds(&value, key)?,
            "retention" => {
                parsed.interest = match value.as_str() {
                    "interest" => true,
                    "limits" => false,
                    _ => return Err(bad("`retention` is `limits` or `interest`")),
                }
            }
            "inactive_threshold" => parsed.inactive_threshold = seconds(&value, key)?,
            "server_order" => {
                parsed.retain_order = match value.as_str() {
                    "retain" => true,
                    "random" => false,
                    _ => return Err(bad("`server_order` is `random` or `retain`")),
                }
            }
            "dedupe" => {
                parsed.dedupe = match value.as_str() {
                    "true" => true,
                    "false" => false,
                    _ => return Err(bad("`dedupe` is `true` or `false`")),
                }
            }
            "replicas" => {
                parsed.replicas = value
                    .parse()
                    .ok()
                    .filter(|r| (1..=5).contains(r))
                    .ok_or_else(|| bad("`replicas` must be 1 to 5"))?;
            }
            other => {
                return Err(bad(format!(
                    "unknown parameter `{other}` (known: tls_ca, nkey_seed_file, credentials, ack_wait, inactive_threshold, replicas, retention, max_age, server_order, dedupe)"
                )));
            }
        }
    }
    parsed.auth = auth;
    let scheme = if parsed.tls { "tls" } else { "nats" };
    for host in hosts.split(',') {
        if host.is_empty() {
            return Err(bad("a server address is empty"));
        }
        let with_port = if host
            .rsplit_once(':')
            .is_some_and(|(h, p)| !h.is_empty() && !h.ends_with(':') && p.parse::<u16>().is_ok())
        {
            host.to_string()
        } else if host.contains(':') && !host.starts_with('[') {
            return Err(bad("a server port is not a number"));
        } else {
            format!("{host}:4222")
        };
        parsed.servers.push(format!("{scheme}://{with_port}"));
    }
    Ok(parsed)
}

impl NatsUrl {
    /// The async-nats connect options for these credentials and TLS settings.
    pub async fn options(&self) -> Result<async_nats::ConnectOptions> {
        let mut options = async_nats::ConnectOptions::new();
        options = match &self.auth {
            Auth::None => options,
            Auth::UserPassword(user, pass) => options.user_and_password(user.clone(), pass.clone()),
            Auth::Token(token) => options.token(token.clone()),
            Auth::NkeySeedFile(path) => {
                let seed = std::fs::read_to_string(path).map_err(|e| {
                    bad(format!(
                        "cannot read the nkey seed file {}: {e}",
                        path.display()
                    ))
                })?;
                options.nkey(seed.trim().to_string())
            }
            Auth::Credentials(path) => options.credentials_file(path).await.map_err(|e| {
                bad(format!(
                    "cannot read the credentials file {}: {e}",
                    path.display()
                ))
            })?,
        };
        if let Some(ca) = &self.tls_ca {
            if !ca.exists() {
                return Err(bad(format!(
                    "the tls_ca file {} does not exist",
                    ca.display()
                )));
            }
            options = options.add_root_certificates(ca.clone());
        }
        if self.tls {
            options = options.require_tls(true);
        }
        Ok(options)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms() {
        let u = parse("nats://127.0.0.1:4222").unwrap();
        assert_eq!(u.servers, vec!["nats://127.0.0.1:4222"]);
        assert!(u.auth == Auth::None && !u.tls);
        let u = parse("nats://us%40er:p%3Ass@h:1").unwrap();
        assert!(u.auth == Auth::UserPassword("us@er".into(), "p:ss".into()));
        let u = parse("nats://tok@h").unwrap();
        assert!(u.auth == Auth::Token("tok".into()));
        assert_eq!(u.servers, vec!["nats://h:4222"]);
        let u = parse("tls://h:4222?tls_ca=/tmp/ca.pem").unwrap();
        assert!(u.tls && u.tls_ca.is_some());
        assert_eq!(u.servers, vec!["tls://h:4222"]);
        let u = parse("nats://a:1,b:2/?ack_wait=5&replicas=3").unwrap();
        assert_eq!(u.servers, vec!["nats://a:1", "nats://b:2"]);
        assert_eq!(u.ack_wait, Duration::from_secs(5));
        assert_eq!(u.replicas, 3);
        assert!(!u.retain_order);
        assert!(
            parse("nats://a:1,b:2?server_order=retain")
                .unwrap()
                .retain_order
        );
        assert!(parse("nats://a:1?server_order=first").is_err());
        let u = parse("nats://h?nkey_seed_file=/s").unwrap();
        assert!(matches!(u.auth, Auth::NkeySeedFile(_)));
    }

    #[test]
    fn errors_never_repeat_the_url() {
        for url in [
            "nats://u:secret@h?bogus=1",
            "amqp://u:secret@h",
            "nats://u:secret@h/path",
            "nats://u:secret@h:port",
            "nats://u:secret@h?credentials=/a&nkey_seed_file=/b",
            "nats://u:secret@h?ack_wait=-1",
        ] {
            let error = parse(url).expect_err(url).to_string();
            assert!(!error.contains("secret"), "{error}");
            assert!(matches!(parse(url), Err(Error::InvalidUrl { .. })));
        }
        // Credentials in userinfo plus a credentials file are two kinds.
        assert!(parse("nats://u:p@h?credentials=/x").is_err());
    }
}

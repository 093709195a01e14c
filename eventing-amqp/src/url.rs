//! Reading the provider URL without ever echoing its credentials.

use eventing::{Error, redact_url};
use lapin::uri::{AMQPScheme, AMQPUri};

/// A parsed `amqp://` or `amqps://` URL and its redacted form for logs.
pub(crate) struct BrokerUrl {
    pub(crate) uri: AMQPUri,
    /// The URL with user and password replaced by `***`.
    pub(crate) redacted: String,
}

impl std::fmt::Debug for BrokerUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BrokerUrl")
            .field("url", &self.redacted)
            .finish_non_exhaustive()
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
    Ok(BrokerUrl { uri, redacted })
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

    #[cfg(not(feature = "rustls"))]
    #[test]
    fn amqps_without_tls_is_a_clear_error() {
        let error = parse(&format!("amqps://user:{SECRET}@host/%2f")).expect_err("no TLS");
        let text = error.to_string();
        assert!(text.contains("rustls"), "{text}");
        assert!(!text.contains(SECRET));
    }
}

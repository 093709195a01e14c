//! The STOMP provider on ActiveMQ Classic: the private broker `scripts/activemq.sh`
//! starts (STOMP on 127.0.0.1:61623), reached through `EVENTING_ACTIVEMQ_URL`, and
//! the tools the ActiveMQ tests need: restarting that broker, and a Python with
//! stomp.py for the interop tests.

use std::time::Duration;

use eventing_stomp::StompConfig;
use futures_util::future::BoxFuture;

use eventing_test::Harness;

/// The variable with the broker URL.
pub const URL_VARIABLE: &str = "EVENTING_ACTIVEMQ_URL";
/// The URL used when the variable is not set.
pub const DEFAULT_URL: &str = "stomp://127.0.0.1:61623?broker=activemq";

/// The broker script.
pub const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/activemq.sh");

/// ActiveMQ Classic at `EVENTING_ACTIVEMQ_URL` (default [`DEFAULT_URL`]). Every test
/// uses unique event names, so tests share the broker.
#[derive(Clone, Debug)]
pub struct ActiveMqHarness {
    url: String,
}

impl ActiveMqHarness {
    /// The harness for the URL in the environment.
    pub fn from_env() -> Self {
        // `EVENTING_ACTIVEMQ_LOG=<filter>` shows the provider's logs.
        Self {
            url: crate::url_from_env(URL_VARIABLE, DEFAULT_URL, "EVENTING_ACTIVEMQ_LOG"),
        }
    }

    /// The broker URL (may hold credentials: do not print it).
    pub fn broker_url(&self) -> &str {
        &self.url
    }

    /// The parsed settings of the broker URL.
    pub fn config(&self) -> StompConfig {
        StompConfig::from_url(&self.url).expect("EVENTING_ACTIVEMQ_URL is a valid stomp:// URL")
    }
}

impl Harness for ActiveMqHarness {
    fn name(&self) -> &'static str {
        "stomp-activemq"
    }

    fn url(&self, _env: &str) -> String {
        self.url.clone()
    }

    /// 50,000: ActiveMQ (a JVM broker persisting each message to KahaDB) took
    /// 137-166 s for the default 200,000 on the 2-core CI machine under load,
    /// against the case's 170 s limit. 50,000 messages (each padded to 200 bytes,
    /// several hundred bytes in memory with its headers) still exceed the test's
    /// 16 MiB growth limit if a consumer buffered them all.
    fn backlog(&self) -> Option<u64> {
        Some(50_000)
    }

    // No clean-up: STOMP cannot delete a destination. The test broker's policy
    // (scripts/activemq.sh) removes queues that stay empty and unused for 60 s,
    // and its data lives in a temp dir removed when the script stops it.

    /// `scripts/activemq.sh restart` (same KahaDB: queues and persistent messages
    /// survive, connections drop), then waits until a STOMP session opens. False
    /// if the script did not start the broker that runs.
    fn restart_broker(&self) -> BoxFuture<'_, bool> {
        Box::pin(async move {
            let status = tokio::process::Command::new("bash")
                .arg(SCRIPT)
                .arg("restart")
                .status()
                .await;
            match status {
                Ok(status) if status.success() => {}
                Ok(_) | Err(_) => return false,
            }
            wait_for_stomp(&self.config(), Duration::from_secs(60)).await
        })
    }
}

/// Waits until a STOMP session can be opened with `config` (at most `limit`).
pub async fn wait_for_stomp(config: &StompConfig, limit: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    while tokio::time::Instant::now() < deadline {
        let provider = eventing_stomp::StompProvider::with_config(
            config.clone(),
            "restart-probe",
            Duration::from_secs(5),
        )
        .await;
        if let Ok(provider) = provider {
            let _ = eventing::provider::Provider::close(&provider).await;
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

/// A python3 that can `import stomp` (`scripts/activemq.sh python` makes a venv
/// under `~/.cache/eventing` and installs stomp.py on first use), or why there is
/// none.
pub async fn stomp_python() -> Result<String, String> {
    let probe = tokio::process::Command::new("python3")
        .arg("--version")
        .output()
        .await;
    if !probe.is_ok_and(|out| out.status.success()) {
        return Err("python3 is not installed".into());
    }
    let out = tokio::process::Command::new("bash")
        .arg(SCRIPT)
        .arg("python")
        .output()
        .await
        .map_err(|e| format!("running {SCRIPT}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{SCRIPT} python failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

//! Extra RabbitMQ nodes that a test starts on this machine, next to the shared
//! broker (`rabbit@localhost`, which they never touch).
//!
//! Each [`Node`] has its own name (`eventing-<label>-<pid>-<n>@localhost`), its own
//! free loopback ports (AMQP, STOMP, Erlang distribution, and AMQPS/STOMPS with
//! [`TlsFiles`]), its own Erlang cookie, configuration, data and log directories
//! under one temporary directory, and the `rabbitmq_stomp` plugin. Everything
//! listens on 127.0.0.1 only. It is stopped, and its directory removed, when the
//! [`Node`] is dropped, including when the test panics. If the test process dies
//! without unwinding (killed, aborted), a watchdog process notices its pipe to the
//! test close and does the same, so no Erlang node outlives its test.
//!
//! The node runs the Debian package's scripts from `/usr/lib/rabbitmq/bin` (or the
//! directory in `EVENTING_RABBITMQ_BIN`) as the current user.

use std::fmt::Write as _;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The variable naming the directory of `rabbitmq-server` and `rabbitmqctl`.
pub const BIN_VARIABLE: &str = "EVENTING_RABBITMQ_BIN";
/// Where Debian's package puts the real scripts (`/usr/sbin` has wrappers that
/// switch to the `rabbitmq` user and its cookie).
pub const DEFAULT_BIN: &str = "/usr/lib/rabbitmq/bin";
/// How long a node may take to answer on all its ports after it was started.
pub const START_LIMIT: Duration = Duration::from_secs(120);
/// How long stopping a node may take before its processes are killed.
pub const STOP_LIMIT: Duration = Duration::from_secs(30);
/// How long one `rabbitmqctl` call may take.
pub const CTL_LIMIT: Duration = Duration::from_secs(120);

/// A CA-signed server certificate for the node's TLS listeners (PEM files).
#[derive(Clone, Debug)]
pub struct TlsFiles {
    /// The CA certificate.
    pub ca: PathBuf,
    /// The server certificate.
    pub cert: PathBuf,
    /// The server's private key.
    pub key: PathBuf,
}

/// What kind of node to start.
#[derive(Clone, Debug)]
pub struct NodeOptions {
    /// A short label for the node's name (letters, digits, `-`).
    pub label: String,
    /// The Erlang cookie; nodes of one cluster need the same.
    pub cookie: String,
    /// TLS listeners for AMQP and STOMP (`listeners.ssl`, `stomp.listeners.ssl`).
    pub tls: Option<TlsFiles>,
}

impl NodeOptions {
    /// A plain node with a cookie of its own.
    pub fn new(label: &str) -> NodeOptions {
        NodeOptions {
            label: label.to_string(),
            cookie: new_cookie(),
            tls: None,
        }
    }
}

/// A fresh random-enough Erlang cookie (differs from the shared broker's, so a
/// test node can never join or reach it by mistake).
pub fn new_cookie() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let mixed = nanos
        ^ (u128::from(std::process::id()) << 64)
        ^ u128::from(COUNTER.fetch_add(1, Ordering::Relaxed)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    format!("EVENTINGTEST{mixed:032X}")
}

/// The node's loopback ports.
#[derive(Clone, Copy, Debug)]
pub struct NodePorts {
    /// AMQP 0-9-1 without TLS.
    pub amqp: u16,
    /// STOMP without TLS.
    pub stomp: u16,
    /// Erlang distribution (clustering, `rabbitmqctl`).
    pub dist: u16,
    /// AMQP over TLS, with [`TlsFiles`].
    pub amqps: Option<u16>,
    /// STOMP over TLS, with [`TlsFiles`].
    pub stomps: Option<u16>,
}

impl NodePorts {
    fn all(&self) -> Vec<u16> {
        let mut ports = vec![self.amqp, self.stomp];
        ports.extend(self.amqps);
        ports.extend(self.stomps);
        ports
    }
}

/// A RabbitMQ node started by this process. Dropping it stops it (bounded by
/// [`STOP_LIMIT`], then killed) and removes its directory.
#[derive(Debug)]
pub struct Node {
    name: String,
    ports: NodePorts,
    dir: PathBuf,
    bin: PathBuf,
    server: Option<Child>,
    watchdog: Option<Child>,
    /// Closing it tells the watchdog to stop the node.
    watchdog_pipe: Option<ChildStdin>,
}

impl Node {
    /// Starts a node and waits (at most [`START_LIMIT`]) until all its ports
    /// answer. On failure nothing is left running and the error has the end of
    /// the node's log.
    pub async fn start(options: NodeOptions) -> Result<Node, String> {
        let mut node = tokio::task::spawn_blocking(move || Node::spawn(&options))
            .await
            .map_err(|e| format!("starting a node: {e}"))??;
        node.wait_ready(START_LIMIT).await?;
        Ok(node)
    }

    /// The node's name, `eventing-<label>-<pid>-<n>@localhost`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The node's ports.
    pub fn ports(&self) -> NodePorts {
        self.ports
    }

    /// The node's directory (configuration, data, logs).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `amqp://guest:guest@127.0.0.1:<amqp>/%2f`.
    pub fn amqp_url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.ports.amqp)
    }

    /// Whether the node's server process is still running.
    pub fn is_running(&mut self) -> bool {
        self.server
            .as_mut()
            .is_some_and(|child| matches!(child.try_wait(), Ok(None)))
    }

    /// Runs `rabbitmqctl -q -n <node> <args>` (bounded by [`CTL_LIMIT`]) and
    /// returns its output, or its stderr if it fails.
    pub async fn ctl(&self, args: &[&str]) -> Result<String, String> {
        let mut command = tokio::process::Command::new(self.bin.join("rabbitmqctl"));
        command
            .arg("-q")
            .arg("-n")
            .arg(&self.name)
            .args(args)
            .current_dir(&self.dir)
            .env("HOME", self.dir.join("home"))
            .env("RABBITMQ_CONF_ENV_FILE", self.dir.join("rabbitmq-env.conf"))
            .stdin(Stdio::null())
            .kill_on_drop(true);
        let what = args.join(" ");
        let output = tokio::time::timeout(CTL_LIMIT, command.output())
            .await
            .map_err(|_| {
                format!(
                    "rabbitmqctl -n {} {what}: no answer in {CTL_LIMIT:?}",
                    self.name
                )
            })?
            .map_err(|e| format!("cannot run rabbitmqctl: {e}"))?;
        if output.status.success() {
            Ok(String::from_utf8_lossy(&output.stdout).into_owned())
        } else {
            Err(format!(
                "rabbitmqctl -n {} {what} failed ({}): {} {}",
                self.name,
                output.status,
                String::from_utf8_lossy(&output.stderr).trim(),
                String::from_utf8_lossy(&output.stdout).trim()
            ))
        }
    }

    /// Makes this node join `other`'s cluster (`stop_app`, `join_cluster`,
    /// `start_app`) and waits until its ports answer again.
    pub async fn join(&mut self, other: &Node) -> Result<(), String> {
        self.ctl(&["stop_app"]).await?;
        self.ctl(&["join_cluster", other.name()]).await?;
        self.ctl(&["start_app"]).await?;
        self.wait_ready(START_LIMIT).await
    }

    /// The running members of this node's cluster, from `cluster_status`.
    pub async fn running_nodes(&self) -> Result<Vec<String>, String> {
        let output = self.ctl(&["cluster_status", "--formatter", "json"]).await?;
        let status: serde_json::Value = serde_json::from_str(output.trim())
            .map_err(|e| format!("cluster_status is not JSON ({e}): {output}"))?;
        Ok(status["running_nodes"]
            .as_array()
            .map(|nodes| {
                nodes
                    .iter()
                    .filter_map(|n| n.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default())
    }

    /// Kills the node at once (`SIGKILL` to all its processes), as a crash would.
    /// Its directory stays until the [`Node`] is dropped.
    pub fn kill(&mut self) {
        if let Some(mut server) = self.server.take() {
            signal_group(server.id(), "KILL");
            let _ = server.wait();
        }
    }

    /// Stops the node (as dropping it does) without blocking the runtime.
    pub async fn stop(self) {
        let _ = tokio::task::spawn_blocking(move || drop(self)).await;
    }

    /// Polls the node's ports until they all accept connections.
    pub async fn wait_ready(&mut self, limit: Duration) -> Result<(), String> {
        let deadline = tokio::time::Instant::now() + limit;
        for port in self.ports.all() {
            loop {
                if crate::rabbitmq::port_open(port).await {
                    break;
                }
                if !self.is_running() {
                    return Err(format!(
                        "node {} exited before port {port} answered:\n{}",
                        self.name,
                        self.log_tail()
                    ));
                }
                if tokio::time::Instant::now() >= deadline {
                    return Err(format!(
                        "node {}: port {port} did not answer within {limit:?}:\n{}",
                        self.name,
                        self.log_tail()
                    ));
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        Ok(())
    }

    /// The last lines of the node's console output and log, for error messages.
    pub fn log_tail(&self) -> String {
        let mut tail = String::new();
        let log = self.dir.join("log").join(format!("{}.log", self.name));
        for file in [self.dir.join("console.log"), log] {
            let text = std::fs::read_to_string(&file).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let from = lines.len().saturating_sub(25);
            let _ = writeln!(tail, "--- {} (last lines)", file.display());
            for line in &lines[from..] {
                let _ = writeln!(tail, "{line}");
            }
        }
        tail
    }

    fn spawn(options: &NodeOptions) -> Result<Node, String> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let bin = std::env::var_os(BIN_VARIABLE)
            .map_or_else(|| PathBuf::from(DEFAULT_BIN), PathBuf::from);
        if !bin.join("rabbitmq-server").is_file() || !bin.join("rabbitmqctl").is_file() {
            return Err(format!(
                "no rabbitmq-server/rabbitmqctl in {} (set {BIN_VARIABLE}, or install the \
                 rabbitmq-server package: scripts/broker.sh start)",
                bin.display()
            ));
        }
        let short = format!(
            "eventing-{}-{}-{}",
            options.label,
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let name = format!("{short}@localhost");
        let dir = std::env::temp_dir().join(&short);
        let _ = std::fs::remove_dir_all(&dir);
        let prepared = prepare(&dir, options);
        let ports = match prepared {
            Ok(ports) => ports,
            Err(error) => {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(error);
            }
        };
        let console = std::fs::File::create(dir.join("console.log"))
            .map_err(|e| format!("creating the console log: {e}"))?;
        let console_err = console
            .try_clone()
            .map_err(|e| format!("creating the console log: {e}"))?;
        let mut command = Command::new(bin.join("rabbitmq-server"));
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("RABBITMQ_") {
                command.env_remove(key);
            }
        }
        command
            .current_dir(&dir)
            .env("HOME", dir.join("home"))
            .env("RABBITMQ_NODENAME", &name)
            .env("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1")
            .env("RABBITMQ_NODE_PORT", ports.amqp.to_string())
            .env("RABBITMQ_DIST_PORT", ports.dist.to_string())
            .env("RABBITMQ_CONFIG_FILE", dir.join("rabbitmq.conf"))
            .env("RABBITMQ_ADVANCED_CONFIG_FILE", dir.join("advanced.config"))
            .env("RABBITMQ_CONF_ENV_FILE", dir.join("rabbitmq-env.conf"))
            .env("RABBITMQ_MNESIA_BASE", dir.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", dir.join("log"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", dir.join("enabled_plugins"))
            .env("RABBITMQ_PID_FILE", dir.join("node.pid"))
            // Erlang distribution on loopback only.
            .env(
                "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS",
                "-kernel inet_dist_use_interface {127,0,0,1}",
            )
            .stdin(Stdio::null())
            .stdout(console)
            .stderr(console_err)
            .process_group(0);
        let server = command.spawn().map_err(|e| {
            let _ = std::fs::remove_dir_all(&dir);
            format!(
                "cannot start {}: {e}",
                bin.join("rabbitmq-server").display()
            )
        })?;
        let (watchdog, watchdog_pipe) = match spawn_watchdog(server.id(), &dir) {
            Ok(watchdog) => watchdog,
            Err(error) => {
                signal_group(server.id(), "KILL");
                let mut server = server;
                let _ = server.wait();
                let _ = std::fs::remove_dir_all(&dir);
                return Err(error);
            }
        };
        tracing::info!(node = %name, ?ports, dir = %dir.display(), "started a RabbitMQ node");
        Ok(Node {
            name,
            ports,
            dir,
            bin,
            server: Some(server),
            watchdog: Some(watchdog),
            watchdog_pipe: Some(watchdog_pipe),
        })
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let began = Instant::now();
        // The watchdog sends SIGTERM (RabbitMQ stops gracefully), waits up to
        // STOP_LIMIT, kills what is left of the process group and removes the
        // directory.
        drop(self.watchdog_pipe.take());
        if let Some(mut watchdog) = self.watchdog.take() {
            let deadline = began + STOP_LIMIT + Duration::from_secs(10);
            while matches!(watchdog.try_wait(), Ok(None)) && Instant::now() < deadline {
                // Reaps the server as soon as it exits: the watchdog waits for
                // its pid to disappear, which a zombie does not.
                if let Some(server) = self.server.as_mut() {
                    let _ = server.try_wait();
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            if matches!(watchdog.try_wait(), Ok(None)) {
                let _ = watchdog.kill();
                let _ = watchdog.wait();
            }
        }
        if let Some(mut server) = self.server.take() {
            if matches!(server.try_wait(), Ok(None)) {
                tracing::warn!(node = %self.name, "still running after the watchdog: killing it");
                signal_group(server.id(), "KILL");
            }
            let _ = server.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
        tracing::info!(node = %self.name, took = ?began.elapsed(), "stopped a RabbitMQ node");
    }
}

/// Writes the node's configuration under `dir` and picks its ports.
fn prepare(dir: &Path, options: &NodeOptions) -> Result<NodePorts, String> {
    let io = |what: &str, e: std::io::Error| format!("{what} under {}: {e}", dir.display());
    for sub in ["home", "mnesia", "log"] {
        std::fs::create_dir_all(dir.join(sub)).map_err(|e| io("creating directories", e))?;
    }
    let cookie = dir.join("home").join(".erlang.cookie");
    std::fs::write(&cookie, &options.cookie).map_err(|e| io("writing the cookie", e))?;
    std::fs::set_permissions(&cookie, std::fs::Permissions::from_mode(0o400))
        .map_err(|e| io("protecting the cookie", e))?;
    std::fs::write(dir.join("enabled_plugins"), "[rabbitmq_stomp].\n")
        .map_err(|e| io("writing enabled_plugins", e))?;
    // An empty environment file: the system's /etc/rabbitmq/rabbitmq-env.conf
    // names the shared broker's node.
    std::fs::write(dir.join("rabbitmq-env.conf"), "").map_err(|e| io("writing the env file", e))?;
    let tls = options.tls.is_some();
    let free = free_ports(if tls { 5 } else { 3 })?;
    let ports = NodePorts {
        amqp: free[0],
        stomp: free[1],
        dist: free[2],
        amqps: tls.then(|| free[3]),
        stomps: tls.then(|| free[4]),
    };
    let mut config = format!(
        "listeners.tcp.default = 127.0.0.1:{}\n\
         stomp.listeners.tcp.1 = 127.0.0.1:{}\n\
         loopback_users = none\n\
         log.console = false\n\
         log.file.level = info\n",
        ports.amqp, ports.stomp
    );
    if let (Some(files), Some(amqps), Some(stomps)) = (&options.tls, ports.amqps, ports.stomps) {
        let _ = write!(
            config,
            "listeners.ssl.default = 127.0.0.1:{amqps}\n\
             stomp.listeners.ssl.1 = 127.0.0.1:{stomps}\n\
             ssl_options.cacertfile = {}\n\
             ssl_options.certfile = {}\n\
             ssl_options.keyfile = {}\n\
             ssl_options.verify = verify_none\n\
             ssl_options.fail_if_no_peer_cert = false\n",
            files.ca.display(),
            files.cert.display(),
            files.key.display()
        );
    }
    std::fs::write(dir.join("rabbitmq.conf"), config)
        .map_err(|e| io("writing rabbitmq.conf", e))?;
    Ok(ports)
}

/// `n` distinct free loopback ports (held open together while they are chosen).
fn free_ports(n: usize) -> Result<Vec<u16>, String> {
    let listeners = (0..n)
        .map(|_| TcpListener::bind(("127.0.0.1", 0)))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("no free loopback port: {e}"))?;
    listeners
        .iter()
        .map(|l| l.local_addr().map(|a| a.port()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("no free loopback port: {e}"))
}

/// Sends `SIGTERM`/`SIGKILL` (`signal`) to the process group `pgid`.
fn signal_group(pgid: u32, signal: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg("--")
        .arg(format!("-{pgid}"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// A shell in its own process group that waits for its stdin (a pipe from this
/// process) to close, then stops the node: `SIGTERM` to the server script (a
/// graceful stop), up to [`STOP_LIMIT`], then `SIGKILL` to the node's process
/// group, then removes its directory. The pipe closes when the [`Node`] is
/// dropped or when this process ends in any way.
fn spawn_watchdog(server: u32, dir: &Path) -> Result<(Child, ChildStdin), String> {
    const SCRIPT: &str = r#"
cat >/dev/null 2>&1
kill -TERM "$1" 2>/dev/null
i=0
while kill -0 "$1" 2>/dev/null && [ "$i" -lt "$3" ]; do
    sleep 0.1
    i=$((i + 1))
done
kill -KILL -- "-$1" 2>/dev/null
rm -rf -- "$2"
"#;
    let tenths = (STOP_LIMIT.as_millis() / 100).to_string();
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(SCRIPT)
        .arg("eventing-node-watchdog")
        .arg(server.to_string())
        .arg(dir)
        .arg(tenths)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .map_err(|e| format!("cannot start the node's watchdog: {e}"))?;
    let pipe = child.stdin.take().ok_or("the watchdog has no stdin pipe")?;
    Ok((child, pipe))
}

/// Erlang processes (`beam.smp`) of nodes this process started and that are still
/// running, as `ps` shows them; for a test's final check.
pub fn leftover_beams(nodes: &[&str]) -> Vec<String> {
    let output = Command::new("ps")
        .args(["-eo", "pid,args"])
        .stdin(Stdio::null())
        .output();
    let Ok(output) = output else {
        return Vec::new();
    };
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter(|line| line.contains("beam"))
        .filter(|line| nodes.iter().any(|node| line.contains(node)))
        .map(str::to_string)
        .collect()
}

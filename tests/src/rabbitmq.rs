//! RabbitMQ on this machine: restarting its application and running `rabbitmqctl`,
//! for the AMQP and STOMP harnesses and the tests that need the broker itself.

use std::time::Duration;

/// Restarts the RabbitMQ application on this machine (`rabbitmqctl stop_app`, then
/// `start_app`, as `scripts/broker.sh restart` does; needs root or the rabbitmq
/// user) and waits until every port in `ports` of `host` accepts TCP connections
/// again. Returns how long that took, or `None` without doing anything if it cannot
/// restart that broker: `host` is not this machine, or `rabbitmqctl` is not
/// installed. Tries hard to leave the broker running: `start_app` is retried.
pub async fn restart_rabbitmq_app(
    host: &str,
    ports: &[u16],
    limit: Duration,
) -> Result<Option<Duration>, String> {
    let local = matches!(host, "127.0.0.1" | "localhost" | "::1" | "[::1]");
    let installed = std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path).any(|dir| dir.join("rabbitmqctl").is_file())
    });
    if !local || !installed {
        return Ok(None);
    }
    let began = tokio::time::Instant::now();
    let deadline = began + limit;
    rabbitmqctl_status(&["stop_app"], deadline).await?;
    let mut started = Err(String::new());
    for _ in 0..3 {
        started = rabbitmqctl_status(&["start_app"], deadline).await;
        if started.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    started?;
    for &port in ports {
        loop {
            let connect = tokio::net::TcpStream::connect((host, port));
            if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_secs(2), connect).await {
                break;
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(format!("port {port} did not answer within {limit:?}"));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    Ok(Some(began.elapsed()))
}

/// Runs `rabbitmqctl -q <args>` until `deadline`; its stderr on failure.
async fn rabbitmqctl_status(args: &[&str], deadline: tokio::time::Instant) -> Result<(), String> {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    let what = args.join(" ");
    let run = tokio::task::spawn_blocking(move || {
        std::process::Command::new("rabbitmqctl")
            .arg("-q")
            .args(&args)
            .stdin(std::process::Stdio::null())
            .output()
    });
    let output = tokio::time::timeout_at(deadline, run)
        .await
        .map_err(|_| format!("rabbitmqctl {what} did not finish in time"))?
        .map_err(|e| format!("rabbitmqctl {what}: {e}"))?
        .map_err(|e| format!("cannot run rabbitmqctl {what}: {e}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "rabbitmqctl {what} failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

/// Runs `rabbitmqctl -q <args>` (needs root or the rabbitmq user) and returns its
/// output; panics with its stderr if it fails.
pub async fn rabbitmqctl(args: &[&str]) -> String {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    let run = tokio::task::spawn_blocking(move || {
        std::process::Command::new("rabbitmqctl")
            .arg("-q")
            .args(&args)
            .output()
    });
    let output = tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .expect("rabbitmqctl timed out")
        .expect("rabbitmqctl task")
        .expect("run rabbitmqctl");
    assert!(
        output.status.success(),
        "rabbitmqctl failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// True if something accepts TCP connections on `127.0.0.1:port`.
pub async fn port_open(port: u16) -> bool {
    matches!(
        tokio::time::timeout(
            Duration::from_secs(2),
            tokio::net::TcpStream::connect(("127.0.0.1", port)),
        )
        .await,
        Ok(Ok(_))
    )
}

/// `(name, type, arguments)` of the broker's queues whose names contain `filter`.
pub async fn queue_types(filter: &str) -> Vec<(String, String, String)> {
    let output = rabbitmqctl(&[
        "list_queues",
        "--no-table-headers",
        "name",
        "type",
        "arguments",
    ])
    .await;
    output
        .lines()
        .filter_map(|line| {
            let mut columns = line.split('\t');
            let name = columns.next()?.to_string();
            let kind = columns.next()?.to_string();
            let arguments = columns.next().unwrap_or("").to_string();
            Some((name, kind, arguments))
        })
        .filter(|(name, _, _)| name.contains(filter))
        .collect()
}

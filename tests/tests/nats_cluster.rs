//! Beyond one machine's server: a 3-node JetStream cluster the test starts on loopback
//! ports (clients 14241-14243, routes 16241-16243), streams with 3 replicas. In the
//! middle of 5,000 durable events the node that leads the event's stream is killed
//! (SIGKILL); sender and consumer have the other nodes as fallbacks. Every event must
//! be handled: `lost=0`.
//!
//! Opt-in (it takes a while): `EVENTING_NATS_CLUSTER_TESTS=1 cargo test -p
//! eventing-tests --features nats --test nats_cluster -- --nocapture`.
#![cfg(feature = "nats")]

use std::collections::HashSet;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use eventing::{Context, EventListener, ListenerResult, event, event_listener};
use eventing_nats::names;
use eventing_tests::TestEnv;
use eventing_tests::nats::{NatsHarness, request};
use serde::{Deserialize, Serialize};

const EVENTS: u64 = 5_000;
const NODES: [u16; 3] = [1, 2, 3];

#[event(name = "cluster.{env}.Item", durable = true)]
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Item {
    id: u64,
}

#[event_listener(Item, name = "Counter")]
struct Counter {
    seen: Arc<Mutex<HashSet<u64>>>,
    calls: Arc<Mutex<u64>>,
}

impl EventListener<Item> for Counter {
    async fn on(&self, item: Item, _: &Context) -> ListenerResult {
        *self.calls.lock().expect("lock") += 1;
        self.seen.lock().expect("lock").insert(item.id);
        Ok(())
    }
}

struct Cluster {
    dir: std::path::PathBuf,
    nodes: Vec<Option<tokio::process::Child>>,
}

impl Cluster {
    async fn start() -> Option<Self> {
        let binary = ["/usr/sbin/nats-server", "/usr/bin/nats-server"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())?;
        let dir =
            std::env::temp_dir().join(format!("eventing-nats-cluster-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("cluster dir");
        let routes: Vec<String> = NODES
            .iter()
            .map(|i| format!("nats-route://127.0.0.1:{}", 16240 + i))
            .collect();
        let mut nodes = Vec::new();
        for i in NODES {
            let conf = dir.join(format!("n{i}.conf"));
            let store = dir.join(format!("n{i}"));
            std::fs::write(
                &conf,
                format!(
                    "server_name: n{i}\nlisten: 127.0.0.1:{client}\n\
                     jetstream {{ store_dir: \"{store}\", max_memory_store: 256MB, max_file_store: 1GB }}\n\
                     cluster {{ name: c1, listen: 127.0.0.1:{route}, routes: [{routes}] }}\n",
                    client = 14240 + i,
                    route = 16240 + i,
                    store = store.display(),
                    routes = routes.join(", ")
                ),
            )
            .expect("write config");
            let child = tokio::process::Command::new(binary)
                .arg("-c")
                .arg(&conf)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .kill_on_drop(true)
                .spawn()
                .expect("spawn nats-server");
            nodes.push(Some(child));
        }
        Some(Self { dir, nodes })
    }

    fn url() -> String {
        Self::url_first(0)
    }

    /// The cluster's URL with node `first` (0-based) first and the others as
    /// fallbacks, tried in that order (`server_order=retain`).
    fn url_first(first: usize) -> String {
        let mut order: Vec<usize> = NODES.iter().map(|i| *i as usize - 1).collect();
        order.retain(|&n| n != first);
        order.insert(0, first);
        let servers: Vec<String> = order
            .iter()
            .map(|n| format!("127.0.0.1:{}", 14241 + n))
            .collect();
        // `dedupe=true`: a publish retried after a lost ack (the leader died before
        // answering) is stored once.
        format!(
            "nats://{}?replicas=3&server_order=retain&dedupe=true",
            servers.join(",")
        )
    }

    async fn kill(&mut self, node: usize) {
        if let Some(mut child) = self.nodes[node].take() {
            let _ = child.kill().await;
        }
    }

    async fn stop(mut self) {
        for node in 0..self.nodes.len() {
            if let Some(child) = self.nodes[node].as_mut() {
                // SIGTERM via kill(1), then wait; SIGKILL if it lingers.
                if let Some(pid) = child.id() {
                    let _ = tokio::process::Command::new("kill")
                        .args(["-TERM", &pid.to_string()])
                        .status()
                        .await;
                }
                if tokio::time::timeout(Duration::from_secs(5), child.wait())
                    .await
                    .is_err()
                {
                    let _ = child.kill().await;
                }
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn killed_stream_leader_loses_nothing() {
    if std::env::var("EVENTING_NATS_CLUSTER_TESTS").is_err() {
        println!("set EVENTING_NATS_CLUSTER_TESTS=1 to run the 3-node cluster test");
        return;
    }
    eventing_test::run(async {
        let Some(mut cluster) = Cluster::start().await else {
            println!("nats-server is not installed: skipped");
            return;
        };
        let outcome = tokio::time::timeout(Duration::from_secs(240), scenario(&mut cluster)).await;
        cluster.stop().await;
        match outcome {
            Ok(Ok(())) => {}
            Ok(Err(error)) => panic!("{error}"),
            Err(_) => panic!("the cluster test timed out"),
        }
    });
}

async fn scenario(cluster: &mut Cluster) -> Result<(), String> {
    let harness = NatsHarness::from_env();
    // For the unique `{env}` and the builder's defaults; the cluster goes away whole.
    let env = TestEnv::new(&harness);
    let url = Cluster::url();
    let seen = Arc::new(Mutex::new(HashSet::new()));
    let calls = Arc::new(Mutex::new(0));
    // The cluster elects its meta leader first: retry the first manager.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let probe = loop {
        let builder = env.builder("consumer").url(url.clone()).listener(Counter {
            seen: Arc::clone(&seen),
            calls: Arc::clone(&calls),
        });
        let built = async {
            let manager = builder.build().await?;
            manager.start().await?;
            Ok::<_, eventing::Error>(manager)
        }
        .await;
        match built {
            Ok(manager) => break manager,
            Err(error) if tokio::time::Instant::now() < deadline => {
                tracing::debug!(%error, "cluster not ready");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(error) => return Err(format!("the cluster did not come up: {error}")),
        }
    };
    let event = format!("cluster.{}.Item", env.env);
    let stream = names::stream(&event).map_err(|e| e.to_string())?;
    // The probe created the stream: find its leader, then connect the consumer and
    // the sender to that node first, with the other two as fallbacks.
    let raw = async_nats::ConnectOptions::new()
        .connect(vec![
            "nats://127.0.0.1:14241".to_string(),
            "nats://127.0.0.1:14242".to_string(),
            "nats://127.0.0.1:14243".to_string(),
        ])
        .await
        .map_err(|e| format!("raw client: {e}"))?;
    let info = request(&raw, format!("$JS.API.STREAM.INFO.{stream}"), Bytes::new())
        .await
        .ok_or("no stream info")?;
    let leader = info["cluster"]["leader"].as_str().unwrap_or("").to_string();
    let node = match leader.as_str() {
        "n1" => 0,
        "n2" => 1,
        "n3" => 2,
        other => return Err(format!("unknown leader {other:?}: {info}")),
    };
    probe
        .shutdown()
        .await
        .map_err(|e| format!("probe shutdown: {e}"))?;
    let on_leader = Cluster::url_first(node);
    let consumer = env
        .builder("consumer")
        .url(on_leader.clone())
        .listener(Counter {
            seen: Arc::clone(&seen),
            calls: Arc::clone(&calls),
        })
        .build()
        .await
        .map_err(|e| format!("consumer: {e}"))?;
    consumer
        .start()
        .await
        .map_err(|e| format!("consumer start: {e}"))?;
    let sender = env
        .builder("sender")
        .url(on_leader)
        .send_timeout(Duration::from_secs(30))
        .build()
        .await
        .map_err(|e| format!("sender: {e}"))?;

    let next = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let retried = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (sender, next, retried) = (sender.clone(), Arc::clone(&next), Arc::clone(&retried));
        tasks.push(tokio::spawn(async move {
            loop {
                let id = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                if id >= EVENTS {
                    return;
                }
                while sender.send_event(&Item { id }).await.is_err() {
                    retried.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }));
    }
    while next.load(std::sync::atomic::Ordering::SeqCst) < EVENTS / 4 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Kill the node that leads the stream and that sender and consumer are on.
    let killed_at = next.load(std::sync::atomic::Ordering::SeqCst);
    cluster.kill(node).await;
    let began = tokio::time::Instant::now();
    for task in tasks {
        task.await.map_err(|e| e.to_string())?;
    }
    let sent_in = began.elapsed();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while seen.lock().expect("lock").len() < EVENTS as usize
        && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let handled = seen.lock().expect("lock").len() as u64;
    let calls = *calls.lock().expect("lock");
    let lost = EVENTS - handled;
    println!(
        "fault cluster_leader_kill nats: sent={EVENTS} handled={handled} duplicated={} lost={lost} \
         killed={leader} at={killed_at} retried_sends={} rest_sent_in={sent_in:?}",
        calls.saturating_sub(handled),
        retried.load(std::sync::atomic::Ordering::SeqCst)
    );
    let _ = sender.shutdown().await;
    let _ = consumer.shutdown().await;
    drop(env);
    if lost == 0 {
        Ok(())
    } else {
        let missing: Vec<u64> = {
            let seen = seen.lock().expect("lock");
            (0..EVENTS)
                .filter(|id| !seen.contains(id))
                .take(10)
                .collect()
        };
        Err(format!(
            "{lost} of {EVENTS} never handled (first: {missing:?})"
        ))
    }
}

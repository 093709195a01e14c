//! End-to-end throughput on the in-process provider: `send_event` -> pipelines ->
//! provider -> decode -> listener -> ack, beside a raw `tokio::sync::mpsc` channel
//! carrying the same serialized bytes (serialize, send, receive, deserialize).
//!
//! `cargo bench -p eventing --bench in_process`
//!
//! Both rows run with mimalloc as the global allocator: under glibc's malloc, memory
//! allocated on the sending thread and freed on the consuming one contends on the
//! allocator's arena lock and dominates both rows (see the README for both figures).

// criterion_group! generates undocumented items.
#![allow(missing_docs)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use eventing::memory::MemoryProvider;
use eventing::pipeline::SessionPipeline;
use eventing::{
    Context, EventListener, EventManager, ListenerOptions, ListenerResult, event, event_listener,
};
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, mpsc};

/// A small event: two fields.
#[event(name = "bench.Tick")]
#[derive(Serialize, Deserialize)]
struct Tick {
    id: u64,
    name: String,
}

/// Counts what it handled and wakes the bench at the target.
struct Counter {
    handled: AtomicU64,
    target: AtomicU64,
    done: Notify,
}

impl Counter {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            handled: AtomicU64::new(0),
            target: AtomicU64::new(u64::MAX),
            done: Notify::new(),
        })
    }

    fn hit(&self, id: u64) {
        let n = self.handled.fetch_add(1, Ordering::Relaxed) + 1;
        std::hint::black_box(id);
        if n == self.target.load(Ordering::Relaxed) {
            self.done.notify_one();
        }
    }

    /// Arms the counter for `n` more events.
    fn arm(&self, n: u64) {
        let target = self.handled.load(Ordering::Relaxed) + n;
        self.target.store(target, Ordering::Relaxed);
    }
}

#[event_listener(Tick, name = "BenchListener")]
struct TickListener {
    counter: Arc<Counter>,
}

impl EventListener<Tick> for TickListener {
    async fn on(&self, event: Tick, _: &Context) -> ListenerResult {
        self.counter.hit(event.id);
        Ok(())
    }
}

fn tick(id: u64) -> Tick {
    Tick {
        id,
        name: "tick".to_string(),
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

fn bench(c: &mut Criterion) {
    let rt = runtime();
    let mut group = c.benchmark_group("in_process_end_to_end");
    group.throughput(Throughput::Elements(1));
    group.measurement_time(Duration::from_secs(5));

    // eventing: a manager with the session pipeline on the in-process provider.
    let counter = Counter::new();
    let manager = rt.block_on(async {
        let manager = EventManager::builder()
            .provider(MemoryProvider::new())
            .server_name("bench")
            .pipeline(SessionPipeline)
            .only_bound_listeners()
            .listener(TickListener {
                counter: Arc::clone(&counter),
            })
            .listener_options(ListenerOptions {
                prefetch: 1024,
                ..ListenerOptions::default()
            })
            .build()
            .await
            .expect("build");
        manager.start().await.expect("start");
        manager
    });
    group.bench_function("eventing", |b| {
        b.to_async(&rt).iter_custom(|iters| {
            let manager = manager.clone();
            let counter = Arc::clone(&counter);
            async move {
                counter.arm(iters);
                let done = counter.done.notified();
                let start = Instant::now();
                for id in 0..iters {
                    manager.send_event(&tick(id)).await.expect("send");
                }
                done.await;
                start.elapsed()
            }
        });
    });

    // raw: the same bytes through an mpsc channel to a task that decodes them.
    let raw_counter = Counter::new();
    let (tx, mut rx) = mpsc::channel::<bytes::Bytes>(1024);
    {
        let counter = Arc::clone(&raw_counter);
        rt.spawn(async move {
            while let Some(body) = rx.recv().await {
                if let Ok(event) = serde_json::from_slice::<Tick>(&body) {
                    counter.hit(event.id);
                }
            }
        });
    }
    group.bench_function("raw_mpsc", |b| {
        b.to_async(&rt).iter_custom(|iters| {
            let tx = tx.clone();
            let counter = Arc::clone(&raw_counter);
            async move {
                counter.arm(iters);
                let done = counter.done.notified();
                let start = Instant::now();
                for id in 0..iters {
                    let body = serde_json::to_vec(&tick(id)).expect("encode");
                    tx.send(bytes::Bytes::from(body)).await.expect("send");
                }
                done.await;
                start.elapsed()
            }
        });
    });
    group.finish();
    rt.block_on(manager.shutdown()).expect("shutdown");
}

criterion_group!(benches, bench);
criterion_main!(benches);

//! Measuring a provider beside the raw client of its broker: the pieces every
//! bench binary of the workspace shares (feature `bench`).
//!
//! A bench sends `n` events with a bounded number of sends in flight and waits
//! until a [`Counter`] saw them all ([`throughput`]), then times single round
//! trips ([`round_trips`]); the eventing side and the raw side take turns in one
//! run, and the figures are the [`median`] of the rounds, reported as ratios.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! use std::time::Duration;
//! use eventing_test::bench::{Counter, throughput};
//!
//! let counter = Counter::new();
//! let c = counter.clone();
//! // Here a "send" is handled at once; a real bench publishes and a listener hits.
//! let per_second = throughput(&counter, 100, 8, Duration::from_secs(5), |_| {
//!     let c = c.clone();
//!     async move { c.hit() }
//! })
//! .await;
//! assert!(per_second > 0.0);
//! # }
//! ```

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use tokio::sync::Notify;

/// Counts handled events and wakes the bench when a target is reached.
#[derive(Debug)]
pub struct Counter {
    handled: AtomicU64,
    target: AtomicU64,
    done: Notify,
}

impl Counter {
    /// A counter at zero with no target.
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            handled: AtomicU64::new(0),
            target: AtomicU64::new(u64::MAX),
            done: Notify::new(),
        })
    }

    /// One event was handled (called by the listener or the raw consumer).
    pub fn hit(&self) {
        let n = self.handled.fetch_add(1, Ordering::AcqRel) + 1;
        if n == self.target.load(Ordering::Acquire) {
            self.done.notify_one();
        }
    }

    /// How many events were handled so far.
    pub fn handled(&self) -> u64 {
        self.handled.load(Ordering::Acquire)
    }

    /// Expects `n` more events than were handled so far.
    pub fn arm(&self, n: u64) {
        let target = self.handled() + n;
        self.target.store(target, Ordering::Release);
    }

    /// Waits until the armed target is reached.
    ///
    /// # Panics
    /// If it is not reached within `limit`: a bench fails instead of hanging.
    pub async fn wait(&self, limit: Duration) {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let notified = self.done.notified();
            if self.handled() >= self.target.load(Ordering::Acquire) {
                return;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                panic!(
                    "only {} of {} events handled in {limit:?}",
                    self.handled(),
                    self.target.load(Ordering::Acquire)
                );
            }
        }
    }
}

/// Runs `op(0..n)` with at most `limit` of them in flight.
pub async fn in_flight<F: Future<Output = ()>>(limit: usize, n: u64, mut op: impl FnMut(u64) -> F) {
    let mut running = FuturesUnordered::new();
    for i in 0..n {
        if running.len() >= limit.max(1) {
            running.next().await;
        }
        running.push(op(i));
    }
    while running.next().await.is_some() {}
}

/// Events per second: `n` sends, at most `limit` in flight, from the first send
/// until `counter` saw all `n` handled.
///
/// # Panics
/// If sending or handling takes longer than `patience`.
pub async fn throughput<F: Future<Output = ()>>(
    counter: &Counter,
    n: u64,
    limit: usize,
    patience: Duration,
    send: impl FnMut(u64) -> F,
) -> f64 {
    counter.arm(n);
    let start = Instant::now();
    bounded("sending", patience, in_flight(limit, n, send)).await;
    counter.wait(patience).await;
    n as f64 / start.elapsed().as_secs_f64()
}

/// `samples` round trips, one event at a time, after a tenth as many as a
/// warm-up: (p50, p99) in microseconds, from the send until `counter` saw it.
///
/// # Panics
/// If one round trip takes longer than `patience`.
pub async fn round_trips<F: Future<Output = ()>>(
    counter: &Counter,
    samples: usize,
    patience: Duration,
    mut send: impl FnMut(u64) -> F,
) -> (f64, f64) {
    let warm_up = samples / 10;
    let mut times = Vec::with_capacity(samples);
    for i in 0..samples + warm_up {
        counter.arm(1);
        let start = Instant::now();
        bounded("sending", patience, send(i as u64)).await;
        counter.wait(patience).await;
        if i >= warm_up {
            times.push(start.elapsed());
        }
    }
    let (p50, p99) = percentiles(times);
    (p50, p99)
}

/// (p50, p99) of `samples` in microseconds (NaN for none).
pub fn percentiles(mut samples: Vec<Duration>) -> (f64, f64) {
    if samples.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    samples.sort_unstable();
    let at = |q: f64| {
        let index = ((samples.len() as f64 - 1.0) * q).round() as usize;
        samples[index].as_secs_f64() * 1e6
    };
    (at(0.50), at(0.99))
}

/// The median of `values` (the upper one of an even count; NaN for none).
pub fn median(values: &[f64]) -> f64 {
    let mut values = values.to_vec();
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}

/// Awaits `future`, panicking with `what` if it takes longer than `limit`.
pub async fn bounded<T>(what: &str, limit: Duration, future: impl Future<Output = T>) -> T {
    match tokio::time::timeout(limit, future).await {
        Ok(value) => value,
        Err(_) => panic!("{what}: no answer within {limit:?}"),
    }
}

/// The environment variable `name` parsed, or `default` when unset or unparsable.
pub fn setting<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// True when the binary runs under `cargo bench` (which passes `--bench`): bench
/// binaries return at once otherwise, so `cargo test --benches` stays quick.
pub fn under_cargo_bench() -> bool {
    std::env::args().any(|a| a == "--bench")
}

/// One side's figures, one entry per round.
#[derive(Debug, Default, Clone)]
pub struct Figures {
    /// Events per second.
    pub per_second: Vec<f64>,
    /// Round-trip p50 in microseconds.
    pub p50: Vec<f64>,
    /// Round-trip p99 in microseconds.
    pub p99: Vec<f64>,
}

impl Figures {
    /// (events/s, p50, p99): the median of each over the rounds.
    pub fn medians(&self) -> (f64, f64, f64) {
        (
            median(&self.per_second),
            median(&self.p50),
            median(&self.p99),
        )
    }

    /// Measures one round: a warm-up of `n / 10 + 1` sends, the throughput of
    /// `n` with `limit` in flight, then `samples` round trips; the figures are
    /// added to `self`.
    pub async fn measure<F: Future<Output = ()>>(
        &mut self,
        counter: &Counter,
        (n, limit, samples): (u64, usize, usize),
        patience: Duration,
        mut send: impl FnMut(u64) -> F,
    ) {
        throughput(counter, n / 10 + 1, limit, patience, &mut send).await;
        self.per_second
            .push(throughput(counter, n, limit, patience, &mut send).await);
        let (p50, p99) = round_trips(counter, samples, patience, &mut send).await;
        self.p50.push(p50);
        self.p99.push(p99);
    }
}

/// Prints the table of both sides, the ratios and whether the targets
/// (throughput ≥ 0.9× raw, p99 ≤ 1.2× raw) were met.
pub fn print_comparison(
    title: &str,
    raw_name: &str,
    raw: &Figures,
    ours_name: &str,
    ours: &Figures,
) {
    let (raw, ours) = (raw.medians(), ours.medians());
    println!();
    println!("{title}");
    println!(
        "{:<24}{:>12}{:>12}{:>12}",
        "", "events/s", "p50 (us)", "p99 (us)"
    );
    for (name, (per_second, p50, p99)) in [(raw_name, raw), (ours_name, ours)] {
        println!("{name:<24}{per_second:>12.0}{p50:>12.0}{p99:>12.0}");
    }
    println!(
        "{:<24}{:>11.2}x{:>11.2}x{:>11.2}x",
        "eventing / raw",
        ours.0 / raw.0,
        ours.1 / raw.1,
        ours.2 / raw.2
    );
    println!();
    let met = |ok: bool| if ok { "met" } else { "NOT met" };
    println!(
        "targets: throughput eventing/raw >= 0.90 ({}), p99 eventing/raw <= 1.20 ({})",
        met(ours.0 / raw.0 >= 0.9),
        met(ours.2 / raw.2 <= 1.2)
    );
}

/// Prints a third side, the raw client sending eventing's own wire format, and
/// eventing's ratios to it: what the runtime costs beside what the format costs
/// the broker and the client. Call after [`print_comparison`].
pub fn print_same_format(name: &str, same_format: &Figures, ours: &Figures) {
    let (same, ours) = (same_format.medians(), ours.medians());
    println!("{name:<24}{:>12.0}{:>12.0}{:>12.0}", same.0, same.1, same.2);
    println!(
        "{:<24}{:>11.2}x{:>11.2}x{:>11.2}x",
        "eventing / same format",
        ours.0 / same.0,
        ours.1 / same.1,
        ours.2 / same.2
    );
}

/// The order `sides` sides take their turns in round `round`: who goes first
/// rotates, so no side always runs on a broker warmed (or loaded) by another.
///
/// ```
/// let order: Vec<usize> = eventing_test::bench::turns(1, 3).collect();
/// assert_eq!(order, [1, 2, 0]);
/// ```
pub fn turns(round: u64, sides: usize) -> impl Iterator<Item = usize> {
    let first = usize::try_from(round % sides.max(1) as u64).unwrap_or(0);
    (0..sides).map(move |turn| (first + turn) % sides)
}

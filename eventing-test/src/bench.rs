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

/// Whether `BENCH_VERBOSE` is set: benches then print each round's figures.
pub fn verbose() -> bool {
    std::env::var_os("BENCH_VERBOSE").is_some()
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

/// CPU time spent by this process and by the broker's, read from Linux's
/// `/proc/<pid>/task/*/schedstat` (nanoseconds on CPU, summed over the threads):
/// a bench divides the difference over a phase by the events of the phase, so the
/// table shows where each side's time goes (client or broker) beside its rate.
/// The kernel adds a running thread's time at scheduler ticks and switches, so
/// phases should last well over a tick (the benches' last about a second).
///
/// ```
/// use std::time::{Duration, Instant};
/// let clock = eventing_test::bench::CpuClock::watching("no-such-broker");
/// let before = clock.now();
/// // Busy for 50 ms: the kernel adds a running thread's time at its ticks and
/// // switches, so a phase much shorter than a tick may read as zero.
/// let start = Instant::now();
/// let mut spun = 0u64;
/// while start.elapsed() < Duration::from_millis(50) {
///     spun = std::hint::black_box(spun.wrapping_add(1));
/// }
/// let used = clock.now().since(&before);
/// assert!(used.server.is_none());
/// # #[cfg(target_os = "linux")]
/// assert!(used.client.unwrap_or_default() > Duration::ZERO);
/// ```
#[derive(Debug, Default, Clone)]
pub struct CpuClock {
    server: Option<u32>,
}

/// CPU time used so far (or over a phase, from [`CpuReading::since`]); `None`
/// where it could not be read.
#[derive(Debug, Default, Clone, Copy)]
pub struct CpuReading {
    /// This process.
    pub client: Option<Duration>,
    /// The broker's process.
    pub server: Option<Duration>,
}

impl CpuClock {
    /// A clock of this process and of the broker: the process whose pid is in
    /// `BENCH_SERVER_PID`, or else the first whose command name (`/proc/<pid>/comm`)
    /// is `server_comm` (`nats-server`, `redis-server`, `beam.smp`, `java`).
    pub fn watching(server_comm: &str) -> Self {
        let server = setting::<u32>("BENCH_SERVER_PID", 0);
        let server = if server > 0 {
            Some(server)
        } else {
            find_process(server_comm)
        };
        Self { server }
    }

    /// The CPU time used so far.
    pub fn now(&self) -> CpuReading {
        CpuReading {
            client: cpu_time("self"),
            server: self.server.and_then(|pid| cpu_time(&pid.to_string())),
        }
    }
}

impl CpuReading {
    /// What was used between `before` and this reading.
    pub fn since(&self, before: &CpuReading) -> CpuReading {
        let minus = |a: Option<Duration>, b: Option<Duration>| Some(a?.saturating_sub(b?));
        CpuReading {
            client: minus(self.client, before.client),
            server: minus(self.server, before.server),
        }
    }

    /// (client, server) in microseconds per event over `events` events (NaN where
    /// unknown).
    pub fn per_event(&self, events: u64) -> (f64, f64) {
        let per = |d: Option<Duration>| {
            d.map_or(f64::NAN, |d| d.as_secs_f64() * 1e6 / events.max(1) as f64)
        };
        (per(self.client), per(self.server))
    }
}

/// The pid of the first process named `comm`.
fn find_process(comm: &str) -> Option<u32> {
    std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .find_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let name = std::fs::read_to_string(entry.path().join("comm")).ok()?;
            (name.trim_end() == comm).then_some(pid)
        })
}

/// Nanoseconds on CPU of every thread of `/proc/<pid>`.
fn cpu_time(pid: &str) -> Option<Duration> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    let nanos = tasks
        .flatten()
        .filter_map(|task| {
            let stat = std::fs::read_to_string(task.path().join("schedstat")).ok()?;
            stat.split_whitespace().next()?.parse::<u64>().ok()
        })
        .sum();
    Some(Duration::from_nanos(nanos))
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
    /// This process's CPU per event in the throughput phase, microseconds.
    pub client_cpu: Vec<f64>,
    /// The broker's CPU per event in the throughput phase, microseconds.
    pub server_cpu: Vec<f64>,
    /// Where the CPU figures are read.
    pub clock: CpuClock,
}

impl Figures {
    /// Figures whose throughput phase also reads the CPU time of this process and
    /// of the broker (see [`CpuClock::watching`]).
    pub fn watching(server_comm: &str) -> Self {
        Self {
            clock: CpuClock::watching(server_comm),
            ..Self::default()
        }
    }

    /// (events/s, p50, p99): the median of each over the rounds.
    pub fn medians(&self) -> (f64, f64, f64) {
        (
            median(&self.per_second),
            median(&self.p50),
            median(&self.p99),
        )
    }

    /// (client, server) CPU per event in microseconds: the median over the rounds.
    pub fn cpu_medians(&self) -> (f64, f64) {
        (median(&self.client_cpu), median(&self.server_cpu))
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
        let before = self.clock.now();
        self.per_second
            .push(throughput(counter, n, limit, patience, &mut send).await);
        let (client, server) = self.clock.now().since(&before).per_event(n);
        if verbose() {
            eprintln!(
                "  {:.0} events/s, client {client:.1} us/ev, server {server:.1} us/ev",
                self.per_second.last().copied().unwrap_or(f64::NAN)
            );
        }
        self.client_cpu.push(client);
        self.server_cpu.push(server);
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
    println!();
    println!("{title}");
    println!(
        "{:<24}{:>12}{:>12}{:>12}{:>14}{:>14}",
        "", "events/s", "p50 (us)", "p99 (us)", "client us/ev", "server us/ev"
    );
    print_row(raw_name, raw);
    print_row(ours_name, ours);
    print_ratios("eventing / raw", raw, ours);
    let (raw, ours) = (raw.medians(), ours.medians());
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
    print_row(name, same_format);
    print_ratios("eventing / same format", same_format, ours);
}

/// One side's medians: events/s, p50, p99, client and broker CPU per event.
fn print_row(name: &str, figures: &Figures) {
    let (per_second, p50, p99) = figures.medians();
    let (client, server) = figures.cpu_medians();
    println!("{name:<24}{per_second:>12.0}{p50:>12.0}{p99:>12.0}{client:>14.1}{server:>14.1}");
}

/// `ours` over `theirs`, column by column.
fn print_ratios(name: &str, theirs: &Figures, ours: &Figures) {
    let (a, b) = (theirs.medians(), ours.medians());
    let (ac, bc) = (theirs.cpu_medians(), ours.cpu_medians());
    println!(
        "{name:<24}{:>11.2}x{:>11.2}x{:>11.2}x{:>13.2}x{:>13.2}x",
        b.0 / a.0,
        b.1 / a.1,
        b.2 / a.2,
        bc.0 / ac.0,
        bc.1 / ac.1
    );
}

/// Measures the sides of a bench (`names`: raw, eventing, ...) for `rounds`
/// rounds, taking [`turns`]: `measure(side, figures)` adds one measurement of
/// side `side` to its figures (usually with [`Figures::measure`]) and gives them
/// back. Sides left out of `BENCH_SIDES` (names separated by commas; unset: all)
/// are skipped, so a profiler can watch one alone. Every side's [`Figures`] watch
/// the broker process `server_comm` (see [`CpuClock::watching`]).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let mut calls = Vec::new();
/// let sides = ["raw", "eventing"];
/// let [raw, ours] = eventing_test::bench::take_turns(sides, 2, "no-broker", |side, mut figures| {
///     calls.push(side);
///     async move {
///         figures.per_second.push(1.0);
///         figures
///     }
/// })
/// .await;
/// # if std::env::var_os("BENCH_SIDES").is_none() {
/// assert_eq!(calls, [0, 1, 1, 0]);
/// assert_eq!((raw.per_second.len(), ours.per_second.len()), (2, 2));
/// # }
/// # }
/// ```
pub async fn take_turns<const N: usize, F: Future<Output = Figures>>(
    names: [&str; N],
    rounds: u64,
    server_comm: &str,
    mut measure: impl FnMut(usize, Figures) -> F,
) -> [Figures; N] {
    let chosen = std::env::var("BENCH_SIDES").unwrap_or_default();
    let chosen = |name: &str| chosen.is_empty() || chosen.split(',').any(|s| s.trim() == name);
    let mut figures = [(); N].map(|()| Figures::watching(server_comm));
    for round in 0..rounds {
        eprintln!("round {} of {rounds}", round + 1);
        for side in turns(round, N) {
            if chosen(names[side]) {
                if verbose() {
                    eprintln!("  {}:", names[side]);
                }
                let taken = std::mem::take(&mut figures[side]);
                figures[side] = measure(side, taken).await;
            }
        }
    }
    figures
}

/// One side of a bench: the counter its consumer hits and how it sends event `i`.
pub type Side<'a, S> = (&'a Counter, S);

/// The three sides of a provider's bench measured with [`take_turns`] (so
/// `BENCH_SIDES` names `raw`, `same-format` and `eventing`), each round with
/// [`Figures::measure`] of `shape` (events, sends in flight, round trips):
/// `raw`, the broker's own client at its plainest; `same_format`, that client
/// sending eventing's wire format; `eventing`, an `EventManager`. Returns their
/// figures in that order.
pub async fn three_sides<A, FA, B, FB, C, FC>(
    (rounds, server_comm): (u64, &str),
    shape: (u64, usize, usize),
    patience: Duration,
    raw: Side<'_, A>,
    same_format: Side<'_, B>,
    eventing: Side<'_, C>,
) -> [Figures; 3]
where
    A: Fn(u64) -> FA,
    FA: Future<Output = ()>,
    B: Fn(u64) -> FB,
    FB: Future<Output = ()>,
    C: Fn(u64) -> FC,
    FC: Future<Output = ()>,
{
    let sides = ["raw", "same-format", "eventing"];
    let (raw, same, ours) = (&raw, &same_format, &eventing);
    take_turns(sides, rounds, server_comm, |side, mut into| async move {
        match side {
            0 => into.measure(raw.0, shape, patience, &raw.1).await,
            1 => into.measure(same.0, shape, patience, &same.1).await,
            _ => into.measure(ours.0, shape, patience, &ours.1).await,
        }
        into
    })
    .await
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

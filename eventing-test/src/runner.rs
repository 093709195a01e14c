//! Running one generated test: its runtime, its time bound and the kit's lock.
//!
//! The macros expand to plain `#[test] fn`s that call these functions (through
//! `__private`), so the crate invoking them needs neither tokio nor an async test
//! attribute: the runtime is built here, multi-threaded with two workers.

use std::future::Future;
#[cfg(feature = "suites")]
use std::sync::{PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
#[cfg(feature = "suites")]
use std::time::Duration;

#[cfg(feature = "suites")]
use crate::faults::{Ctx, block_on, serial};
#[cfg(feature = "suites")]
use crate::harness::{Harness, TestEnv};

/// How long one behaviour test may run.
#[cfg(feature = "suites")]
pub(crate) const SUITE_LIMIT: Duration = Duration::from_secs(60);

/// How long one features test may run, and then its cleanup.
#[cfg(feature = "suites")]
pub(crate) const FEATURES_LIMIT: Duration = Duration::from_secs(60);

/// Held shared by every behaviour and features test of the kit, exclusively by
/// each fault test (which restarts and loads the broker).
#[cfg(feature = "suites")]
static KIT: RwLock<()> = RwLock::new(());

#[cfg(feature = "suites")]
pub(crate) fn shared() -> RwLockReadGuard<'static, ()> {
    KIT.read().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(feature = "suites")]
pub(crate) fn exclusive() -> RwLockWriteGuard<'static, ()> {
    KIT.write().unwrap_or_else(PoisonError::into_inner)
}

/// A fresh multi-threaded tokio runtime with two workers and every driver enabled:
/// the runtime each generated test runs on.
pub(crate) fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// Runs `future` to completion on a fresh runtime of the kind the kit's tests use
/// (multi-threaded, two workers), for plain `#[test] fn`s in crates that do not
/// depend on tokio themselves.
///
/// ```
/// let answer = eventing_test::run(async { 6 * 7 });
/// assert_eq!(answer, 42);
/// ```
pub fn run<F: Future>(future: F) -> F::Output {
    runtime().block_on(future)
}

/// One behaviour test of [`suite`](crate::suite): `case` on the harness `make`
/// returns (called inside the runtime), bounded to 60 s.
#[cfg(feature = "suites")]
pub fn suite_case<H: Harness>(
    case: &'static str,
    make: impl FnOnce() -> H,
    run: impl for<'h> AsyncFnOnce(&'h dyn Harness),
) {
    let _shared = shared();
    runtime().block_on(async move {
        let harness = make();
        if tokio::time::timeout(SUITE_LIMIT, run(&harness))
            .await
            .is_err()
        {
            panic!("{case} timed out after 60 s");
        }
    });
}

/// One features test of [`features`](crate::features): `case` in a fresh
/// [`TestEnv`], bounded to 60 s, then the environment's managers shut down and its
/// queues removed from the broker whether it passed, failed or timed out (bounded
/// too), then its failure re-raised.
#[cfg(feature = "suites")]
pub fn features_case<H: Harness>(
    case: &'static str,
    make: impl FnOnce() -> H,
    run: impl for<'e, 'h> AsyncFnOnce(&'e mut TestEnv<'h>),
) {
    let _shared = shared();
    runtime().block_on(async move {
        let harness = make();
        let mut env = TestEnv::new(&harness);
        let outcome = crate::features::bounded_unwind(run(&mut env), FEATURES_LIMIT).await;
        // Clean up even after a failure; bounded too.
        let finished = tokio::time::timeout(FEATURES_LIMIT, env.finish()).await;
        crate::features::rethrow(case, outcome, FEATURES_LIMIT);
        assert!(finished.is_ok(), "{case}: cleanup timed out");
    });
}

/// One fault test of [`faults`](crate::faults): one at a time ([`serial`]), on its
/// own runtime, bounded ([`block_on`]); `module_path` is `module_path!()` where the
/// tests were generated (it names the `fault_child` test to run as a child).
#[cfg(feature = "suites")]
pub fn fault_case<H: Harness>(
    case: &'static str,
    module_path: &'static str,
    make: impl FnOnce() -> H,
    run: impl for<'h, 'c> AsyncFnOnce(&'h dyn Harness, &'c Ctx),
) {
    let _one_at_a_time = serial();
    let ctx = Ctx::new(module_path);
    block_on(case, async move {
        let harness = make();
        run(&harness, &ctx).await;
    });
}

/// The `fault_child` test: the consumer a killed-consumer test runs in a child
/// process and kills; does nothing when the test binary runs normally.
#[cfg(feature = "suites")]
pub fn fault_child() {
    crate::faults::child_main();
}

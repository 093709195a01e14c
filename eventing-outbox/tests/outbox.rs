//! The outbox and the inbox on SQLite (always) and PostgreSQL (when
//! `EVENTING_PG_URL` is set, as scripts/test.sh does), with the in-process provider.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Handler, eventually};
use eventing::memory::MemoryProvider;
use eventing::{
    Context, EventListener, EventManager, ListenerOptions, ListenerResult, event, event_listener,
};
use eventing_outbox::{Backend, Inbox, Outbox, RelayOptions, Tables};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use sqlx::Pool;

#[event(durable = true)]
#[derive(Serialize, Deserialize)]
struct Placed {
    n: i64,
    stream: i64,
}

#[event_listener(Placed)]
struct Sink {
    handler: Handler,
}

impl EventListener<Placed> for Sink {
    async fn on(&self, event: Placed, ctx: &Context) -> ListenerResult {
        (self.handler)(event.n * 1000 + event.stream, ctx.clone()).await
    }
}

/// What the listener saw: `(message id, n*1000+stream)` in arrival order.
type Seen = Arc<Mutex<Vec<(String, i64)>>>;

async fn manager_with(provider: MemoryProvider, handler: Handler) -> EventManager {
    let manager = EventManager::builder()
        .provider(provider)
        .listener(Sink { handler })
        .only_bound_listeners()
        // One call at a time, so the order the listener sees is the publish order.
        .listener_options(ListenerOptions {
            concurrency: 1,
            ..ListenerOptions::default()
        })
        .send_timeout(Duration::from_millis(300))
        .reconnect_backoff(Duration::from_millis(10), Duration::from_millis(100))
        .build()
        .await
        .expect("manager");
    manager.start().await.expect("start");
    manager
}

fn recorder() -> (Seen, Handler) {
    let seen: Seen = Arc::default();
    let s = Arc::clone(&seen);
    let handler: Handler = Arc::new(move |n, ctx: Context| {
        s.lock().push((ctx.message_id().to_owned(), n));
        Box::pin(async { Ok(()) })
    });
    (seen, handler)
}

fn fast_relay() -> RelayOptions {
    let mut options = RelayOptions::default();
    options.poll_interval = Duration::from_millis(50);
    options.backoff =
        eventing::backoff::Backoff::new(Duration::from_millis(10), Duration::from_millis(100));
    options
}

// ---------------------------------------------------------------------------------
// Committed events are published in order; rolled-back ones never.

async fn committed_in_order<DB: Backend>(pool: Pool<DB>, tables: Tables) {
    let (seen, handler) = recorder();
    let manager = manager_with(MemoryProvider::new(), handler).await;
    let outbox = Outbox::with_tables(manager.clone(), pool.clone(), tables);
    outbox.migrate().await.expect("migrate");
    let relay = outbox.relay(fast_relay());
    let mut committed = Vec::new();
    for n in 0..200i64 {
        let mut tx = pool.begin().await.expect("begin");
        outbox
            .send_event(&mut tx, &Placed { n, stream: 0 })
            .await
            .expect("send");
        if n % 7 == 3 {
            tx.rollback().await.expect("rollback");
        } else {
            tx.commit().await.expect("commit");
            committed.push(n * 1000);
        }
    }
    let done = eventually(Duration::from_secs(20), async || {
        seen.lock().len() >= committed.len()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let got: Vec<i64> = seen.lock().iter().map(|(_, n)| *n).collect();
    assert!(done, "handled {} of {}", got.len(), committed.len());
    assert_eq!(
        got, committed,
        "every committed event, in commit order, and no rolled-back one"
    );
    assert_eq!(outbox.pending().await.expect("pending"), 0);
    assert_eq!(relay.stats().published, committed.len() as u64);
    relay.shutdown().await;
    manager.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_events_in_order_rolled_back_never_sqlite() {
    let dir = common::temp_dir("order");
    committed_in_order(common::sqlite(&dir).await, Tables::default()).await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_events_in_order_rolled_back_never_postgres() {
    if let Some(pool) = common::postgres("committed_in_order").await {
        committed_in_order(pool, common::unique_tables().0).await;
    }
}

// ---------------------------------------------------------------------------------
// The broker goes away: the relay retries with backoff and loses nothing.

async fn broker_down<DB: Backend>(pool: Pool<DB>, tables: Tables, db: &str) {
    let (seen, handler) = recorder();
    let provider = MemoryProvider::new();
    let manager = manager_with(provider.clone(), handler).await;
    let outbox = Outbox::with_tables(manager.clone(), pool.clone(), tables);
    outbox.migrate().await.expect("migrate");
    let relay = outbox.relay(fast_relay());
    provider.set_available(false);
    for n in 0..50i64 {
        let mut tx = pool.begin().await.expect("begin");
        outbox
            .send_event(&mut tx, &Placed { n, stream: 1 })
            .await
            .expect("send");
        tx.commit().await.expect("commit");
    }
    let failing = eventually(Duration::from_secs(10), async || {
        relay.stats().failures >= 2
    })
    .await;
    assert!(failing, "the relay kept trying while the broker was down");
    assert!(seen.lock().is_empty());
    assert_eq!(outbox.pending().await.expect("pending"), 50);
    provider.set_available(true);
    let done = eventually(Duration::from_secs(20), async || seen.lock().len() >= 50).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let got: Vec<i64> = seen.lock().iter().map(|(_, n)| *n).collect();
    let unique: std::collections::BTreeSet<i64> = got.iter().copied().collect();
    let lost = 50 - unique.len();
    println!(
        "fault outbox_broker_down {db}+memory: committed=50 failures={} handled={} lost={lost} duplicated_effects=0",
        relay.stats().failures,
        got.len()
    );
    assert!(done);
    assert_eq!(lost, 0);
    assert_eq!(outbox.pending().await.expect("pending"), 0);
    relay.shutdown().await;
    manager.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_retries_while_the_broker_is_down_sqlite() {
    let dir = common::temp_dir("down");
    broker_down(common::sqlite(&dir).await, Tables::default(), "sqlite").await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_retries_while_the_broker_is_down_postgres() {
    if let Some(pool) = common::postgres("broker_down").await {
        broker_down(pool, common::unique_tables().0, "postgres").await;
    }
}

// ---------------------------------------------------------------------------------
// Several relays on one database: no row published twice, order kept per event.

async fn several_relays<DB: Backend>(pool: Pool<DB>, tables: Tables, db: &str) {
    let (seen, handler) = recorder();
    let manager = manager_with(MemoryProvider::new(), handler).await;
    let outbox = Outbox::with_tables(manager.clone(), pool.clone(), tables);
    outbox.migrate().await.expect("migrate");
    // Written first, relayed by four relays racing for the rows.
    let total = 600i64;
    for chunk in 0..(total / 20) {
        let mut tx = pool.begin().await.expect("begin");
        for i in 0..20 {
            let n = chunk * 20 + i;
            outbox
                .send_event(&mut tx, &Placed { n, stream: n % 3 })
                .await
                .expect("send");
        }
        tx.commit().await.expect("commit");
    }
    let relays: Vec<_> = (0..4)
        .map(|_| {
            let mut options = fast_relay();
            options.batch = 16;
            outbox.relay(options)
        })
        .collect();
    let done = eventually(Duration::from_secs(30), async || {
        seen.lock().len() >= total as usize
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let got = seen.lock().clone();
    let mut per_id: HashMap<&str, usize> = HashMap::new();
    for (id, _) in &got {
        *per_id.entry(id.as_str()).or_default() += 1;
    }
    let duplicated: usize = per_id.values().map(|c| c - 1).sum();
    let published: Vec<u64> = relays.iter().map(|r| r.stats().published).collect();
    println!(
        "fault outbox_several_relays {db}+memory: rows={total} handled={} per_relay={published:?} lost={} duplicated={duplicated}",
        got.len(),
        total as usize - per_id.len()
    );
    assert!(done, "handled {} of {total}", got.len());
    assert_eq!(duplicated, 0, "a row was published twice");
    assert_eq!(per_id.len(), total as usize);
    // All rows here share one address (the event), so the order is the row order.
    let order: Vec<i64> = got.iter().map(|(_, v)| v / 1000).collect();
    let mut sorted = order.clone();
    sorted.sort();
    assert_eq!(order, sorted, "published in row order across relays");
    for relay in relays {
        relay.shutdown().await;
    }
    manager.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_relays_never_publish_a_row_twice_sqlite() {
    let dir = common::temp_dir("relays");
    several_relays(common::sqlite(&dir).await, Tables::default(), "sqlite").await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_relays_never_publish_a_row_twice_postgres() {
    if let Some(pool) = common::postgres("several_relays").await {
        several_relays(pool, common::unique_tables().0, "postgres").await;
    }
}

// ---------------------------------------------------------------------------------
// Retention and the wake-up latency.

async fn retention<DB: Backend>(pool: Pool<DB>, tables: Tables) {
    let (_seen, handler) = recorder();
    let manager = manager_with(MemoryProvider::new(), handler).await;
    let outbox = Outbox::with_tables(manager.clone(), pool.clone(), tables);
    outbox.migrate().await.expect("migrate");
    for n in 0..10 {
        let mut tx = pool.begin().await.expect("begin");
        outbox
            .send_event(&mut tx, &Placed { n, stream: 2 })
            .await
            .expect("send");
        tx.commit().await.expect("commit");
    }
    assert_eq!(
        outbox.delete_sent(Duration::ZERO).await.expect("delete"),
        0,
        "unsent rows stay"
    );
    assert_eq!(outbox.publish_pending().await.expect("publish"), 10);
    assert_eq!(
        outbox
            .delete_sent(Duration::from_secs(60))
            .await
            .expect("delete"),
        0,
        "young rows stay"
    );
    tokio::time::sleep(Duration::from_millis(5)).await;
    assert_eq!(
        outbox.delete_sent(Duration::ZERO).await.expect("delete"),
        10
    );
    // A relay's own cleanup.
    for n in 0..5 {
        let mut tx = pool.begin().await.expect("begin");
        outbox
            .send_event(&mut tx, &Placed { n, stream: 2 })
            .await
            .expect("send");
        tx.commit().await.expect("commit");
    }
    let mut options = fast_relay();
    options.retention = Some(Duration::ZERO);
    options.cleanup_interval = Duration::ZERO;
    let relay = outbox.relay(options);
    let cleaned = eventually(Duration::from_secs(10), async || relay.stats().deleted >= 5).await;
    assert!(cleaned, "deleted {}", relay.stats().deleted);
    relay.shutdown().await;
    manager.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_deletes_old_sent_rows_sqlite() {
    let dir = common::temp_dir("retention");
    retention(common::sqlite(&dir).await, Tables::default()).await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_deletes_old_sent_rows_postgres() {
    if let Some(pool) = common::postgres("retention").await {
        retention(pool, common::unique_tables().0).await;
    }
}

/// Commit → handled through the outbox (woken at commit), against send_event after
/// the commit, one event at a time; prints medians and p99.
async fn latency<DB: Backend>(pool: Pool<DB>, tables: Tables, db: &str) {
    let (tx_seen, mut rx_seen) = tokio::sync::mpsc::unbounded_channel::<Instant>();
    let handler: Handler = Arc::new(move |_, _| {
        let _ = tx_seen.send(Instant::now());
        Box::pin(async { Ok(()) })
    });
    let manager = manager_with(MemoryProvider::new(), handler).await;
    let outbox = Outbox::with_tables(manager.clone(), pool.clone(), tables);
    outbox.migrate().await.expect("migrate");
    let mut options = RelayOptions::default();
    options.poll_interval = Duration::from_secs(10); // only wake-ups count
    let relay = outbox.relay(options);
    let rounds = 200;
    let (mut through_outbox, mut plain) = (Vec::new(), Vec::new());
    for n in 0..rounds {
        let mut tx = pool.begin().await.expect("begin");
        outbox
            .send_event(&mut tx, &Placed { n, stream: 3 })
            .await
            .expect("send");
        tx.commit().await.expect("commit");
        let committed = Instant::now();
        let handled = tokio::time::timeout(Duration::from_secs(5), rx_seen.recv())
            .await
            .expect("handled within 5 s (woken, not polled)")
            .expect("listener alive");
        through_outbox.push(handled.duration_since(committed));

        let tx = pool.begin().await.expect("begin");
        tx.commit().await.expect("commit");
        let committed = Instant::now();
        manager
            .send_event(&Placed { n, stream: 3 })
            .await
            .expect("send");
        let handled = rx_seen.recv().await.expect("listener alive");
        plain.push(handled.duration_since(committed));
    }
    through_outbox.sort();
    plain.sort();
    let pct = |v: &[Duration], p: usize| v[(v.len() * p / 100).min(v.len() - 1)];
    println!(
        "latency outbox {db}+memory: commit->handled p50={:?} p99={:?}; plain send after commit p50={:?} p99={:?} ({rounds} rounds)",
        pct(&through_outbox, 50),
        pct(&through_outbox, 99),
        pct(&plain, 50),
        pct(&plain, 99)
    );
    assert!(
        pct(&through_outbox, 50) < Duration::from_millis(500),
        "woken at commit, not by the 10 s poll"
    );
    relay.shutdown().await;
    manager.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wake_up_latency_sqlite() {
    let dir = common::temp_dir("latency");
    latency(common::sqlite(&dir).await, Tables::default(), "sqlite").await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wake_up_latency_postgres() {
    if let Some(pool) = common::postgres("latency").await {
        latency(pool, common::unique_tables().0, "postgres").await;
    }
}

// ---------------------------------------------------------------------------------
// Duplicates: every message delivered twice; the inbox makes each side effect
// happen once, counted in the database.

async fn duplicates<DB: Backend>(pool: Pool<DB>, tables: Tables, run: &str, db: &str)
where
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: sqlx::IntoArguments<'q, DB>,
    i64: sqlx::Type<DB> + for<'q> sqlx::Encode<'q, DB> + for<'r> sqlx::Decode<'r, DB>,
    for<'c> &'c Pool<DB>: sqlx::Executor<'c, Database = DB>,
    (i64,): for<'r> sqlx::FromRow<'r, DB::Row>,
{
    let effects = format!("effects_{run}");
    sqlx::query(&format!("CREATE TABLE {effects} (n BIGINT NOT NULL)"))
        .execute(&pool)
        .await
        .expect("create effects");
    let inbox = Inbox::with_tables(pool.clone(), tables.clone());
    let deliveries = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let handler: Handler = {
        let (inbox, effects, deliveries) =
            (inbox.clone(), effects.clone(), Arc::clone(&deliveries));
        Arc::new(move |n, ctx: Context| {
            let (inbox, insert) = (
                inbox.clone(),
                format!("INSERT INTO {effects} (n) VALUES ($1)"),
            );
            deliveries.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Box::pin(async move {
                let Some(mut tx) = inbox.begin(&ctx).await? else {
                    return Ok(());
                };
                sqlx::query(&insert).bind(n).execute(&mut *tx).await?;
                tx.commit().await?;
                Ok(())
            })
        })
    };
    let manager = manager_with(MemoryProvider::new(), handler).await;
    let outbox = Outbox::with_tables(manager.clone(), pool.clone(), tables.clone());
    outbox.migrate().await.expect("migrate");
    let total = 300i64;
    for n in 0..total {
        let mut tx = pool.begin().await.expect("begin");
        outbox
            .send_event(&mut tx, &Placed { n, stream: 4 })
            .await
            .expect("send");
        tx.commit().await.expect("commit");
    }
    // Deliver everything, then make the outbox forget it sent it: every message (same
    // message id) is published and delivered a second time.
    assert_eq!(
        outbox.publish_pending().await.expect("publish"),
        total as usize
    );
    sqlx::query(&format!("UPDATE {} SET sent_at = NULL", tables.outbox()))
        .execute(&pool)
        .await
        .expect("reset sent_at");
    assert_eq!(
        outbox.publish_pending().await.expect("publish again"),
        total as usize
    );
    let delivered = eventually(Duration::from_secs(20), async || {
        deliveries.load(std::sync::atomic::Ordering::Relaxed) >= 2 * total as u64
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (rows,): (i64,) = sqlx::query_as(&format!("SELECT count(*) FROM {effects}"))
        .fetch_one(&pool)
        .await
        .expect("count");
    let (distinct,): (i64,) = sqlx::query_as(&format!("SELECT count(DISTINCT n) FROM {effects}"))
        .fetch_one(&pool)
        .await
        .expect("count");
    let lost = total - distinct;
    let duplicated_effects = rows - distinct;
    println!(
        "fault outbox_duplicates {db}+memory: messages={total} deliveries={} effects={rows} lost={lost} duplicated_effects={duplicated_effects}",
        deliveries.load(std::sync::atomic::Ordering::Relaxed)
    );
    assert!(delivered, "every message delivered twice");
    assert_eq!(lost, 0);
    assert_eq!(duplicated_effects, 0);
    assert_eq!(
        inbox
            .expire(Duration::from_secs(3600))
            .await
            .expect("expire"),
        0,
        "young records stay"
    );
    tokio::time::sleep(Duration::from_millis(5)).await;
    assert_eq!(
        inbox.expire(Duration::ZERO).await.expect("expire"),
        total as u64
    );
    manager.shutdown().await.expect("shutdown");
    let _ = sqlx::query(&format!("DROP TABLE {effects}"))
        .execute(&pool)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbox_runs_each_side_effect_once_sqlite() {
    let dir = common::temp_dir("dups");
    duplicates(common::sqlite(&dir).await, Tables::default(), "x", "sqlite").await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbox_runs_each_side_effect_once_postgres() {
    if let Some(pool) = common::postgres("duplicates").await {
        let (tables, run) = common::unique_tables();
        duplicates(pool, tables, &run, "postgres").await;
    }
}

// ---------------------------------------------------------------------------------
// A row that can never be published is set aside with its reason; the rows behind it
// go on; requeued after the fix, it is published.

async fn poison<DB: Backend>(pool: Pool<DB>, tables: Tables, db: &str)
where
    for<'c> &'c Pool<DB>: sqlx::Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: sqlx::IntoArguments<'q, DB>,
{
    let (seen, handler) = recorder();
    let manager = manager_with(MemoryProvider::new(), handler).await;
    let outbox = Outbox::with_tables(manager.clone(), pool.clone(), tables.clone());
    outbox.migrate().await.expect("migrate");
    let total = 100i64;
    let mut tx = pool.begin().await.expect("begin");
    for n in 0..total {
        outbox
            .send_event(&mut tx, &Placed { n, stream: 2 })
            .await
            .expect("send");
    }
    tx.commit().await.expect("commit");
    // Rows 11 and 51 (events 10 and 50): headers no longer JSON, as a hand edit or a
    // foreign writer might leave them.
    let table = tables.outbox();
    let corrupt = format!("UPDATE {table} SET headers = 'x' || headers WHERE id IN (11, 51)");
    sqlx::query(&corrupt).execute(&pool).await.expect("corrupt");

    let relay = outbox.relay(fast_relay());
    // Handled first, marked sent after the batch: wait for both.
    let past = eventually(Duration::from_secs(20), async || {
        seen.lock().len() as i64 >= total - 2 && outbox.pending().await.unwrap_or(1) == 0
    })
    .await;
    let failed = outbox.failed(10).await.expect("failed rows");
    let handled_before_fix = seen.lock().len();
    let pending_before_fix = outbox.pending().await.expect("pending");
    let stats = relay.stats();

    let fix = format!("UPDATE {table} SET headers = substr(headers, 2) WHERE id IN (11, 51)");
    sqlx::query(&fix).execute(&pool).await.expect("fix");
    let requeued = outbox.requeue_failed().await.expect("requeue");
    let all = eventually(Duration::from_secs(20), async || {
        seen.lock().len() as i64 >= total
    })
    .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let got: Vec<i64> = seen.lock().iter().map(|(_, n)| *n / 1000).collect();
    let unique: std::collections::BTreeSet<i64> = got.iter().copied().collect();
    let lost = total as usize - unique.len();
    println!(
        "fault outbox_poison {db}+memory: committed={total} corrupt=2 set_aside={} handled_before_fix={handled_before_fix} \
         requeued={requeued} handled={} lost={lost} duplicated={}",
        failed.len(),
        got.len(),
        got.len() - unique.len()
    );
    assert!(
        past,
        "the rows behind the corrupt ones were published ({handled_before_fix})"
    );
    assert_eq!(
        failed.iter().map(|r| r.id).collect::<Vec<_>>(),
        vec![11, 51],
        "both corrupt rows are listed"
    );
    for row in &failed {
        assert!(row.error.contains("corrupt"), "reason: {}", row.error);
        assert_eq!(row.address, "Placed");
        assert!(row.attempts >= 1 && row.failed_at > 0);
    }
    assert_eq!(stats.failed, 2);
    assert_eq!(pending_before_fix, 0, "set-aside rows are not pending");
    let expected_first: Vec<i64> = (0..total).filter(|n| *n != 10 && *n != 50).collect();
    assert_eq!(
        &got[..expected_first.len()],
        &expected_first[..],
        "the others in order"
    );
    assert_eq!(requeued, 2);
    assert!(all, "requeued rows were published after the fix");
    assert_eq!(lost, 0);
    assert_eq!(got.len(), unique.len(), "nothing published twice");
    assert!(outbox.failed(10).await.expect("failed rows").is_empty());
    relay.shutdown().await;
    manager.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_rows_are_set_aside_and_requeued_sqlite() {
    let dir = common::temp_dir("poison");
    poison(common::sqlite(&dir).await, Tables::default(), "sqlite").await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_rows_are_set_aside_and_requeued_postgres() {
    if let Some(pool) = common::postgres("poison").await {
        poison(pool, common::unique_tables().0, "postgres").await;
    }
}

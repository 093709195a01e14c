//! Events per second through the outbox (commit → handled) against plain
//! `send_event` after the commit, against the bare transaction without any event,
//! and against the outbox's transaction with no relay reading its table (the
//! writers' own ceiling), on SQLite and (with `EVENTING_PG_URL`) PostgreSQL, in one run.
//!
//! `flock /tmp/eventing-bench.lock cargo bench -p eventing-outbox --bench outbox`
//! Settings: `OUTBOX_BENCH_N` (events per round, 2000), `OUTBOX_BENCH_ROUNDS` (3),
//! `OUTBOX_BENCH_IN_FLIGHT` (transactions in flight, 8), `OUTBOX_BENCH_URL`
//! (provider, `memory://outbox-bench`).

use std::sync::Arc;
use std::time::Duration;

use eventing::{Context, EventListener, EventManager, ListenerResult, event, event_listener};
use eventing_outbox::{Backend, Outbox, RelayOptions, Tables};
use eventing_test::bench::{Counter, median, setting, throughput};
use serde::{Deserialize, Serialize};
use sqlx::Pool;

#[event(durable = true)]
#[derive(Serialize, Deserialize)]
struct Tick {
    n: u64,
}

#[event_listener(Tick)]
struct Hit {
    counter: Arc<Counter>,
}

impl EventListener<Tick> for Hit {
    async fn on(&self, _: Tick, _: &Context) -> ListenerResult {
        self.counter.hit();
        Ok(())
    }
}

/// One business transaction through the outbox: the business insert and
/// `outbox.send_event` in the same transaction, then the commit.
async fn outbox_transaction<DB: Backend>(pool: &Pool<DB>, insert: &str, outbox: &Outbox<DB>, n: u64)
where
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: sqlx::IntoArguments<'q, DB>,
    i64: sqlx::Type<DB> + for<'q> sqlx::Encode<'q, DB>,
{
    let mut tx = pool.begin().await.expect("begin");
    sqlx::query(insert)
        .bind(n as i64)
        .execute(&mut *tx)
        .await
        .expect("insert");
    outbox
        .send_event(&mut tx, &Tick { n })
        .await
        .expect("outbox");
    tx.commit().await.expect("commit");
}

async fn bench<DB: Backend>(pool: Pool<DB>, db: &str, run: &str)
where
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: sqlx::IntoArguments<'q, DB>,
    i64: sqlx::Type<DB> + for<'q> sqlx::Encode<'q, DB>,
    for<'c> &'c Pool<DB>: sqlx::Executor<'c, Database = DB>,
{
    let n: u64 = setting("OUTBOX_BENCH_N", 2_000);
    let rounds: usize = setting("OUTBOX_BENCH_ROUNDS", 3);
    let limit: usize = setting("OUTBOX_BENCH_IN_FLIGHT", 8);
    let url = std::env::var("OUTBOX_BENCH_URL").unwrap_or_else(|_| "memory://outbox-bench".into());
    let counter = Counter::new();
    let manager = EventManager::builder()
        .url(&url)
        .listener(Hit {
            counter: Arc::clone(&counter),
        })
        .only_bound_listeners()
        .build()
        .await
        .expect("manager");
    manager.start().await.expect("start");
    let tables =
        Tables::new(format!("bench_outbox_{run}"), format!("bench_inbox_{run}")).expect("names");
    let outbox = Outbox::with_tables(manager.clone(), pool.clone(), tables.clone());
    outbox.migrate().await.expect("migrate");
    let biz = format!("bench_biz_{run}");
    sqlx::query(&format!("CREATE TABLE {biz} (n BIGINT NOT NULL)"))
        .execute(&pool)
        .await
        .expect("create");
    let insert = format!("INSERT INTO {biz} (n) VALUES ($1)");
    let mut options = RelayOptions::default();
    options.retention = Some(Duration::ZERO);
    options.cleanup_interval = Duration::from_secs(1);
    let relay = outbox.relay(options);
    // The same writes into a second outbox table that no relay reads: the writers'
    // own ceiling.
    let unrelayed = Tables::new(
        format!("bench_outbox_{run}_w"),
        format!("bench_inbox_{run}_w"),
    )
    .expect("names");
    let write_only = Outbox::with_tables(manager.clone(), pool.clone(), unrelayed.clone());
    write_only.migrate().await.expect("migrate");
    let patience = Duration::from_secs(120);
    let (mut through_outbox, mut plain, mut bare, mut writes) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..rounds {
        let db_only = Counter::new();
        bare.push(
            throughput(&db_only, n, limit, patience, |i| {
                let (pool, insert, db_only) = (pool.clone(), insert.clone(), Arc::clone(&db_only));
                async move {
                    let mut tx = pool.begin().await.expect("begin");
                    sqlx::query(&insert)
                        .bind(i as i64)
                        .execute(&mut *tx)
                        .await
                        .expect("insert");
                    tx.commit().await.expect("commit");
                    db_only.hit();
                }
            })
            .await,
        );
        plain.push(
            throughput(&counter, n, limit, patience, |i| {
                let (pool, insert, manager) = (pool.clone(), insert.clone(), manager.clone());
                async move {
                    let mut tx = pool.begin().await.expect("begin");
                    sqlx::query(&insert)
                        .bind(i as i64)
                        .execute(&mut *tx)
                        .await
                        .expect("insert");
                    tx.commit().await.expect("commit");
                    manager.send_event(&Tick { n: i }).await.expect("send");
                }
            })
            .await,
        );
        let written = Counter::new();
        writes.push(
            throughput(&written, n, limit, patience, |i| {
                let (pool, insert, outbox, written) = (
                    pool.clone(),
                    insert.clone(),
                    write_only.clone(),
                    Arc::clone(&written),
                );
                async move {
                    outbox_transaction(&pool, &insert, &outbox, i).await;
                    written.hit();
                }
            })
            .await,
        );
        through_outbox.push(
            throughput(&counter, n, limit, patience, |i| {
                let (pool, insert, outbox) = (pool.clone(), insert.clone(), outbox.clone());
                async move { outbox_transaction(&pool, &insert, &outbox, i).await }
            })
            .await,
        );
    }
    let (o, p, b, w) = (
        median(&through_outbox),
        median(&plain),
        median(&bare),
        median(&writes),
    );
    println!(
        "outbox {db}+{}: outbox {o:.0} ev/s, plain send after commit {p:.0} ev/s, transaction alone {b:.0} tx/s, \
         outbox transaction without relay {w:.0} tx/s; outbox/plain {:.2} ({n} events x {rounds} rounds, {limit} in flight)",
        url.split("://").next().unwrap_or("?"),
        o / p
    );
    relay.shutdown().await;
    manager.shutdown().await.expect("shutdown");
    for table in [
        biz.as_str(),
        tables.outbox(),
        tables.inbox(),
        unrelayed.outbox(),
        unrelayed.inbox(),
    ] {
        let _ = sqlx::query(&format!("DROP TABLE {table}"))
            .execute(&pool)
            .await;
    }
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let run = eventing::header::new_message_id().replace('-', "")[..10].to_string();
        let dir = std::env::temp_dir().join(format!("eventing-outbox-bench-{run}"));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let options = sqlx::sqlite::SqliteConnectOptions::new()
            .filename(dir.join("bench.db"))
            .create_if_missing(true)
            .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal)
            .synchronous(sqlx::sqlite::SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(30));
        let pool = sqlx::sqlite::SqlitePoolOptions::new()
            .max_connections(8)
            .connect_with(options)
            .await
            .expect("sqlite");
        bench(pool, "sqlite", &run).await;
        let _ = std::fs::remove_dir_all(&dir);
        match std::env::var("EVENTING_PG_URL") {
            Ok(url) => {
                let pool = sqlx::postgres::PgPoolOptions::new()
                    .max_connections(12)
                    .connect(&url)
                    .await
                    .expect("postgres");
                bench(pool, "postgres", &run).await;
            }
            Err(_) => println!("outbox postgres: EVENTING_PG_URL not set; skipped"),
        }
    });
}

//! Crash between commit and publish: a child process (this test binary again)
//! commits business rows with their events through the outbox while its relay
//! publishes them to RabbitMQ, and is SIGKILLed at random points; a new relay in this
//! process finishes. Every committed row's event must be handled (`lost=0`), no
//! rolled-back transaction's event ever (`phantom=0`), and the inbox keeps each side
//! effect single (`duplicated_effects=0`). On SQLite and on PostgreSQL; needs
//! `EVENTING_AMQP_URL` (scripts/test.sh), PostgreSQL also `EVENTING_PG_URL`.

mod common;

use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{Handler, eventually};
use eventing::{Context, EventListener, EventManager, ListenerResult, event, event_listener};
use eventing_outbox::{Backend, Inbox, Outbox, RelayOptions, Tables};
use serde::{Deserialize, Serialize};
use sqlx::Pool;

use eventing_amqp as _;

const ROWS: i64 = 2_000;
const CHILD: &str = "EVENTING_OUTBOX_CRASH_CHILD";

#[event(name = "outbox_crash.{run}.Deposit", durable = true)]
#[derive(Serialize, Deserialize)]
struct Deposit {
    n: i64,
}

#[event_listener(Deposit, per_process = true)]
struct Ledger {
    handler: Handler,
}

impl EventListener<Deposit> for Ledger {
    async fn on(&self, event: Deposit, ctx: &Context) -> ListenerResult {
        (self.handler)(event.n, ctx.clone()).await
    }
}

/// The same ledger as a competing listener: its queue is durable, so it outlives a
/// broker restart (a per-process queue is exclusive and goes with the connection).
#[event_listener(Deposit, per_process = false)]
struct Books {
    handler: Handler,
}

impl EventListener<Deposit> for Books {
    async fn on(&self, event: Deposit, ctx: &Context) -> ListenerResult {
        (self.handler)(event.n, ctx.clone()).await
    }
}

/// What the child needs, passed in environment variables.
struct ChildConfig {
    db: String,
    url: String,
    run: String,
    amqp: String,
}

fn tables(run: &str) -> Tables {
    Tables::new(format!("crash_outbox_{run}"), format!("crash_inbox_{run}")).expect("names")
}

/// The child: commits rows and events until `ROWS` rows exist, while its relay runs.
#[test]
fn crash_child() {
    let Ok(db) = std::env::var(CHILD) else {
        return; // run as a normal test: nothing to do
    };
    let config = ChildConfig {
        db,
        url: std::env::var("EVENTING_OUTBOX_CRASH_URL").expect("url"),
        run: std::env::var("EVENTING_OUTBOX_CRASH_RUN").expect("run"),
        amqp: std::env::var("EVENTING_AMQP_URL").expect("amqp"),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async move {
        if config.db == "sqlite" {
            let pool = common::sqlite_at(std::path::Path::new(&config.url)).await;
            child_main(pool, &config).await;
        } else {
            let pool = sqlx::PgPool::connect(&config.url).await.expect("pg");
            child_main(pool, &config).await;
        }
    });
}

async fn child_main<DB: Backend>(pool: Pool<DB>, config: &ChildConfig)
where
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: sqlx::IntoArguments<'q, DB>,
    i64: sqlx::Type<DB> + for<'q> sqlx::Encode<'q, DB> + for<'r> sqlx::Decode<'r, DB>,
    for<'c> &'c Pool<DB>: sqlx::Executor<'c, Database = DB>,
    (i64,): for<'r> sqlx::FromRow<'r, DB::Row>,
{
    let manager = EventManager::builder()
        .url(&config.amqp)
        .var("run", &config.run)
        .only_bound_listeners()
        .build()
        .await
        .expect("child manager");
    let outbox = Outbox::with_tables(manager, pool.clone(), tables(&config.run));
    let mut options = RelayOptions::default();
    options.poll_interval = Duration::from_millis(50);
    options.lease = Duration::from_secs(1);
    options.batch = 50;
    let _relay = outbox.relay(options);
    let biz = format!("crash_biz_{}", config.run);
    let insert = format!("INSERT INTO {biz} (n) VALUES ($1)");
    loop {
        let (count, max): (i64, i64) = {
            let (c,): (i64,) = sqlx::query_as(&format!("SELECT count(*) FROM {biz}"))
                .fetch_one(&pool)
                .await
                .expect("count");
            let (m,): (i64,) = sqlx::query_as(&format!("SELECT COALESCE(MAX(n), -1) FROM {biz}"))
                .fetch_one(&pool)
                .await
                .expect("max");
            (c, m)
        };
        if count >= ROWS {
            break;
        }
        let mut tx = pool.begin().await.expect("begin");
        if fastrand::u8(0..10) == 0 {
            // A transaction that rolls back: its (negative) rows and events must never
            // be seen.
            let n = -i64::from(fastrand::u32(1..u32::MAX));
            sqlx::query(&insert)
                .bind(n)
                .execute(&mut *tx)
                .await
                .expect("insert");
            outbox
                .send_event(&mut tx, &Deposit { n })
                .await
                .expect("send");
            tx.rollback().await.expect("rollback");
            continue;
        }
        let take = fastrand::i64(1..=3).min(ROWS - count);
        for n in (max + 1)..=(max + take) {
            sqlx::query(&insert)
                .bind(n)
                .execute(&mut *tx)
                .await
                .expect("insert");
            outbox
                .send_event(&mut tx, &Deposit { n })
                .await
                .expect("send");
        }
        tx.commit().await.expect("commit");
    }
    // Done writing: let the relay finish unless killed first.
    tokio::time::sleep(Duration::from_secs(2)).await;
}

async fn crash<DB: Backend>(pool: Pool<DB>, db: &str, url: &str, amqp: &str)
where
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: sqlx::IntoArguments<'q, DB>,
    i64: sqlx::Type<DB> + for<'q> sqlx::Encode<'q, DB> + for<'r> sqlx::Decode<'r, DB>,
    for<'c> &'c Pool<DB>: sqlx::Executor<'c, Database = DB>,
    (i64,): for<'r> sqlx::FromRow<'r, DB::Row>,
{
    let books = RunTables::create(&pool).await;
    let (run, tables) = (books.run.clone(), books.tables.clone());
    let (biz, deliveries, handler) = (
        books.biz.clone(),
        books.deliveries.clone(),
        books.handler.clone(),
    );
    let manager = EventManager::builder()
        .url(amqp)
        .var("run", &run)
        .listener(Ledger { handler })
        .only_bound_listeners()
        .build()
        .await
        .expect("manager");
    manager
        .start()
        .await
        .expect("start (declares the exchange and queue)");

    // Kill the child at random points until it has committed every row.
    let started = Instant::now();
    let exe = std::env::current_exe().expect("current_exe");
    let mut kills = 0;
    let count = async || books.count("count(*)", &biz).await;
    for _round in 0..80 {
        if count().await >= ROWS || started.elapsed() > Duration::from_secs(150) {
            break;
        }
        let mut child = std::process::Command::new(&exe)
            .args([
                "crash_child",
                "--exact",
                "--nocapture",
                "--test-threads",
                "1",
            ])
            .env(CHILD, db)
            .env("EVENTING_OUTBOX_CRASH_URL", url)
            .env("EVENTING_OUTBOX_CRASH_RUN", &run)
            .env("EVENTING_AMQP_URL", amqp)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("spawn the child");
        let life = Duration::from_millis(fastrand::u64(150..900));
        let deadline = Instant::now() + life;
        let mut exited = false;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                exited = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        if !exited {
            let _ = child.kill(); // SIGKILL
            kills += 1;
        }
        let _ = child.wait();
    }
    let committed_rows = count().await;

    // A new relay finishes the job.
    let outbox = Outbox::with_tables(manager.clone(), pool.clone(), tables.clone());
    let mut options = RelayOptions::default();
    options.poll_interval = Duration::from_millis(50);
    let relay = outbox.relay(options);
    let distinct_handled = async || books.count("count(DISTINCT n)", &books.handled).await;
    let finished = eventually(Duration::from_secs(60), async || {
        outbox.pending().await.unwrap_or(1) == 0 && distinct_handled().await >= committed_rows
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await; // late duplicates show up

    let ns = async |table: &str| -> Vec<i64> {
        let rows: Vec<(i64,)> = sqlx::query_as(&format!("SELECT n FROM {table}"))
            .fetch_all(&pool)
            .await
            .expect("rows");
        rows.into_iter().map(|(n,)| n).collect()
    };
    let committed: BTreeSet<i64> = ns(&biz).await.into_iter().collect();
    let effects = ns(&books.handled).await;
    let seen: HashSet<i64> = effects.iter().copied().collect();
    let lost = committed.iter().filter(|n| !seen.contains(n)).count();
    let phantom = seen.iter().filter(|n| !committed.contains(n)).count();
    let duplicated_effects = effects.len() - seen.len();
    let deliveries = deliveries.load(Ordering::Relaxed);
    println!(
        "fault outbox_crash {db}+amqp: committed={} kills={kills} deliveries={deliveries} redelivered={} \
         relay_published={} phantom={phantom} lost={lost} duplicated_effects={duplicated_effects} ({:.1} s)",
        committed.len(),
        deliveries.saturating_sub(seen.len() as u64),
        relay.stats().published,
        started.elapsed().as_secs_f64()
    );
    relay.shutdown().await;
    manager.shutdown().await.expect("shutdown");
    assert_eq!(
        committed.len() as i64,
        ROWS,
        "the child committed every row in 80 rounds"
    );
    assert!(kills > 0, "the child was killed at least once");
    assert!(finished, "the new relay finished");
    assert_eq!(lost, 0);
    assert_eq!(
        phantom, 0,
        "a rolled-back transaction's event was published"
    );
    assert_eq!(duplicated_effects, 0);
    books.drop_tables().await;
}

/// One test run's tables (business rows `biz`, side effects `handled`, the outbox and
/// inbox under run-specific names) and the listener's handler recording into them.
struct RunTables<DB: Backend> {
    pool: Pool<DB>,
    run: String,
    tables: Tables,
    biz: String,
    handled: String,
    deliveries: Arc<AtomicU64>,
    handler: Handler,
}

impl<DB: Backend> RunTables<DB>
where
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: sqlx::IntoArguments<'q, DB>,
    i64: sqlx::Type<DB> + for<'q> sqlx::Encode<'q, DB> + for<'r> sqlx::Decode<'r, DB>,
    for<'c> &'c Pool<DB>: sqlx::Executor<'c, Database = DB>,
    (i64,): for<'r> sqlx::FromRow<'r, DB::Row>,
{
    async fn create(pool: &Pool<DB>) -> Self {
        let run = common::uuid_short();
        let tables = tables(&run);
        let (biz, handled) = (format!("crash_biz_{run}"), format!("crash_handled_{run}"));
        for table in [&biz, &handled] {
            sqlx::query(&format!("CREATE TABLE {table} (n BIGINT NOT NULL)"))
                .execute(pool)
                .await
                .expect("create");
        }
        let inbox = Inbox::with_tables(pool.clone(), tables.clone());
        inbox.migrate().await.expect("migrate");
        let deliveries = Arc::new(AtomicU64::new(0));
        let handler = recording_handler(&inbox, &handled, &deliveries);
        Self {
            pool: pool.clone(),
            run,
            tables,
            biz,
            handled,
            deliveries,
            handler,
        }
    }

    /// `SELECT <what> FROM <table>` as a number.
    async fn count(&self, what: &str, table: &str) -> i64 {
        let (c,): (i64,) = sqlx::query_as(&format!("SELECT {what} FROM {table}"))
            .fetch_one(&self.pool)
            .await
            .expect("count");
        c
    }

    async fn drop_tables(&self) {
        for table in [
            self.biz.as_str(),
            self.handled.as_str(),
            self.tables.outbox(),
            self.tables.inbox(),
        ] {
            let _ = sqlx::query(&format!("DROP TABLE {table}"))
                .execute(&self.pool)
                .await;
        }
    }
}

/// The listeners' side effect: a row in `handled`, in one transaction with the inbox
/// row, so a redelivered event changes nothing; every call counted in `deliveries`.
fn recording_handler<DB: Backend>(
    inbox: &Inbox<DB>,
    handled: &str,
    deliveries: &Arc<AtomicU64>,
) -> Handler
where
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: sqlx::IntoArguments<'q, DB>,
    i64: sqlx::Type<DB> + for<'q> sqlx::Encode<'q, DB>,
{
    let (inbox, deliveries) = (inbox.clone(), Arc::clone(deliveries));
    let insert = format!("INSERT INTO {handled} (n) VALUES ($1)");
    Arc::new(move |n, ctx: Context| {
        let (inbox, insert) = (inbox.clone(), insert.clone());
        deliveries.fetch_add(1, Ordering::Relaxed);
        Box::pin(async move {
            let Some(mut tx) = inbox.begin(&ctx).await? else {
                return Ok(());
            };
            sqlx::query(&insert).bind(n).execute(&mut *tx).await?;
            tx.commit().await?;
            Ok(())
        })
    })
}

fn amqp_url(test: &str) -> Option<String> {
    let url = std::env::var("EVENTING_AMQP_URL").ok();
    if url.is_none() {
        eprintln!("{test}: EVENTING_AMQP_URL is not set (scripts/broker.sh); skipping");
    }
    url
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_between_commit_and_publish_sqlite_amqp() {
    if std::env::var(CHILD).is_ok() {
        return;
    }
    let Some(amqp) = amqp_url("crash_sqlite") else {
        return;
    };
    let _one = RESTARTS.lock().await;
    let dir = common::temp_dir("crash");
    let path = dir.join("crash.db");
    let pool = common::sqlite_at(&path).await;
    crash(pool, "sqlite", &path.to_string_lossy(), &amqp).await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_between_commit_and_publish_postgres_amqp() {
    if std::env::var(CHILD).is_ok() {
        return;
    }
    let Some(amqp) = amqp_url("crash_postgres") else {
        return;
    };
    let Some(pool) = common::postgres("crash_postgres").await else {
        return;
    };
    let _one = RESTARTS.lock().await;
    let url = std::env::var("EVENTING_PG_URL").unwrap_or_default();
    crash(pool, "postgres", &url, &amqp).await;
}

// ---------------------------------------------------------------------------------
// The broker restarts while the relay runs: rows committed meanwhile wait in the
// outbox and are published once it is back.

async fn broker_restart<DB: Backend>(pool: Pool<DB>, db: &str, amqp: &str)
where
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: sqlx::IntoArguments<'q, DB>,
    i64: sqlx::Type<DB> + for<'q> sqlx::Encode<'q, DB> + for<'r> sqlx::Decode<'r, DB>,
    for<'c> &'c Pool<DB>: sqlx::Executor<'c, Database = DB>,
    (i64,): for<'r> sqlx::FromRow<'r, DB::Row>,
{
    let host = url::Url::parse(amqp)
        .ok()
        .and_then(|u| u.host_str().map(str::to_owned))
        .unwrap_or_default();
    let books = RunTables::create(&pool).await;
    let (run, tables) = (books.run.clone(), books.tables.clone());
    let (biz, deliveries, handler) = (
        books.biz.clone(),
        books.deliveries.clone(),
        books.handler.clone(),
    );
    let manager = EventManager::builder()
        .url(amqp)
        .var("run", &run)
        .listener(Books { handler })
        .only_bound_listeners()
        .send_timeout(Duration::from_secs(2))
        .reconnect_backoff(Duration::from_millis(100), Duration::from_secs(1))
        .build()
        .await
        .expect("manager");
    manager.start().await.expect("start");
    let outbox = Outbox::with_tables(manager.clone(), pool.clone(), tables.clone());
    let mut options = RelayOptions::default();
    options.poll_interval = Duration::from_millis(50);
    options.backoff =
        eventing::backoff::Backoff::new(Duration::from_millis(50), Duration::from_millis(500));
    let relay = outbox.relay(options);

    // Commit ROWS rows with their events over ~8 s; restart the broker a quarter in.
    let started = Instant::now();
    let insert = format!("INSERT INTO {biz} (n) VALUES ($1)");
    let mut restart = None;
    let mut n = 0i64;
    while n < ROWS {
        if restart.is_none() && n >= ROWS / 4 {
            let host = host.clone();
            restart = Some(tokio::spawn(async move {
                eventing_tests::rabbitmq::restart_rabbitmq_app(
                    &host,
                    &[5672],
                    Duration::from_secs(90),
                )
                .await
            }));
        }
        let mut tx = pool.begin().await.expect("begin");
        for _ in 0..fastrand::i64(1..=3).min(ROWS - n) {
            sqlx::query(&insert)
                .bind(n)
                .execute(&mut *tx)
                .await
                .expect("insert");
            outbox
                .send_event(&mut tx, &Deposit { n })
                .await
                .expect("send (writes the row, whatever the broker)");
            n += 1;
        }
        tx.commit().await.expect("commit");
        tokio::time::sleep(Duration::from_millis(8)).await;
    }
    let restarted = match restart {
        Some(task) => task.await.expect("restart task"),
        None => Ok(None),
    };
    let took = match restarted {
        Ok(Some(took)) => took,
        Ok(None) => {
            eprintln!(
                "outbox_broker_restart {db}: cannot restart the broker at {host} (not local or no rabbitmqctl); skipping"
            );
            relay.shutdown().await;
            let _ = manager.shutdown().await;
            return;
        }
        Err(error) => panic!("restarting RabbitMQ failed: {error}"),
    };
    let distinct_handled = async || books.count("count(DISTINCT n)", &books.handled).await;
    let finished = eventually(Duration::from_secs(90), async || {
        outbox.pending().await.unwrap_or(1) == 0 && distinct_handled().await >= ROWS
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await; // late duplicates show up
    let effects = books.count("count(*)", &books.handled).await;
    let seen = distinct_handled().await;
    let lost = ROWS - seen;
    let duplicated_effects = effects - seen;
    let stats = relay.stats();
    println!(
        "fault outbox_broker_restart {db}+amqp: committed={ROWS} restart={:.1}s relay_published={} relay_failures={} \
         deliveries={} lost={lost} duplicated_effects={duplicated_effects} ({:.1} s)",
        took.as_secs_f64(),
        stats.published,
        stats.failures,
        deliveries.load(Ordering::Relaxed),
        started.elapsed().as_secs_f64()
    );
    relay.shutdown().await;
    manager.shutdown().await.expect("shutdown");
    assert!(
        finished,
        "every committed row's event was handled after the restart"
    );
    assert_eq!(lost, 0);
    assert_eq!(duplicated_effects, 0);
    assert_eq!(outbox.failed(1).await.expect("failed").len(), 0);
    books.drop_tables().await;
}

/// The restart cases restart the one RabbitMQ, and the crash cases' per-process
/// queues would not survive that: the tests of this file run one at a time.
static RESTARTS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_restart_while_the_relay_runs_sqlite_amqp() {
    if std::env::var(CHILD).is_ok() {
        return;
    }
    let Some(amqp) = amqp_url("restart_sqlite") else {
        return;
    };
    let _one = RESTARTS.lock().await;
    let dir = common::temp_dir("restart");
    let pool = common::sqlite(&dir).await;
    broker_restart(pool, "sqlite", &amqp).await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_restart_while_the_relay_runs_postgres_amqp() {
    if std::env::var(CHILD).is_ok() {
        return;
    }
    let Some(amqp) = amqp_url("restart_postgres") else {
        return;
    };
    let Some(pool) = common::postgres("restart_postgres").await else {
        return;
    };
    let _one = RESTARTS.lock().await;
    broker_restart(pool, "postgres", &amqp).await;
}

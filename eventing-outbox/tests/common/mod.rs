//! Shared pieces of the outbox tests: databases, events and listeners.
#![allow(dead_code, unreachable_pub)]

use std::sync::Arc;
use std::time::Duration;

use eventing::{BoxFuture, Context, ListenerResult};
use eventing_outbox::Tables;
use sqlx::postgres::PgPoolOptions;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{PgPool, SqlitePool};

/// A fresh SQLite file database in a temp dir (WAL, 10 s busy timeout).
pub async fn sqlite(dir: &std::path::Path) -> SqlitePool {
    sqlite_at(&dir.join("outbox.db")).await
}

pub async fn sqlite_at(path: &std::path::Path) -> SqlitePool {
    let options = SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal)
        .busy_timeout(Duration::from_secs(10));
    SqlitePoolOptions::new()
        .max_connections(8)
        .connect_with(options)
        .await
        .expect("open sqlite")
}

/// The PostgreSQL of scripts/postgres.sh, or `None` (the test prints that it skips).
pub async fn postgres(test: &str) -> Option<PgPool> {
    let Ok(url) = std::env::var("EVENTING_PG_URL") else {
        eprintln!(
            "{test}: EVENTING_PG_URL is not set (scripts/postgres.sh start); skipping PostgreSQL"
        );
        return None;
    };
    Some(
        PgPoolOptions::new()
            .max_connections(8)
            .connect(&url)
            .await
            .expect("connect to EVENTING_PG_URL"),
    )
}

/// Table names of their own for one test run (PostgreSQL tests share a database).
pub fn unique_tables() -> (Tables, String) {
    let run = uuid_short();
    let tables = Tables::new(format!("outbox_{run}"), format!("inbox_{run}")).expect("valid names");
    (tables, run)
}

pub fn uuid_short() -> String {
    eventing::header::new_message_id().replace('-', "")[..12].to_string()
}

pub fn temp_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("eventing-outbox-{name}-{}", uuid_short()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

/// A listener body held as a closure, so one registered listener type serves
/// tests with different side effects.
pub type Handler = Arc<dyn Fn(i64, Context) -> BoxFuture<'static, ListenerResult> + Send + Sync>;

/// Waits up to `limit` for `check` to hold.
pub async fn eventually(limit: Duration, mut check: impl AsyncFnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

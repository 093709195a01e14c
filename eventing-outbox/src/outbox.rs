//! The outbox: events written in the sender's transaction.

use std::sync::Arc;
use std::time::Duration;

use eventing::{Event, EventManager};
use sqlx::{Pool, Transaction};
use tokio::sync::Notify;

use crate::backend::{Backend, FailedRow, NewRow, now_ms};
use crate::error::Result;
use crate::relay::{Relay, RelayOptions};
use crate::tables::Tables;

/// Writes events into a table in the caller's transaction; a [`Relay`] publishes the
/// committed ones. Cheap to clone.
///
/// ```
/// use eventing::{event, EventManager};
/// use eventing_outbox::{Outbox, RelayOptions};
/// use serde::{Deserialize, Serialize};
///
/// #[event]
/// #[derive(Serialize, Deserialize)]
/// struct AccountOpened { id: i64 }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let manager = EventManager::builder().url("memory://outbox-doc").build().await?;
/// let pool = sqlx::SqlitePool::connect("sqlite::memory:").await?;
/// let outbox = Outbox::new(manager.clone(), pool.clone());
/// outbox.migrate().await?;
/// sqlx::query("CREATE TABLE accounts (id INTEGER PRIMARY KEY)").execute(&pool).await?;
///
/// let mut tx = pool.begin().await?;
/// sqlx::query("INSERT INTO accounts (id) VALUES (1)").execute(&mut *tx).await?;
/// outbox.send_event(&mut tx, &AccountOpened { id: 1 }).await?;
/// tx.commit().await?; // the event exists for the relay only from here on
///
/// assert_eq!(outbox.publish_pending().await?, 1);
/// # Ok(()) }
/// ```
pub struct Outbox<DB: Backend> {
    pub(crate) inner: Arc<Shared<DB>>,
}

impl<DB: Backend> Clone for Outbox<DB> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
        }
    }
}

pub(crate) struct Shared<DB: Backend> {
    pub(crate) manager: EventManager,
    pub(crate) pool: Pool<DB>,
    pub(crate) tables: Tables,
    /// Wakes this process's relays when an event is written (SQLite).
    pub(crate) wake: Notify,
}

impl<DB: Backend> Outbox<DB> {
    /// An outbox on `pool` that prepares events with `manager` (its send pipelines,
    /// codec and addresses) and publishes them through its provider. Default table
    /// names.
    pub fn new(manager: EventManager, pool: Pool<DB>) -> Self {
        Self::with_tables(manager, pool, Tables::default())
    }

    /// Like [`new`](Self::new) with custom table names.
    pub fn with_tables(manager: EventManager, pool: Pool<DB>, tables: Tables) -> Self {
        Self {
            inner: Arc::new(Shared {
                manager,
                pool,
                tables,
                wake: Notify::new(),
            }),
        }
    }

    /// Creates or updates the outbox and inbox tables (the shipped migrations, with
    /// this outbox's table names).
    pub async fn migrate(&self) -> Result<()> {
        let migrator = self.inner.tables.migrator(&DB::template());
        DB::migrate(&self.inner.pool, &migrator).await
    }

    /// The table names.
    pub fn tables(&self) -> &Tables {
        &self.inner.tables
    }

    /// The pool.
    pub fn pool(&self) -> &Pool<DB> {
        &self.inner.pool
    }

    /// The manager.
    pub fn manager(&self) -> &EventManager {
        &self.inner.manager
    }

    /// Runs the send pipelines on `event` and writes the finished envelope into the
    /// outbox table inside `tx`. Nothing is published unless `tx` commits; after the
    /// commit a relay publishes it. Returns the message id.
    pub async fn send_event<E: Event>(
        &self,
        tx: &mut Transaction<'_, DB>,
        event: &E,
    ) -> Result<String> {
        let prepared = self.inner.manager.prepare_event(event)?;
        let headers: Vec<(&str, &str)> = prepared.envelope.headers.iter().collect();
        let message_id = prepared.envelope.message_id().to_owned();
        let row = NewRow {
            message_id: message_id.clone(),
            address: prepared.address.to_string(),
            durable: prepared.durable,
            // Serializing `(&str, &str)` pairs cannot fail.
            headers: serde_json::to_string(&headers).unwrap_or_else(|_| "[]".into()),
            body: prepared.envelope.body.to_vec(),
            created_at: now_ms(),
        };
        DB::insert(&mut **tx, &self.inner.tables, &row).await?;
        if DB::LOCAL_WAKE {
            // The relay's claim waits on SQLite's write lock, which `tx` holds until it
            // commits or rolls back.
            self.inner.wake.notify_one();
        }
        Ok(message_id)
    }

    /// Starts a relay task that publishes committed rows until
    /// [`Relay::shutdown`].
    pub fn relay(&self, options: RelayOptions) -> Relay {
        Relay::spawn(self.clone(), options)
    }

    /// Publishes every committed, unsent row once, in order, and returns how many
    /// were published (tests, tools, and a relay-less `cron` style). Stops at the
    /// first failed publish and returns its error.
    pub async fn publish_pending(&self) -> Result<usize> {
        let options = RelayOptions::default();
        let spec = options.spec();
        let mut total = 0;
        loop {
            let pass = crate::relay::pass(self, &spec).await?;
            total += pass.published;
            if let Some(error) = pass.error {
                return Err(error);
            }
            if pass.claimed == 0 {
                return Ok(total);
            }
        }
    }

    /// Rows written and committed but not yet published (rows set aside as failed
    /// not counted).
    pub async fn pending(&self) -> Result<i64> {
        DB::pending(&self.inner.pool, &self.inner.tables).await
    }

    /// Up to `limit` rows the relay set aside because they can never be published (a
    /// row whose stored headers are not readable, a message over the broker's size
    /// limit), oldest first, with the reason. They are the outbox's dead letters: the
    /// relay skips them and publishes the rows after them; nothing deletes them.
    pub async fn failed(&self, limit: usize) -> Result<Vec<FailedRow>> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        DB::failed_rows(&self.inner.pool, &self.inner.tables, limit).await
    }

    /// Puts every failed row back in line (after the cause is fixed, e.g. a larger
    /// broker limit); the relay publishes them in id order with the rest. Returns
    /// how many.
    pub async fn requeue_failed(&self) -> Result<u64> {
        let moved = DB::requeue_failed(&self.inner.pool, &self.inner.tables).await?;
        self.inner.wake.notify_one();
        Ok(moved)
    }

    /// Deletes rows sent more than `older_than` ago; returns how many.
    pub async fn delete_sent(&self, older_than: Duration) -> Result<u64> {
        let before = now_ms() - older_than.as_millis() as i64;
        DB::delete_sent(&self.inner.pool, &self.inner.tables, before).await
    }
}

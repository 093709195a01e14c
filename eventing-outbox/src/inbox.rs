//! Idempotent consumers: a message a listener handled before is acknowledged
//! without running its side effects again.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::time::Duration;

use eventing::{Context, ListenerResult};
use parking_lot::Mutex;
use sqlx::{Pool, Transaction};

use crate::backend::{Backend, now_ms};
use crate::error::{Error, Result};
use crate::tables::Tables;

/// The database inbox: records `(listener, message id)` in the same transaction as
/// the listener's own writes, so "handled" and "recorded" commit together.
///
/// [`begin`](Inbox::begin) opens the transaction and records the message; it
/// returns `None` when this listener already committed this message (acknowledge
/// and do nothing). Do the work on the transaction and commit it; an error before
/// the commit rolls both back and the delivery is retried.
///
/// ```
/// use eventing::{event, event_listener, Context, EventListener, ListenerResult};
/// use eventing_outbox::Inbox;
/// use serde::{Deserialize, Serialize};
///
/// #[event]
/// #[derive(Serialize, Deserialize)]
/// struct PaymentReceived { order: i64, cents: i64 }
///
/// #[event_listener(PaymentReceived)]
/// struct Ledger { inbox: Inbox<sqlx::Sqlite> }
///
/// impl EventListener<PaymentReceived> for Ledger {
///     async fn on(&self, payment: PaymentReceived, ctx: &Context) -> ListenerResult {
///         let Some(mut tx) = self.inbox.begin(ctx).await? else {
///             return Ok(()); // seen before: already booked
///         };
///         sqlx::query("INSERT INTO ledger (order_id, cents) VALUES (?, ?)")
///             .bind(payment.order)
///             .bind(payment.cents)
///             .execute(&mut *tx)
///             .await?;
///         tx.commit().await?;
///         Ok(())
///     }
/// }
/// ```
pub struct Inbox<DB: Backend> {
    pool: Pool<DB>,
    tables: Tables,
}

impl<DB: Backend> Clone for Inbox<DB> {
    fn clone(&self) -> Self {
        Self {
            pool: self.pool.clone(),
            tables: self.tables.clone(),
        }
    }
}

impl<DB: Backend> std::fmt::Debug for Inbox<DB> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inbox")
            .field("database", &DB::DATABASE)
            .field("table", &self.tables.inbox())
            .finish()
    }
}

impl<DB: Backend> Inbox<DB> {
    /// An inbox on `pool` with the default table names (create them with
    /// [`Outbox::migrate`](crate::Outbox::migrate) or [`migrate`](Self::migrate)).
    pub fn new(pool: Pool<DB>) -> Self {
        Self::with_tables(pool, Tables::default())
    }

    /// An inbox with custom table names.
    pub fn with_tables(pool: Pool<DB>, tables: Tables) -> Self {
        Self { pool, tables }
    }

    /// Creates or updates the tables (the same migrations as the outbox's).
    pub async fn migrate(&self) -> Result<()> {
        DB::migrate(&self.pool, &self.tables.migrator(&DB::template())).await
    }

    /// Opens a transaction and records that the listener of `ctx` handles its
    /// message; `None` if it already did (the record is committed).
    pub async fn begin(&self, ctx: &Context) -> Result<Option<Transaction<'static, DB>>> {
        self.begin_for(ctx.listener().name(), ctx.message_id())
            .await
    }

    /// [`begin`](Self::begin) for an explicit listener name and message id.
    pub async fn begin_for(
        &self,
        listener: &str,
        message_id: &str,
    ) -> Result<Option<Transaction<'static, DB>>> {
        if message_id.is_empty() {
            return Err(Error::MissingMessageId);
        }
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(Error::db("opening the inbox transaction"))?;
        if DB::inbox_insert(&mut *tx, &self.tables, listener, message_id).await? {
            Ok(Some(tx))
        } else {
            // Dropping `tx` rolls the empty transaction back.
            Ok(None)
        }
    }

    /// Deletes records older than `older_than`; returns how many. A message
    /// redelivered after its record expired is handled again, so keep records longer
    /// than the broker can redeliver.
    pub async fn expire(&self, older_than: Duration) -> Result<u64> {
        let before = now_ms() - older_than.as_millis() as i64;
        DB::inbox_delete(&self.pool, &self.tables, before).await
    }
}

/// The in-memory inbox for services without a database: remembers the last
/// `window` handled `(listener, message id)` pairs. It protects against redeliveries
/// within the window and within this process only.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let inbox = eventing_outbox::MemoryInbox::new(10_000);
/// let mut effects = 0;
/// for _ in 0..2 {
///     inbox.run_for("billing", "message-1", async { effects += 1; Ok(()) }).await.unwrap();
/// }
/// assert_eq!(effects, 1);
/// # }
/// ```
#[derive(Debug)]
pub struct MemoryInbox {
    window: usize,
    state: Mutex<Window>,
}

#[derive(Debug, Default)]
struct Window {
    /// `true` once handled; `false` while a call runs.
    seen: HashMap<(String, String), bool>,
    order: VecDeque<(String, String)>,
}

impl MemoryInbox {
    /// Remembers up to `window` handled messages (at least 1).
    pub fn new(window: usize) -> Self {
        Self {
            window: window.max(1),
            state: Mutex::new(Window::default()),
        }
    }

    /// Runs `work` unless the listener of `ctx` already handled this message. A
    /// duplicate arriving while the first call still runs fails with
    /// [`Error::InProgress`] (so it is retried, not acknowledged); a failed call is
    /// forgotten, so the retry runs.
    pub async fn run<F>(&self, ctx: &Context, work: F) -> ListenerResult
    where
        F: Future<Output = ListenerResult>,
    {
        self.run_for(ctx.listener().name(), ctx.message_id(), work)
            .await
    }

    /// [`run`](Self::run) for an explicit listener name and message id.
    pub async fn run_for<F>(&self, listener: &str, message_id: &str, work: F) -> ListenerResult
    where
        F: Future<Output = ListenerResult>,
    {
        if message_id.is_empty() {
            return Err(Error::MissingMessageId.into());
        }
        let key = (listener.to_owned(), message_id.to_owned());
        {
            let mut state = self.state.lock();
            match state.seen.get(&key) {
                Some(true) => return Ok(()),
                Some(false) => {
                    return Err(Error::InProgress {
                        listener: key.0,
                        message_id: key.1,
                    }
                    .into());
                }
                None => {
                    state.seen.insert(key.clone(), false);
                }
            }
        }
        // Forget the claim if `work` fails, panics or is dropped.
        let mut guard = Claim {
            inbox: self,
            key: Some(key),
        };
        let result = work.await;
        if result.is_ok() {
            if let Some(key) = guard.key.take() {
                self.remember(key);
            }
        }
        result
    }

    /// How many messages it remembers now.
    pub fn len(&self) -> usize {
        self.state.lock().order.len()
    }

    /// True when it remembers none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn remember(&self, key: (String, String)) {
        let mut state = self.state.lock();
        state.seen.insert(key.clone(), true);
        state.order.push_back(key);
        while state.order.len() > self.window {
            if let Some(old) = state.order.pop_front() {
                state.seen.remove(&old);
            }
        }
    }
}

struct Claim<'a> {
    inbox: &'a MemoryInbox,
    key: Option<(String, String)>,
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            self.inbox.state.lock().seen.remove(&key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn memory_inbox_runs_once_forgets_failures_and_is_bounded() {
        let inbox = MemoryInbox::new(2);
        let mut effects = 0;
        for _ in 0..3 {
            inbox
                .run_for("l", "a", async {
                    effects += 1;
                    Ok(())
                })
                .await
                .unwrap();
        }
        assert_eq!(effects, 1);
        assert!(
            inbox
                .run_for("l", "b", async { Err("boom".into()) })
                .await
                .is_err()
        );
        inbox.run_for("l", "b", async { Ok(()) }).await.unwrap();
        inbox.run_for("other", "a", async { Ok(()) }).await.unwrap();
        assert_eq!(inbox.len(), 2, "the window holds two");
        // `a` for `l` fell out of the window: it runs again.
        inbox
            .run_for("l", "a", async {
                effects += 1;
                Ok(())
            })
            .await
            .unwrap();
        assert_eq!(effects, 2);
        assert!(inbox.run_for("l", "", async { Ok(()) }).await.is_err());
    }

    #[tokio::test]
    async fn a_duplicate_during_the_first_call_is_refused() {
        let inbox = MemoryInbox::new(10);
        let (go, wait) = tokio::sync::oneshot::channel::<()>();
        let first = inbox.run_for("l", "m", async {
            let _ = wait.await;
            Ok(())
        });
        let second = async {
            let refused = inbox.run_for("l", "m", async { Ok(()) }).await;
            let _ = go.send(());
            refused
        };
        let (first, second) = tokio::join!(first, second);
        assert!(first.is_ok());
        assert!(second.is_err());
    }
}

//! What differs between SQLite and PostgreSQL: the SQL, how a relay claims rows and
//! how it is woken.

use std::time::{Duration, SystemTime};

use futures_util::future::BoxFuture;
use futures_util::stream::BoxStream;
use sqlx::Pool;

use crate::error::Result;
use crate::tables::Tables;

mod postgres;
mod sqlite;

/// A database the outbox runs on: [`sqlx::Sqlite`] or [`sqlx::Postgres`]. Sealed.
///
/// The methods are the outbox's internals, hidden from the docs.
pub trait Backend: sqlx::Database + sealed::Sealed {
    /// A short name for logs and fault lines (`"sqlite"`, `"postgres"`).
    const DATABASE: &'static str;

    /// True when the relay is woken in-process at `send_event` (SQLite: the relay's
    /// claim then waits on the single-writer lock until the sender commits).
    #[doc(hidden)]
    const LOCAL_WAKE: bool;

    #[doc(hidden)]
    fn template() -> sqlx::migrate::Migrator;

    #[doc(hidden)]
    fn migrate<'a>(
        pool: &'a Pool<Self>,
        migrator: &'a sqlx::migrate::Migrator,
    ) -> BoxFuture<'a, Result<()>>;

    #[doc(hidden)]
    fn insert<'c>(
        conn: &'c mut Self::Connection,
        tables: &'c Tables,
        row: &'c NewRow,
    ) -> BoxFuture<'c, Result<()>>;

    #[doc(hidden)]
    fn claim<'a>(
        pool: &'a Pool<Self>,
        tables: &'a Tables,
        claim: &'a ClaimSpec,
    ) -> BoxFuture<'a, Result<Claimed<Self>>>;

    #[doc(hidden)]
    fn finish<'a>(
        pool: &'a Pool<Self>,
        tables: &'a Tables,
        claim: &'a ClaimSpec,
        claimed: Claimed<Self>,
        sent: &'a [i64],
        failed: Option<&'a Failure>,
    ) -> BoxFuture<'a, Result<()>>;

    #[doc(hidden)]
    fn failed_rows<'a>(
        pool: &'a Pool<Self>,
        tables: &'a Tables,
        limit: i64,
    ) -> BoxFuture<'a, Result<Vec<FailedRow>>>;

    #[doc(hidden)]
    fn requeue_failed<'a>(pool: &'a Pool<Self>, tables: &'a Tables) -> BoxFuture<'a, Result<u64>>;

    #[doc(hidden)]
    fn wake_stream<'a>(
        pool: &'a Pool<Self>,
        tables: &'a Tables,
    ) -> BoxFuture<'a, Result<Option<BoxStream<'static, ()>>>>;

    #[doc(hidden)]
    fn delete_sent<'a>(
        pool: &'a Pool<Self>,
        tables: &'a Tables,
        before_ms: i64,
    ) -> BoxFuture<'a, Result<u64>>;

    #[doc(hidden)]
    fn pending<'a>(pool: &'a Pool<Self>, tables: &'a Tables) -> BoxFuture<'a, Result<i64>>;

    #[doc(hidden)]
    fn inbox_insert<'c>(
        conn: &'c mut Self::Connection,
        tables: &'c Tables,
        listener: &'c str,
        message_id: &'c str,
    ) -> BoxFuture<'c, Result<bool>>;

    #[doc(hidden)]
    fn inbox_delete<'a>(
        pool: &'a Pool<Self>,
        tables: &'a Tables,
        before_ms: i64,
    ) -> BoxFuture<'a, Result<u64>>;
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for sqlx::Sqlite {}
    impl Sealed for sqlx::Postgres {}
}

/// A row to write (internal).
#[doc(hidden)]
#[derive(Debug)]
pub struct NewRow {
    pub(crate) message_id: String,
    pub(crate) address: String,
    pub(crate) durable: bool,
    pub(crate) headers: String,
    pub(crate) body: Vec<u8>,
    pub(crate) created_at: i64,
}

/// A stored row a relay claimed (internal).
#[doc(hidden)]
#[derive(Debug)]
pub struct StoredRow {
    pub(crate) id: i64,
    pub(crate) address: String,
    pub(crate) durable: bool,
    pub(crate) headers: String,
    pub(crate) body: Vec<u8>,
}

/// A publish of a claimed row that failed (internal): `dead` carries the reason when
/// the row can never be published and is set aside, `None` when it is retried.
#[doc(hidden)]
#[derive(Debug)]
pub struct Failure {
    pub(crate) id: i64,
    pub(crate) dead: Option<String>,
}

/// A row the relay set aside because it can never be published (a corrupt row, a
/// message the broker refuses for good): listed by
/// [`Outbox::failed`](crate::Outbox::failed), put back by
/// [`Outbox::requeue_failed`](crate::Outbox::requeue_failed).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct FailedRow {
    /// The row id (its place in the order of its address).
    pub id: i64,
    /// The event's message id.
    pub message_id: String,
    /// The event address.
    pub address: String,
    /// Publish attempts made.
    pub attempts: i64,
    /// When it was set aside, in milliseconds since the Unix epoch.
    pub failed_at: i64,
    /// Why.
    pub error: String,
}

/// How a relay claims (internal).
#[doc(hidden)]
#[derive(Debug)]
pub struct ClaimSpec {
    pub(crate) relay: String,
    pub(crate) batch: i64,
    pub(crate) lease: Duration,
}

/// Rows a relay holds, in id order, and what keeps them its own (internal).
#[doc(hidden)]
pub struct Claimed<DB: sqlx::Database> {
    pub(crate) rows: Vec<StoredRow>,
    /// PostgreSQL: the transaction whose row locks hold the batch while it is published.
    pub(crate) tx: Option<sqlx::Transaction<'static, DB>>,
}

/// Milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Keeps, per address, only the claimed rows that no older unsent row of the same
/// address (held by someone else) precedes: `unsent` lists every unsent `(id,
/// address)` up to the batch's last id, in id order.
pub(crate) fn in_order(
    rows: Vec<StoredRow>,
    unsent: &[(i64, String)],
) -> (Vec<StoredRow>, Vec<StoredRow>) {
    use std::collections::{HashMap, HashSet};
    let ours: HashSet<i64> = rows.iter().map(|r| r.id).collect();
    // The first id of each address that is not ours: ours from there on must wait.
    let mut blocked_from: HashMap<&str, i64> = HashMap::new();
    for (id, address) in unsent {
        if !ours.contains(id) {
            blocked_from.entry(address.as_str()).or_insert(*id);
        }
    }
    let (mut keep, mut skip) = (Vec::new(), Vec::new());
    for row in rows {
        match blocked_from.get(row.address.as_str()) {
            Some(&first) if row.id > first => skip.push(row),
            _ => keep.push(row),
        }
    }
    (keep, skip)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: i64, address: &str) -> StoredRow {
        StoredRow {
            id,
            address: address.into(),
            durable: false,
            headers: "[]".into(),
            body: Vec::new(),
        }
    }

    #[test]
    fn rows_behind_someone_elses_stay() {
        let rows = vec![row(2, "a"), row(3, "b"), row(5, "a"), row(6, "b")];
        let unsent: Vec<(i64, String)> =
            [(1, "b"), (2, "a"), (3, "b"), (4, "a"), (5, "a"), (6, "b")]
                .into_iter()
                .map(|(i, a)| (i, a.to_string()))
                .collect();
        let (keep, skip) = in_order(rows, &unsent);
        assert_eq!(keep.iter().map(|r| r.id).collect::<Vec<_>>(), vec![2]);
        assert_eq!(skip.iter().map(|r| r.id).collect::<Vec<_>>(), vec![3, 5, 6]);
    }
}

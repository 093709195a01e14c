//! PostgreSQL: a relay claims a batch with `SELECT … FOR UPDATE SKIP LOCKED` in a
//! transaction it keeps open while it publishes, so a second relay skips those rows
//! (and a crashed relay's locks vanish with its connection); it marks the published
//! rows sent in the same transaction. `send_event` queues a `NOTIFY` that PostgreSQL
//! delivers at commit; relays `LISTEN`.

use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use futures_util::stream::BoxStream;
use sqlx::postgres::PgListener;
use sqlx::{PgConnection, Pool, Postgres, Row};

use super::{Backend, ClaimSpec, Claimed, FailedRow, Failure, NewRow, StoredRow, in_order, now_ms};
use crate::error::{Error, Result};
use crate::tables::Tables;

impl Backend for Postgres {
    const DATABASE: &'static str = "postgres";
    const LOCAL_WAKE: bool = false;

    fn template() -> sqlx::migrate::Migrator {
        sqlx::migrate!("migrations/postgres")
    }

    fn migrate<'a>(
        pool: &'a Pool<Postgres>,
        migrator: &'a sqlx::migrate::Migrator,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            migrator.run(pool).await?;
            Ok(())
        })
    }

    fn insert<'c>(
        conn: &'c mut PgConnection,
        tables: &'c Tables,
        row: &'c NewRow,
    ) -> BoxFuture<'c, Result<()>> {
        Box::pin(async move {
            // One round trip: the row and the notification, which PostgreSQL delivers
            // when (and only if) the transaction commits.
            let sql = tables.render(
                "WITH ins AS (INSERT INTO __outbox__ (message_id, address, durable, headers, body, created_at) \
                 VALUES ($1, $2, $3, $4, $5, $6) RETURNING id) SELECT pg_notify($7, '') FROM ins",
            );
            sqlx::query(&sql)
                .bind(&row.message_id)
                .bind(&row.address)
                .bind(row.durable)
                .bind(&row.headers)
                .bind(&row.body)
                .bind(row.created_at)
                .bind(tables.channel())
                .execute(conn)
                .await
                .map_err(Error::db("writing the outbox row"))?;
            Ok(())
        })
    }

    fn claim<'a>(
        pool: &'a Pool<Postgres>,
        tables: &'a Tables,
        claim: &'a ClaimSpec,
    ) -> BoxFuture<'a, Result<Claimed<Postgres>>> {
        Box::pin(async move {
            let mut tx = pool
                .begin()
                .await
                .map_err(Error::db("claiming outbox rows"))?;
            let sql = tables.render(
                "SELECT id, address, durable, headers, body FROM __outbox__ WHERE sent_at IS NULL AND failed_at IS NULL \
                 ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED",
            );
            let rows: Vec<StoredRow> = sqlx::query(&sql)
                .bind(claim.batch)
                .fetch_all(&mut *tx)
                .await
                .map_err(Error::db("claiming outbox rows"))?
                .into_iter()
                .map(|r| StoredRow {
                    id: r.get(0),
                    address: r.get(1),
                    durable: r.get(2),
                    headers: r.get(3),
                    body: r.get(4),
                })
                .collect();
            let Some(last) = rows.last().map(|r| r.id) else {
                return Ok(Claimed { rows, tx: Some(tx) });
            };
            // Rows another relay holds are invisible to SKIP LOCKED but not to a plain
            // read: keep only ours that no older unsent row of their address precedes.
            let addresses: Vec<&str> = rows.iter().map(|r| r.address.as_str()).collect();
            let sql = tables.render(
                "SELECT id, address FROM __outbox__ WHERE sent_at IS NULL AND failed_at IS NULL AND id <= $1 \
                 AND address = ANY($2) ORDER BY id",
            );
            let unsent: Vec<(i64, String)> = sqlx::query_as(&sql)
                .bind(last)
                .bind(&addresses)
                .fetch_all(&mut *tx)
                .await
                .map_err(Error::db("checking outbox order"))?;
            let (rows, _skipped) = in_order(rows, &unsent);
            Ok(Claimed { rows, tx: Some(tx) })
        })
    }

    fn finish<'a>(
        _pool: &'a Pool<Postgres>,
        tables: &'a Tables,
        _claim: &'a ClaimSpec,
        claimed: Claimed<Postgres>,
        sent: &'a [i64],
        failed: Option<&'a Failure>,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let Some(mut tx) = claimed.tx else {
                return Ok(());
            };
            if !sent.is_empty() {
                let sql = tables.render(
                    "UPDATE __outbox__ SET sent_at = $1, attempts = attempts + 1 WHERE id = ANY($2)",
                );
                sqlx::query(&sql)
                    .bind(now_ms())
                    .bind(sent)
                    .execute(&mut *tx)
                    .await
                    .map_err(Error::db("marking rows sent"))?;
            }
            if let Some(failure) = failed {
                let sql = tables.render(
                    "UPDATE __outbox__ SET attempts = attempts + 1, \
                     failed_at = CASE WHEN $2::TEXT IS NULL THEN NULL ELSE $3 END, error = $2 WHERE id = $1",
                );
                sqlx::query(&sql)
                    .bind(failure.id)
                    .bind(failure.dead.as_deref())
                    .bind(now_ms())
                    .execute(&mut *tx)
                    .await
                    .map_err(Error::db("recording a failed publish"))?;
            }
            tx.commit().await.map_err(Error::db("marking rows sent"))
        })
    }

    fn failed_rows<'a>(
        pool: &'a Pool<Postgres>,
        tables: &'a Tables,
        limit: i64,
    ) -> BoxFuture<'a, Result<Vec<FailedRow>>> {
        Box::pin(async move {
            let sql = tables.render(
                "SELECT id, message_id, address, attempts, failed_at, error FROM __outbox__ \
                 WHERE failed_at IS NOT NULL ORDER BY id LIMIT $1",
            );
            let rows = sqlx::query(&sql)
                .bind(limit)
                .fetch_all(pool)
                .await
                .map_err(Error::db("listing failed rows"))?;
            Ok(rows
                .into_iter()
                .map(|r| FailedRow {
                    id: r.get(0),
                    message_id: r.get(1),
                    address: r.get(2),
                    attempts: i64::from(r.get::<i32, _>(3)),
                    failed_at: r.get(4),
                    error: r.get::<Option<String>, _>(5).unwrap_or_default(),
                })
                .collect())
        })
    }

    fn requeue_failed<'a>(
        pool: &'a Pool<Postgres>,
        tables: &'a Tables,
    ) -> BoxFuture<'a, Result<u64>> {
        Box::pin(async move {
            let sql = tables.render(
                "UPDATE __outbox__ SET failed_at = NULL, error = NULL WHERE failed_at IS NOT NULL",
            );
            let done = sqlx::query(&sql)
                .execute(pool)
                .await
                .map_err(Error::db("requeueing failed rows"))?;
            Ok(done.rows_affected())
        })
    }

    fn wake_stream<'a>(
        pool: &'a Pool<Postgres>,
        tables: &'a Tables,
    ) -> BoxFuture<'a, Result<Option<BoxStream<'static, ()>>>> {
        Box::pin(async move {
            let mut listener = PgListener::connect_with(pool)
                .await
                .map_err(Error::db("listening for outbox commits"))?;
            listener
                .listen(&tables.channel())
                .await
                .map_err(Error::db("listening for outbox commits"))?;
            // An error (a lost connection, re-established by the listener) also wakes
            // the relay: notifications may have been missed meanwhile.
            Ok(Some(listener.into_stream().map(|_| ()).boxed()))
        })
    }

    fn delete_sent<'a>(
        pool: &'a Pool<Postgres>,
        tables: &'a Tables,
        before_ms: i64,
    ) -> BoxFuture<'a, Result<u64>> {
        Box::pin(async move {
            let sql =
                tables.render("DELETE FROM __outbox__ WHERE sent_at IS NOT NULL AND sent_at < $1");
            let done = sqlx::query(&sql)
                .bind(before_ms)
                .execute(pool)
                .await
                .map_err(Error::db("deleting sent rows"))?;
            Ok(done.rows_affected())
        })
    }

    fn pending<'a>(pool: &'a Pool<Postgres>, tables: &'a Tables) -> BoxFuture<'a, Result<i64>> {
        Box::pin(async move {
            let sql = tables.render(
                "SELECT count(*) FROM __outbox__ WHERE sent_at IS NULL AND failed_at IS NULL",
            );
            sqlx::query_scalar(&sql)
                .fetch_one(pool)
                .await
                .map_err(Error::db("counting pending rows"))
        })
    }

    fn inbox_insert<'c>(
        conn: &'c mut PgConnection,
        tables: &'c Tables,
        listener: &'c str,
        message_id: &'c str,
    ) -> BoxFuture<'c, Result<bool>> {
        Box::pin(async move {
            // A concurrent, uncommitted insert of the same key makes this wait for it:
            // if it commits, this one is a duplicate; if it rolls back, this one wins.
            let sql = tables.render(
                "INSERT INTO __inbox__ (listener, message_id, handled_at) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
            );
            let done = sqlx::query(&sql)
                .bind(listener)
                .bind(message_id)
                .bind(now_ms())
                .execute(conn)
                .await
                .map_err(Error::db("recording the inbox row"))?;
            Ok(done.rows_affected() == 1)
        })
    }

    fn inbox_delete<'a>(
        pool: &'a Pool<Postgres>,
        tables: &'a Tables,
        before_ms: i64,
    ) -> BoxFuture<'a, Result<u64>> {
        Box::pin(async move {
            let sql = tables.render("DELETE FROM __inbox__ WHERE handled_at < $1");
            let done = sqlx::query(&sql)
                .bind(before_ms)
                .execute(pool)
                .await
                .map_err(Error::db("expiring inbox rows"))?;
            Ok(done.rows_affected())
        })
    }
}

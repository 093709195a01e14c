//! SQLite: one writer at a time. A relay claims rows with a lease (`claimed_by`,
//! `claimed_until`) in one `UPDATE … RETURNING`, which takes the write lock first, so
//! two relays never claim one row; it publishes without holding a transaction and
//! then marks the rows sent.

use futures_util::future::BoxFuture;
use futures_util::stream::BoxStream;
use sqlx::{Pool, Row, Sqlite, SqliteConnection};

use super::{Backend, ClaimSpec, Claimed, FailedRow, Failure, NewRow, StoredRow, now_ms};
use crate::error::{Error, Result};
use crate::tables::Tables;

impl Backend for Sqlite {
    const DATABASE: &'static str = "sqlite";
    const LOCAL_WAKE: bool = true;

    fn template() -> sqlx::migrate::Migrator {
        sqlx::migrate!("migrations/sqlite")
    }

    fn migrate<'a>(
        pool: &'a Pool<Sqlite>,
        migrator: &'a sqlx::migrate::Migrator,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            migrator.run(pool).await?;
            Ok(())
        })
    }

    fn insert<'c>(
        conn: &'c mut SqliteConnection,
        tables: &'c Tables,
        row: &'c NewRow,
    ) -> BoxFuture<'c, Result<()>> {
        Box::pin(async move {
            let sql = tables.render(
                "INSERT INTO __outbox__ (message_id, address, durable, headers, body, created_at) VALUES (?, ?, ?, ?, ?, ?)",
            );
            sqlx::query(&sql)
                .bind(&row.message_id)
                .bind(&row.address)
                .bind(row.durable)
                .bind(&row.headers)
                .bind(&row.body)
                .bind(row.created_at)
                .execute(conn)
                .await
                .map_err(Error::db("writing the outbox row"))?;
            Ok(())
        })
    }

    fn claim<'a>(
        pool: &'a Pool<Sqlite>,
        tables: &'a Tables,
        claim: &'a ClaimSpec,
    ) -> BoxFuture<'a, Result<Claimed<Sqlite>>> {
        Box::pin(async move {
            let now = now_ms();
            let until = now + claim.lease.as_millis() as i64;
            // Free rows (never claimed, lease expired, or ours), oldest first, unless an
            // older unsent row of the same address is leased by another relay.
            let sql = tables.render(
                "UPDATE __outbox__ SET claimed_by = ?1, claimed_until = ?2 WHERE id IN ( \
                   SELECT o.id FROM __outbox__ o WHERE o.sent_at IS NULL AND o.failed_at IS NULL \
                     AND (o.claimed_until IS NULL OR o.claimed_until < ?3 OR o.claimed_by = ?1) \
                     AND NOT EXISTS (SELECT 1 FROM __outbox__ p WHERE p.address = o.address \
                       AND p.sent_at IS NULL AND p.failed_at IS NULL AND p.id < o.id AND p.claimed_by IS NOT NULL \
                       AND p.claimed_by <> ?1 AND p.claimed_until >= ?3) \
                   ORDER BY o.id LIMIT ?4) \
                 RETURNING id, address, durable, headers, body",
            );
            let mut rows: Vec<StoredRow> = sqlx::query(&sql)
                .bind(&claim.relay)
                .bind(until)
                .bind(now)
                .bind(claim.batch)
                .fetch_all(pool)
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
            rows.sort_by_key(|r| r.id);
            Ok(Claimed { rows, tx: None })
        })
    }

    fn finish<'a>(
        pool: &'a Pool<Sqlite>,
        tables: &'a Tables,
        claim: &'a ClaimSpec,
        claimed: Claimed<Sqlite>,
        sent: &'a [i64],
        failed: Option<&'a Failure>,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let mut tx = pool.begin().await.map_err(Error::db("marking rows sent"))?;
            if !sent.is_empty() {
                let sql = tables.render(
                    "UPDATE __outbox__ SET sent_at = ?1, claimed_by = NULL, claimed_until = NULL, attempts = attempts + 1 \
                     WHERE claimed_by = ?2 AND id IN (SELECT value FROM json_each(?3))",
                );
                sqlx::query(&sql)
                    .bind(now_ms())
                    .bind(&claim.relay)
                    .bind(ids_json(sent))
                    .execute(&mut *tx)
                    .await
                    .map_err(Error::db("marking rows sent"))?;
            }
            if let Some(failure) = failed {
                let sql = tables.render(
                    "UPDATE __outbox__ SET attempts = attempts + 1, \
                     failed_at = CASE WHEN ?2 IS NULL THEN NULL ELSE ?3 END, error = ?2 WHERE id = ?1",
                );
                sqlx::query(&sql)
                    .bind(failure.id)
                    .bind(failure.dead.as_deref())
                    .bind(now_ms())
                    .execute(&mut *tx)
                    .await
                    .map_err(Error::db("recording a failed publish"))?;
            }
            let unsent: Vec<i64> = claimed
                .rows
                .iter()
                .map(|r| r.id)
                .filter(|id| !sent.contains(id))
                .collect();
            if !unsent.is_empty() {
                let sql = tables.render(
                    "UPDATE __outbox__ SET claimed_by = NULL, claimed_until = NULL \
                     WHERE claimed_by = ?1 AND id IN (SELECT value FROM json_each(?2))",
                );
                sqlx::query(&sql)
                    .bind(&claim.relay)
                    .bind(ids_json(&unsent))
                    .execute(&mut *tx)
                    .await
                    .map_err(Error::db("releasing outbox rows"))?;
            }
            tx.commit().await.map_err(Error::db("marking rows sent"))
        })
    }

    fn failed_rows<'a>(
        pool: &'a Pool<Sqlite>,
        tables: &'a Tables,
        limit: i64,
    ) -> BoxFuture<'a, Result<Vec<FailedRow>>> {
        Box::pin(async move {
            let sql = tables.render(
                "SELECT id, message_id, address, attempts, failed_at, error FROM __outbox__ \
                 WHERE failed_at IS NOT NULL ORDER BY id LIMIT ?",
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
                    attempts: r.get(3),
                    failed_at: r.get(4),
                    error: r.get::<Option<String>, _>(5).unwrap_or_default(),
                })
                .collect())
        })
    }

    fn requeue_failed<'a>(
        pool: &'a Pool<Sqlite>,
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
        _: &'a Pool<Sqlite>,
        _: &'a Tables,
    ) -> BoxFuture<'a, Result<Option<BoxStream<'static, ()>>>> {
        Box::pin(async { Ok(None) })
    }

    fn delete_sent<'a>(
        pool: &'a Pool<Sqlite>,
        tables: &'a Tables,
        before_ms: i64,
    ) -> BoxFuture<'a, Result<u64>> {
        Box::pin(async move {
            let sql =
                tables.render("DELETE FROM __outbox__ WHERE sent_at IS NOT NULL AND sent_at < ?");
            let done = sqlx::query(&sql)
                .bind(before_ms)
                .execute(pool)
                .await
                .map_err(Error::db("deleting sent rows"))?;
            Ok(done.rows_affected())
        })
    }

    fn pending<'a>(pool: &'a Pool<Sqlite>, tables: &'a Tables) -> BoxFuture<'a, Result<i64>> {
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
        conn: &'c mut SqliteConnection,
        tables: &'c Tables,
        listener: &'c str,
        message_id: &'c str,
    ) -> BoxFuture<'c, Result<bool>> {
        Box::pin(async move {
            let sql = tables.render(
                "INSERT INTO __inbox__ (listener, message_id, handled_at) VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
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
        pool: &'a Pool<Sqlite>,
        tables: &'a Tables,
        before_ms: i64,
    ) -> BoxFuture<'a, Result<u64>> {
        Box::pin(async move {
            let sql = tables.render("DELETE FROM __inbox__ WHERE handled_at < ?");
            let done = sqlx::query(&sql)
                .bind(before_ms)
                .execute(pool)
                .await
                .map_err(Error::db("expiring inbox rows"))?;
            Ok(done.rows_affected())
        })
    }
}

pub(super) fn ids_json(ids: &[i64]) -> String {
    let mut out = String::with_capacity(ids.len() * 8 + 2);
    out.push('[');
    for (i, id) in ids.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&id.to_string());
    }
    out.push(']');
    out
}

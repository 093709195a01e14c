//! The outbox and the inbox on SQLite with the in-process provider:
//! `cargo run -p eventing-outbox --example outbox`.
//!
//! Orders are written with their `OrderPlaced` event in one transaction (one order
//! rolls back: its event is never published); the relay publishes the committed
//! ones; the billing listener books each order once through the inbox, even though
//! every event is delivered twice here.

use std::time::Duration;

use eventing::{Context, EventListener, EventManager, ListenerResult, event, event_listener};
use eventing_outbox::{Inbox, Outbox, RelayOptions};
use serde::{Deserialize, Serialize};
use sqlx::SqlitePool;
use sqlx::sqlite::SqliteConnectOptions;

#[event(durable = true)]
#[derive(Serialize, Deserialize, Debug)]
struct OrderPlaced {
    order: i64,
    cents: i64,
}

#[event_listener(OrderPlaced)]
struct Billing {
    inbox: Inbox<sqlx::Sqlite>,
}

impl EventListener<OrderPlaced> for Billing {
    async fn on(&self, placed: OrderPlaced, ctx: &Context) -> ListenerResult {
        let Some(mut tx) = self.inbox.begin(ctx).await? else {
            println!("billing: order {} seen before, skipped", placed.order);
            return Ok(());
        };
        sqlx::query("INSERT INTO invoices (order_id, cents) VALUES (?, ?)")
            .bind(placed.order)
            .bind(placed.cents)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        println!(
            "billing: invoiced order {} ({} cents)",
            placed.order, placed.cents
        );
        Ok(())
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // One in-memory SQLite database shared by the pool's connections.
    let options = SqliteConnectOptions::new()
        .filename("file:outbox-example?mode=memory&cache=shared")
        .shared_cache(true);
    let pool = SqlitePool::connect_with(options).await?;
    sqlx::query("CREATE TABLE orders (id INTEGER PRIMARY KEY, cents INTEGER NOT NULL)")
        .execute(&pool)
        .await?;
    sqlx::query("CREATE TABLE invoices (order_id INTEGER NOT NULL, cents INTEGER NOT NULL)")
        .execute(&pool)
        .await?;

    let manager = EventManager::builder()
        .url("memory://outbox-example")
        .listener(Billing {
            inbox: Inbox::new(pool.clone()),
        })
        .build()
        .await?;
    let outbox = Outbox::new(manager.clone(), pool.clone());
    outbox.migrate().await?;
    manager.start().await?;
    let relay = outbox.relay(RelayOptions::default());

    for order in 1..=3 {
        let mut tx = pool.begin().await?;
        sqlx::query("INSERT INTO orders (id, cents) VALUES (?, ?)")
            .bind(order)
            .bind(order * 1_000)
            .execute(&mut *tx)
            .await?;
        outbox
            .send_event(
                &mut tx,
                &OrderPlaced {
                    order,
                    cents: order * 1_000,
                },
            )
            .await?;
        if order == 2 {
            tx.rollback().await?;
            println!("shop: order 2 rolled back (its event is never published)");
        } else {
            tx.commit().await?;
            println!("shop: order {order} committed");
        }
    }

    // Wait for the relay, then deliver everything a second time, as a broker does
    // after a lost acknowledgement.
    while outbox.pending().await? > 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    sqlx::query(&format!(
        "UPDATE {} SET sent_at = NULL",
        outbox.tables().outbox()
    ))
    .execute(&pool)
    .await?;
    outbox.publish_pending().await?;
    tokio::time::sleep(Duration::from_millis(200)).await;

    let (invoices,): (i64,) = sqlx::query_as("SELECT count(*) FROM invoices")
        .fetch_one(&pool)
        .await?;
    println!("invoices: {invoices} (orders 1 and 3, once each)");
    relay.shutdown().await;
    manager.shutdown().await?;
    assert_eq!(invoices, 2);
    Ok(())
}

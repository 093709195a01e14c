//! Transactional outbox and idempotent inbox for [`eventing`], on SQLite and
//! PostgreSQL through [`sqlx`].
//!
//! - [`Outbox::send_event`] runs the send pipelines and writes the finished envelope
//!   in the caller's transaction: the event exists only if the business rows commit.
//! - A [`Relay`] ([`Outbox::relay`]) publishes committed rows through the manager's
//!   provider in order, marks them sent, retries with backoff while the broker is
//!   down, resumes from the table after a restart and deletes old sent rows.
//! - [`Inbox`] records a handled message in the listener's own transaction, so a
//!   redelivered message does not run its side effects twice; [`MemoryInbox`] does it
//!   in memory for a bounded window.
//!
//! See `docs/outbox.md` for the guarantees and what each database does.
//!
//! ```
//! use eventing::{event, EventManager};
//! use eventing_outbox::{Outbox, RelayOptions};
//! use serde::{Deserialize, Serialize};
//!
//! #[event]
//! #[derive(Serialize, Deserialize)]
//! struct OrderPlaced { id: i64 }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let manager = EventManager::builder().url("memory://crate-doc").build().await?;
//! let pool = sqlx::SqlitePool::connect("sqlite::memory:").await?;
//! let outbox = Outbox::new(manager.clone(), pool.clone());
//! outbox.migrate().await?;
//! let relay = outbox.relay(RelayOptions::default());
//!
//! let mut tx = pool.begin().await?;
//! outbox.send_event(&mut tx, &OrderPlaced { id: 1 }).await?;
//! tx.commit().await?;
//!
//! relay.shutdown().await;
//! # Ok(()) }
//! ```

mod backend;
mod error;
mod inbox;
mod outbox;
mod relay;
mod tables;

pub use backend::{Backend, FailedRow};
pub use error::{Error, Result};
pub use inbox::{Inbox, MemoryInbox};
pub use outbox::Outbox;
pub use relay::{Relay, RelayOptions, RelayStats};
pub use sqlx;
pub use tables::Tables;

#[doc(hidden)]
pub mod __private {
    pub use crate::backend::{ClaimSpec, Claimed, Failure, NewRow, StoredRow};
}

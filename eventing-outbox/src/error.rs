//! Errors of the outbox and the inbox.

/// What can go wrong in the outbox, its relay or the inbox.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The database refused or failed a statement.
    #[error("outbox database error during {operation}: {source}")]
    Database {
        /// What the outbox was doing.
        operation: &'static str,
        /// The driver's error.
        #[source]
        source: sqlx::Error,
    },
    /// Applying the shipped migrations failed.
    #[error("outbox migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// Serializing the event or running the send pipelines failed.
    #[error("could not prepare the event: {0}")]
    Eventing(#[from] eventing::Error),
    /// A configured table name is not a plain SQL identifier.
    #[error(
        "table name `{name}` is not allowed: use letters, digits and `_` (at most 48), optionally `schema.` first"
    )]
    InvalidTableName {
        /// The rejected name.
        name: String,
    },
    /// A stored row could not be read back (its headers are not the JSON the outbox writes).
    #[error("outbox row {id} is corrupt: {reason}")]
    CorruptRow {
        /// The row id.
        id: i64,
        /// What is wrong.
        reason: String,
    },
    /// A message without a `message-id` header cannot be deduplicated.
    #[error("message has no message-id header; the inbox cannot deduplicate it")]
    MissingMessageId,
    /// The same message is being handled by this listener right now (in-memory inbox):
    /// the delivery fails and comes back later, after the first one finished.
    #[error("message `{message_id}` is already being handled by `{listener}`")]
    InProgress {
        /// The listener.
        listener: String,
        /// The message id.
        message_id: String,
    },
}

impl Error {
    pub(crate) fn db(operation: &'static str) -> impl FnOnce(sqlx::Error) -> Self {
        move |source| Self::Database { operation, source }
    }
}

/// The outbox's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

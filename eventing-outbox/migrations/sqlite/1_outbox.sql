-- eventing-outbox schema for SQLite. `__outbox__` and `__inbox__` are replaced by the
-- configured table names (see `Tables`), `__outbox_ix__`/`__inbox_ix__` by index prefixes.
CREATE TABLE IF NOT EXISTS __outbox__ (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    message_id    TEXT    NOT NULL,
    address       TEXT    NOT NULL,
    durable       INTEGER NOT NULL,
    headers       TEXT    NOT NULL,
    body          BLOB    NOT NULL,
    created_at    INTEGER NOT NULL,
    attempts      INTEGER NOT NULL DEFAULT 0,
    claimed_by    TEXT,
    claimed_until INTEGER,
    sent_at       INTEGER
);
CREATE INDEX IF NOT EXISTS __outbox_ix___pending ON __outbox__ (id) WHERE sent_at IS NULL;
CREATE INDEX IF NOT EXISTS __outbox_ix___pending_address ON __outbox__ (address, id) WHERE sent_at IS NULL;
CREATE INDEX IF NOT EXISTS __outbox_ix___sent ON __outbox__ (sent_at) WHERE sent_at IS NOT NULL;
CREATE TABLE IF NOT EXISTS __inbox__ (
    listener   TEXT    NOT NULL,
    message_id TEXT    NOT NULL,
    handled_at INTEGER NOT NULL,
    PRIMARY KEY (listener, message_id)
);
CREATE INDEX IF NOT EXISTS __inbox_ix___handled ON __inbox__ (handled_at);

-- eventing-outbox schema for PostgreSQL. `__outbox__` and `__inbox__` are replaced by the
-- configured table names (see `Tables`), `__outbox_ix__`/`__inbox_ix__` by index prefixes.
CREATE TABLE IF NOT EXISTS __outbox__ (
    id            BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    message_id    TEXT    NOT NULL,
    address       TEXT    NOT NULL,
    durable       BOOLEAN NOT NULL,
    headers       TEXT    NOT NULL,
    body          BYTEA   NOT NULL,
    created_at    BIGINT  NOT NULL,
    attempts      INTEGER NOT NULL DEFAULT 0,
    sent_at       BIGINT
);
CREATE INDEX IF NOT EXISTS __outbox_ix___pending ON __outbox__ (id) WHERE sent_at IS NULL;
CREATE INDEX IF NOT EXISTS __outbox_ix___pending_address ON __outbox__ (address, id) WHERE sent_at IS NULL;
CREATE INDEX IF NOT EXISTS __outbox_ix___sent ON __outbox__ (sent_at) WHERE sent_at IS NOT NULL;
CREATE TABLE IF NOT EXISTS __inbox__ (
    listener   TEXT   NOT NULL,
    message_id TEXT   NOT NULL,
    handled_at BIGINT NOT NULL,
    PRIMARY KEY (listener, message_id)
);
CREATE INDEX IF NOT EXISTS __inbox_ix___handled ON __inbox__ (handled_at);

-- Rows the relay can never publish (a corrupt row, a message over the broker's size
-- limit): kept, out of the relay's way, with the reason, until requeued or deleted.
ALTER TABLE __outbox__ ADD COLUMN IF NOT EXISTS failed_at BIGINT;
ALTER TABLE __outbox__ ADD COLUMN IF NOT EXISTS error TEXT;
CREATE INDEX IF NOT EXISTS __outbox_ix___failed ON __outbox__ (id) WHERE failed_at IS NOT NULL;

-- The webhooks' durable outbox: one row per (webhook, notification), written
-- in the transaction of the batch (or tick) that derived the notification.
-- `hook` is the webhook's url; `event_id` the notification's stable id, so a
-- notification derived again is kept once per webhook. `body` is the exact
-- JSON sent on every attempt. Times are integer microseconds (UTC), as on
-- PostgreSQL's copy of this table, so both backends share its SQL.
CREATE TABLE webhook_outbox (
    seq          INTEGER PRIMARY KEY,
    hook         TEXT    NOT NULL,
    event_id     TEXT    NOT NULL,
    order_key    TEXT    NOT NULL,
    occurred_at  INTEGER NOT NULL,
    body         TEXT    NOT NULL,
    created_at   INTEGER NOT NULL,
    next_at      INTEGER NOT NULL,
    attempts     INTEGER NOT NULL DEFAULT 0,
    last_error   TEXT,
    delivered_at INTEGER,
    failed_at    INTEGER,
    UNIQUE (hook, event_id)
);
-- The queue of each (webhook, move) in order, and what is due: undelivered rows only.
CREATE INDEX webhook_outbox_queue ON webhook_outbox (hook, order_key, occurred_at, seq)
    WHERE delivered_at IS NULL AND failed_at IS NULL;
CREATE INDEX webhook_outbox_due ON webhook_outbox (next_at)
    WHERE delivered_at IS NULL AND failed_at IS NULL;
CREATE INDEX webhook_outbox_delivered ON webhook_outbox (delivered_at)
    WHERE delivered_at IS NOT NULL;

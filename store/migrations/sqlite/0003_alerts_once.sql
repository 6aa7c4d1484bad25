-- Alerts, kept once each: an alert derived again from redelivered data (same
-- kind, vehicle, move and time) is not stored twice. `move_id` is '' for none.
CREATE TABLE alerts (
    id       INTEGER PRIMARY KEY,
    kind     TEXT    NOT NULL,
    vehicle  TEXT    NOT NULL,
    move_id  TEXT    NOT NULL DEFAULT '',
    ts       INTEGER NOT NULL,
    detail   TEXT    NOT NULL,
    UNIQUE (kind, vehicle, move_id, ts)
);
CREATE INDEX alerts_ts ON alerts (ts);

-- A leg arrives once.
CREATE UNIQUE INDEX arrivals_once ON arrivals (move_id, site, arrived_at);

-- Alerts, kept once each: an alert derived again from redelivered data (same
-- kind, vehicle, move and time) is not stored twice. `move_id` is '' for none.
CREATE TABLE alerts (
    id       bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind     text        NOT NULL,
    vehicle  text        NOT NULL,
    move_id  text        NOT NULL DEFAULT '',
    ts       timestamptz NOT NULL,
    detail   text        NOT NULL,
    UNIQUE (kind, vehicle, move_id, ts)
);
CREATE INDEX alerts_ts ON alerts (ts);

-- A leg arrives once.
CREATE UNIQUE INDEX arrivals_once ON arrivals (move_id, site, arrived_at);

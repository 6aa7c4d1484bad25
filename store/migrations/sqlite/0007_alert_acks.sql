-- Acknowledgements of alerts by the control room: who and when, one per
-- alert (the first one stands). The alert is named by its stable key, the
-- same as the alerts table's unique key (kind, vehicle, move_id, ts);
-- `move_id` is '' for none. Times are integer microseconds (UTC), as on
-- PostgreSQL's copy of this table, so both backends share its SQL.
CREATE TABLE alert_acks (
    kind      TEXT    NOT NULL,
    vehicle   TEXT    NOT NULL,
    move_id   TEXT    NOT NULL DEFAULT '',
    ts        INTEGER NOT NULL,
    acked_by  TEXT    NOT NULL,
    acked_at  INTEGER NOT NULL,
    PRIMARY KEY (kind, vehicle, move_id, ts)
);
CREATE INDEX alert_acks_ts ON alert_acks (ts);

-- Acknowledgements of alerts by the control room: who and when, one per
-- alert (the first one stands). The alert is named by its stable key, the
-- same as the alerts table's unique key (kind, vehicle, move_id, ts);
-- `move_id` is '' for none. Times are bigint microseconds (UTC), as on
-- SQLite's copy of this table, so both backends share its SQL.
CREATE TABLE alert_acks (
    kind      text    NOT NULL,
    vehicle   text    NOT NULL,
    move_id   text    NOT NULL DEFAULT '',
    ts        bigint  NOT NULL,
    acked_by  text    NOT NULL,
    acked_at  bigint  NOT NULL,
    PRIMARY KEY (kind, vehicle, move_id, ts)
);
CREATE INDEX alert_acks_ts ON alert_acks (ts);

-- Times are INTEGER microseconds since the Unix epoch, UTC.
CREATE TABLE positions (
    id           INTEGER PRIMARY KEY,
    supplier     TEXT    NOT NULL,
    tracking_id  TEXT    NOT NULL,
    vehicle      TEXT    NOT NULL,
    ts           INTEGER NOT NULL,
    lat          REAL    NOT NULL,
    lon          REAL    NOT NULL,
    journey_id   TEXT,
    speed        REAL,
    bearing      REAL,
    altitude     REAL,
    hdop         REAL,
    vdop         REAL,
    vin          TEXT,
    flags        INTEGER NOT NULL DEFAULT 0,
    received_at  INTEGER NOT NULL,
    -- The de-duplication key, across restarts.
    UNIQUE (supplier, tracking_id)
);
CREATE INDEX positions_vehicle_ts ON positions (vehicle, ts DESC);
CREATE INDEX positions_ts ON positions (ts);

CREATE TABLE events (
    id           INTEGER PRIMARY KEY,
    supplier     TEXT    NOT NULL,
    vehicle      TEXT    NOT NULL,
    event_type   TEXT    NOT NULL,
    occurred_at  INTEGER NOT NULL,
    move_id      TEXT,
    journey_id   TEXT,
    details      TEXT    NOT NULL,
    received_at  INTEGER NOT NULL
);
CREATE INDEX events_move ON events (move_id, occurred_at);

CREATE TABLE dead_letters (
    id           INTEGER PRIMARY KEY,
    reason       TEXT    NOT NULL,
    detail       TEXT    NOT NULL,
    supplier     TEXT,
    topic        TEXT,
    received_at  INTEGER NOT NULL,
    item_index   INTEGER,
    raw          TEXT    NOT NULL
);
CREATE INDEX dead_letters_reason ON dead_letters (reason, received_at);

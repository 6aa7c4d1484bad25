-- Times are INTEGER microseconds since the Unix epoch, UTC; dates are TEXT YYYY-MM-DD.
CREATE TABLE sites (
    id        TEXT PRIMARY KEY,
    name      TEXT NOT NULL,
    kind      TEXT NOT NULL,
    lat       REAL NOT NULL,
    lon       REAL NOT NULL,
    radius_m  REAL,
    fence     TEXT
);

CREATE TABLE moves (
    id             TEXT    PRIMARY KEY,
    reference      TEXT    NOT NULL,
    from_location  TEXT    NOT NULL,
    to_location    TEXT    NOT NULL,
    move_date      TEXT    NOT NULL,
    status         TEXT    NOT NULL,
    updated_at     INTEGER NOT NULL
);
CREATE INDEX moves_date ON moves (move_date);
CREATE INDEX moves_to ON moves (to_location, move_date);

CREATE TABLE journeys (
    id             TEXT    PRIMARY KEY,
    move_id        TEXT    NOT NULL REFERENCES moves (id) ON DELETE CASCADE,
    seq            INTEGER NOT NULL,
    from_location  TEXT    NOT NULL,
    to_location    TEXT    NOT NULL,
    vehicle        TEXT
);
CREATE INDEX journeys_move ON journeys (move_id, seq);
CREATE INDEX journeys_vehicle ON journeys (vehicle);

CREATE TABLE fence_transitions (
    id       INTEGER PRIMARY KEY,
    vehicle  TEXT    NOT NULL,
    site     TEXT    NOT NULL,
    kind     TEXT    NOT NULL CHECK (kind IN ('enter', 'exit', 'pass_through')),
    ts       INTEGER NOT NULL
);
CREATE INDEX fence_transitions_vehicle_ts ON fence_transitions (vehicle, ts);

CREATE TABLE arrivals (
    id             INTEGER PRIMARY KEY,
    move_id        TEXT    NOT NULL,
    vehicle        TEXT    NOT NULL,
    site           TEXT    NOT NULL,
    from_location  TEXT    NOT NULL,
    departed_at    INTEGER NOT NULL,
    arrived_at     INTEGER NOT NULL,
    distance_m     REAL    NOT NULL
);
CREATE INDEX arrivals_route ON arrivals (from_location, site, arrived_at DESC);

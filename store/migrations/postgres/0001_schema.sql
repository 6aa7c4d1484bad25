-- movewatch on PostgreSQL. Times are timestamptz (UTC).
-- `positions` itself is created by the store at open (src/pg_layout.rs),
-- because its layout depends on the server: a TimescaleDB hypertable when the
-- extension is available, otherwise native day partitions.

-- The de-duplication key of every stored point. Not partitioned, so that
-- (supplier, tracking_id) can be unique: a unique index on the day-partitioned
-- positions table would have to include the fix time. `ts` (the point's fix
-- time) lets retention prune keys together with their partitions.
CREATE TABLE position_keys (
    supplier     text        NOT NULL,
    tracking_id  text        NOT NULL,
    ts           timestamptz NOT NULL,
    PRIMARY KEY (supplier, tracking_id)
);
CREATE INDEX position_keys_ts_brin ON position_keys USING brin (ts);

CREATE TABLE events (
    id           bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    supplier     text        NOT NULL,
    vehicle      text        NOT NULL,
    event_type   text        NOT NULL,
    occurred_at  timestamptz NOT NULL,
    move_id      text,
    journey_id   text,
    -- json, not jsonb: it keeps the object as sent, \u0000 escapes included.
    details      json        NOT NULL,
    received_at  timestamptz NOT NULL
);
CREATE INDEX events_move ON events (move_id, occurred_at);

CREATE TABLE dead_letters (
    id           bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    reason       text        NOT NULL,
    detail       text        NOT NULL,
    supplier     text,
    topic        text,
    received_at  timestamptz NOT NULL,
    item_index   bigint,
    raw          text        NOT NULL
);
CREATE INDEX dead_letters_reason ON dead_letters (reason, received_at);

CREATE TABLE sites (
    id           text             PRIMARY KEY,
    name         text             NOT NULL,
    kind         text             NOT NULL,
    lat          double precision NOT NULL,
    lon          double precision NOT NULL,
    radius_m     double precision,
    fence        json
);

CREATE TABLE moves (
    id             text        PRIMARY KEY,
    reference      text        NOT NULL,
    from_location  text        NOT NULL,
    to_location    text        NOT NULL,
    move_date      date        NOT NULL,
    status         text        NOT NULL,
    updated_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX moves_date ON moves (move_date);
CREATE INDEX moves_to ON moves (to_location, move_date);

CREATE TABLE journeys (
    id             text    PRIMARY KEY,
    move_id        text    NOT NULL REFERENCES moves (id) ON DELETE CASCADE,
    seq            integer NOT NULL,
    from_location  text    NOT NULL,
    to_location    text    NOT NULL,
    vehicle        text
);
CREATE INDEX journeys_move ON journeys (move_id, seq);
CREATE INDEX journeys_vehicle ON journeys (vehicle);

CREATE TABLE fence_transitions (
    id       bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    vehicle  text        NOT NULL,
    site     text        NOT NULL,
    kind     text        NOT NULL CHECK (kind IN ('enter', 'exit', 'pass_through')),
    ts       timestamptz NOT NULL
);
CREATE INDEX fence_transitions_vehicle_ts ON fence_transitions (vehicle, ts);

CREATE TABLE arrivals (
    id             bigint           GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    move_id        text             NOT NULL,
    vehicle        text             NOT NULL,
    site           text             NOT NULL,
    from_location  text             NOT NULL,
    departed_at    timestamptz      NOT NULL,
    arrived_at     timestamptz      NOT NULL,
    distance_m     double precision NOT NULL
);
CREATE INDEX arrivals_route ON arrivals (from_location, site, arrived_at DESC);

-- The vehicle register: which supplier runs which vehicle. Filled from the
-- config's [[vehicles]] and [fleet] files on start, by PUT /api/vehicles/{v},
-- and by first-report claims when [fleet] claim_on_first_report is on.
-- `source`: config, file, api or claim.
CREATE TABLE vehicle_register (
    vehicle     text        PRIMARY KEY,
    supplier    text        NOT NULL,
    source      text        NOT NULL,
    updated_at  timestamptz NOT NULL
);

-- The vehicle register: which supplier runs which vehicle. Filled from the
-- config's [[vehicles]] and [fleet] files on start, by PUT /api/vehicles/{v},
-- and by first-report claims when [fleet] claim_on_first_report is on.
-- `source`: config, file, api or claim.
CREATE TABLE vehicle_register (
    vehicle     TEXT    PRIMARY KEY,
    supplier    TEXT    NOT NULL,
    source      TEXT    NOT NULL,
    updated_at  INTEGER NOT NULL
);

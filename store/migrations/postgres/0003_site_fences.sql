-- Fences replaced at run time (PUT /api/sites/{id}/fence): one row per site,
-- applied over the fences of the sites files on start. `fence` is JSON text
-- (kept as text: it is read back byte for byte, never queried).
CREATE TABLE site_fences (
    site        text        PRIMARY KEY,
    fence       text        NOT NULL,
    updated_at  timestamptz NOT NULL
);

-- Fences replaced at run time (PUT /api/sites/{id}/fence): one row per site,
-- applied over the fences of the sites files on start. `fence` is JSON text.
CREATE TABLE site_fences (
    site        TEXT    PRIMARY KEY,
    fence       TEXT    NOT NULL,
    updated_at  INTEGER NOT NULL
);

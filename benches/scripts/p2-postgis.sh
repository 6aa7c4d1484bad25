#!/usr/bin/env bash
# P2 (issue #5): our geofence index against a PostGIS GiST join, in one run.
# Installs Debian's PostGIS for PostgreSQL 15 if missing (needs root), then
# runs the bench, which loads the same points and fences into a fresh
# database (movewatch_p2, dropped afterwards) and times the join.
#   P2_PGURL   postgresql://postgres@127.0.0.1:5432 (trust auth)
#   P2_POINTS  200000
set -euo pipefail
cd "$(dirname "$0")/../.."

if ! ls /usr/share/postgresql/15/extension/postgis.control >/dev/null 2>&1; then
    apt-get install -y postgresql-15-postgis-3 || { apt-get update && apt-get install -y postgresql-15-postgis-3; }
fi
command -v psql >/dev/null || { echo "psql not found (apt-get install postgresql-client-15)" >&2; exit 1; }

exec cargo bench -p movewatch-benches --bench geofence_p2

#!/bin/sh
# Run by the postgres image's entrypoint once, when the data directory is empty: creates
# Prefect's role and database and the exporter's least-privilege role from roles.psql, with
# the passwords from the environment (.env). Plain SQL files here would run without them.
set -e
psql -v ON_ERROR_STOP=1 --no-psqlrc --username "$POSTGRES_USER" --dbname postgres \
  -v prefect_password="$PREFECT_DB_PASSWORD" \
  -v exporter_password="$EXPORTER_DB_PASSWORD" \
  -f /docker-entrypoint-initdb.d/roles.psql

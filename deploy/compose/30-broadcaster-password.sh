#!/bin/sh
# First start of the PostgreSQL container (compose.yaml): gives the broadcaster's role, made by
# sql/roles.sql just before, the password from THREADCAST_DB_PASSWORD.
set -eu
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
     -v password="$THREADCAST_DB_PASSWORD" <<'SQL'
ALTER ROLE threadcast_broadcaster PASSWORD :'password';
SQL

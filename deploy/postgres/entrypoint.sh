#!/bin/bash
# First start: create the cluster, then the role and database named in
# CLEARANCE_DATABASE_URL (postgresql://USER:PASSWORD@HOST:PORT/DB). Every start: run
# postgres in the foreground, reachable over the container network with a password
# (scram-sha-256) and over its local socket without one (health checks, psql).
set -euo pipefail

url=${CLEARANCE_DATABASE_URL:?set CLEARANCE_DATABASE_URL (deploy/clearance.env)}
if [[ ! $url =~ ^postgres(ql)?://([^:@/]+):([^@/]+)@[^/]+/([^/?]+) ]]; then
  echo "postgres: CLEARANCE_DATABASE_URL must look like postgresql://USER:PASSWORD@HOST:PORT/DB" >&2
  exit 2
fi
user=${BASH_REMATCH[2]} password=${BASH_REMATCH[3]} database=${BASH_REMATCH[4]}
for value in "$user" "$database"; do
  [[ $value =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]] || { echo "postgres: unusable name '$value'" >&2; exit 2; }
done
if [[ $password == *%* ]]; then
  echo "postgres: use a password that needs no URL encoding (e.g. openssl rand -hex 24)" >&2
  exit 2
fi

if [[ ! -s $PGDATA/PG_VERSION ]]; then
  echo "postgres: creating the cluster in $PGDATA"
  initdb --username=postgres --auth-local=trust --auth-host=scram-sha-256 \
    --encoding=UTF8 --locale=C.UTF-8 >/dev/null
  cat >>"$PGDATA/pg_hba.conf" <<HBA
host all all 0.0.0.0/0 scram-sha-256
host all all ::/0 scram-sha-256
HBA
  # A private start (no TCP) to create the role and database, then the real one below.
  pg_ctl --wait --silent -o "-c listen_addresses=''" start
  psql --quiet -v ON_ERROR_STOP=1 -v password="$password" --username=postgres \
    --dbname=postgres <<SQL
CREATE ROLE "$user" LOGIN CREATEDB PASSWORD :'password';
CREATE DATABASE "$database" OWNER "$user";
SQL
  pg_ctl --wait --silent -m fast stop
fi

exec postgres -c listen_addresses='*' -c log_line_prefix='%m [%p] ' "$@"

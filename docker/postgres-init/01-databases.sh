#!/bin/bash
# Runs once, when the PostgreSQL volume is new: the role and database for Airflow's metadata, and the role
# and database of the event ledger. The passwords come from the container's environment (docker/.env).
set -euo pipefail
: "${AIRFLOW_DB_PASSWORD:?set AIRFLOW_DB_PASSWORD}" "${LEDGER_DB_PASSWORD:?set LEDGER_DB_PASSWORD}"
psql -v ON_ERROR_STOP=1 --username "${POSTGRES_USER:-postgres}" --dbname postgres \
     -v airflow_password="$AIRFLOW_DB_PASSWORD" -v ledger_password="$LEDGER_DB_PASSWORD" <<'SQL'
CREATE ROLE airflow LOGIN PASSWORD :'airflow_password';
CREATE DATABASE airflow OWNER airflow;
CREATE ROLE es LOGIN PASSWORD :'ledger_password';
CREATE DATABASE events OWNER es;
SQL

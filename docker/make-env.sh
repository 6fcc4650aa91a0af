#!/bin/sh
# Prints a docker/.env with fresh random secrets: sh docker/make-env.sh > docker/.env (keep it out of git).
set -eu
hex() { od -An -N24 -tx1 /dev/urandom | tr -d ' \n'; }
for name in POSTGRES_PASSWORD AIRFLOW_DB_PASSWORD LEDGER_DB_PASSWORD REDIS_PASSWORD S3_ACCESS_KEY S3_SECRET_KEY \
            AIRFLOW_SECRET_KEY EVENT_SERVICE_ADMIN_TOKEN; do
    echo "$name=$(hex)"
done
# 32 random bytes, URL-safe base64: what Airflow's Fernet key is.
echo "AIRFLOW_FERNET_KEY=$(head -c 32 /dev/urandom | base64 | tr '+/' '-_')"
echo "RUNNER_TASK=demo"
echo "EVENT_SERVICE_TOKEN="

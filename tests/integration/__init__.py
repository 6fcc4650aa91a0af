"""Integration tests: whole deployments (Airflow, PostgreSQL, S3) started as processes."""

from __future__ import annotations

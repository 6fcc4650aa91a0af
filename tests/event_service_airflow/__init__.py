"""Tests of the Airflow layer (event_service_airflow)."""

from __future__ import annotations

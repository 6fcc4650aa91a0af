"""Airflow DAG es_preproduction: the scheduled pre-production test of the event service (daily by default)."""

from __future__ import annotations

from event_service_airflow import settings
from event_service_airflow.preproduction import build_preproduction_dag

dag = build_preproduction_dag(settings.load())

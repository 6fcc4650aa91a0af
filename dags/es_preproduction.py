"""Airflow DAG es_preproduction: the scheduled pre-production test of the event service (daily by default)."""

from __future__ import annotations

from pathlib import Path

from event_service_airflow.factory import FactorySettings
from event_service_airflow.preproduction import build_preproduction_dag

dag = build_preproduction_dag(FactorySettings.from_config(Path(__file__).resolve().parent.parent / "tasks"))

"""Airflow DAGs for event-service tasks: one DAG es_<name> per spec in tasks/ and per task in the ledger."""

from __future__ import annotations

from pathlib import Path

from event_service_airflow.factory import publish_dags

publish_dags(globals(), default_tasks_folder=Path(__file__).resolve().parent.parent / "tasks")

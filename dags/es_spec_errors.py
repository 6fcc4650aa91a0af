"""Airflow DAG file that holds no DAG: it fails to import, naming file and field, while a task spec is broken.

Airflow records import errors per Python file. The task DAGs come from es_tasks.py, which leaves broken
specs out so that every other DAG still loads; this file makes the broken ones visible as an import error.
"""

from __future__ import annotations

from pathlib import Path

from event_service_airflow.factory import raise_for_broken_specs

raise_for_broken_specs(default_tasks_folder=Path(__file__).resolve().parent.parent / "tasks")

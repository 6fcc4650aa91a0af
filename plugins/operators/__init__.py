"""Airflow operators of the event service: register, pilot (mapped), merge (mapped), register output, cleanup."""

from __future__ import annotations

from event_service_airflow.operators.merge import MergeOperator
from event_service_airflow.operators.output import CleanupOperator, RegisterOutputOperator
from event_service_airflow.operators.pilot import RunPilotOperator
from event_service_airflow.operators.register import RegisterTaskOperator

__all__ = ["CleanupOperator", "MergeOperator", "RegisterOutputOperator", "RegisterTaskOperator", "RunPilotOperator"]

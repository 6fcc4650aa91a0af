"""Airflow sensors of the event service: the deferrable completion sensor and its trigger."""

from __future__ import annotations

from event_service_airflow.sensors.completion import TaskCompleteSensor, TaskCompleteTrigger

__all__ = ["TaskCompleteSensor", "TaskCompleteTrigger"]

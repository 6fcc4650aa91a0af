"""Airflow triggers of the event service: the completion trigger the completion sensor defers to."""

from __future__ import annotations

from event_service_airflow.triggers.completion import TaskCompleteTrigger

__all__ = ["TaskCompleteTrigger"]

"""Airflow sensors of the event service: the deferrable completion sensor (its trigger: ``triggers``)."""

from __future__ import annotations

from event_service_airflow.sensors.completion import TaskCompleteSensor

__all__ = ["TaskCompleteSensor"]

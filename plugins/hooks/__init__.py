"""Airflow hooks of the event service (filled by the Airflow-layer issue)."""

from __future__ import annotations

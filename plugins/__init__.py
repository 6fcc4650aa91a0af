"""The thin Airflow layer of the event service, installed as the import package ``event_service_airflow``."""

from __future__ import annotations

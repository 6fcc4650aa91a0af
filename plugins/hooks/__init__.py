"""Airflow hooks of the event service: connections turned into a ledger and object stores."""

from __future__ import annotations

from event_service_airflow.hooks.ledger import LedgerHook
from event_service_airflow.hooks.store import ObjectStoreHook

__all__ = ["LedgerHook", "ObjectStoreHook"]

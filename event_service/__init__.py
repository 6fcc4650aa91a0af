"""The event-service core: task specs, the event ledger, the dispatch API; no Airflow imports."""

from __future__ import annotations

__version__ = "0.1.0"

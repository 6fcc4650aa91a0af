"""The event ledger: one row per event range, every transition recorded, on PostgreSQL or SQLite."""

from __future__ import annotations

from event_service.ledger.ledger import Ledger
from event_service.ledger.records import RangeOutput, TaskRecord, hash_token
from event_service.ledger.rules import RangeRow

__all__ = ["Ledger", "RangeOutput", "RangeRow", "TaskRecord", "hash_token"]

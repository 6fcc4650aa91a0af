"""Tests of event_service.ledger."""

from __future__ import annotations

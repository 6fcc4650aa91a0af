"""Tests of the event_service.api package."""

from __future__ import annotations

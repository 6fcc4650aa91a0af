"""Tests of event_service.cli."""

from __future__ import annotations

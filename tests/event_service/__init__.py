"""Tests of the event_service package."""

from __future__ import annotations

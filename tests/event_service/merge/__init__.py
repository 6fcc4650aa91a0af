"""Tests of event_service.merge."""

from __future__ import annotations

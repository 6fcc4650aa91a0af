"""Reference payloads that speak the event-service payload protocol."""

from __future__ import annotations

"""The dispatch API: its app (``app``), routes (``routes``, monitor, PanDA), error table (``problems``), HTTP client."""

from __future__ import annotations

"""PanDA-compatible endpoints: PanDA pilots take event ranges of this service's tasks, as from a PanDA server."""

from __future__ import annotations

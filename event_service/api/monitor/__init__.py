"""Monitoring: read-only views of the tasks in the ledger, as JSON and as a page that refreshes by itself."""

from __future__ import annotations

"""Fault-injection suite: one real task on PostgreSQL and SeaweedFS while runners, store and database fail."""

from __future__ import annotations

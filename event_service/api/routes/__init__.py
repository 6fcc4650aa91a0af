"""The dispatch API's own routes under PREFIX: the service's health, the tasks, and the workers' dispatch calls."""

from __future__ import annotations

PREFIX = "/api/v1"

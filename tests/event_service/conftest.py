"""Fixtures for the core tests: a ledger on each backend, task specs."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from event_service.ledger import Ledger
from event_service.spec import TaskSpec


def spec_data(name: str = "demo", events: tuple[int, ...] = (25,), per_range: int = 10,
              **overrides: Any) -> dict[str, Any]:
    """A valid task spec as a mapping, with one input file per entry of ``events``."""
    data: dict[str, Any] = {
        "name": name,
        "inputs": [{"lfn": f"EVNT.{name}._{n:06d}.root", "url": f"file:///data/EVNT.{name}._{n:06d}.root",
                    "events": count} for n, count in enumerate(events, start=1)],
        "events_per_range": per_range,
        "max_attempts": 3,
        "lease_seconds": 60,
        "payload": {"command": "toysim --cost-ms 5"},
        "workers": 4,
        "object_store": {"url": "file:///var/tmp/es-objects"},
        "merge": {"output_url": "file:///var/tmp/es-results", "max_events_per_file": 100000},
    }
    data.update(overrides)
    return data


def make_spec(**kwargs: Any) -> TaskSpec:
    return TaskSpec.parse(spec_data(**kwargs))


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def ledger_url(request: pytest.FixtureRequest) -> str:
    """The URL of an empty ledger database, once on SQLite and once on PostgreSQL."""
    if request.param == "sqlite":
        return str(request.getfixturevalue("sqlite_url"))
    return str(request.getfixturevalue("pg_url"))


@pytest.fixture
def ledger(ledger_url: str) -> Iterator[Ledger]:
    with Ledger(ledger_url) as opened:
        yield opened

"""Fixtures for the dispatch API tests: an app over a ledger on each backend, and its tokens."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from fastapi.testclient import TestClient

from event_service.api.app import create_app
from event_service.ledger import Ledger
from tests.event_service.conftest import spec_data

ADMIN = "admin-secret-token"


@dataclass
class Api:
    client: TestClient
    ledger: Ledger
    tokens: dict[str, str]

    def auth(self, task: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[task] if task else ADMIN}"}


@pytest.fixture
def api(ledger: Ledger) -> Iterator[Api]:
    with TestClient(create_app(ledger, ADMIN)) as client:
        tokens = {}
        for name in ("alpha", "beta"):
            reply = client.post("/api/v1/tasks", json=spec_data(name=name, events=(30,)),
                                headers={"Authorization": f"Bearer {ADMIN}"})
            assert reply.status_code == 201, reply.text
            tokens[name] = reply.json()["token"]
        yield Api(client, ledger, tokens)

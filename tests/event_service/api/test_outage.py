"""A database outage (PostgreSQL stopped with ``-m immediate``) answers 503 with Retry-After on every route that
reads the ledger — PanDA's in its own form — never a 500 or a traceback; service resumes when it is back."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from event_service.api.app import create_app
from event_service.ledger import Ledger
from tests.event_service.conftest import spec_data
from tests.pg import ThrowawayCluster

pytestmark = pytest.mark.postgres

ADMIN = "admin-outage-token"
PANDA = "panda-outage-token"


@pytest.fixture(scope="module")
def cluster() -> Iterator[ThrowawayCluster]:
    with ThrowawayCluster.running() as running:
        yield running


@pytest.fixture
def served(cluster: ThrowawayCluster) -> Iterator[tuple[TestClient, str]]:
    url = cluster.url.replace("postgresql://", "postgresql+psycopg2://")
    with Ledger(url) as ledger, TestClient(create_app(ledger, ADMIN, panda_token=PANDA),
                                           raise_server_exceptions=False) as client:
        spec = spec_data(name="outage", events=(30,), panda={"queues": ["Q1"]},
                         object_store={"url": "s3://bucket/ranges", "endpoint_url": "http://127.0.0.1:9"})
        reply = client.post("/api/v1/tasks", json=spec, headers={"Authorization": f"Bearer {ADMIN}"})
        assert reply.status_code == 201, reply.text
        yield client, reply.json()["token"]
        ledger.delete_task("outage")


def calls(token: str) -> list[tuple[str, str, dict[str, Any]]]:
    task, admin, panda = ({"Authorization": f"Bearer {t}"} for t in (token, ADMIN, PANDA))
    form = {**panda, "Content-Type": "application/x-www-form-urlencoded", "Accept": "application/json"}
    base = "/api/v1/tasks/outage"
    return [
        ("GET", "/api/v1/tasks", {"headers": admin}),
        ("POST", "/api/v1/tasks", {"headers": admin, "json": spec_data(name="another", events=(10,))}),
        ("GET", base, {"headers": task}),
        ("GET", f"{base}/spec", {"headers": task}),
        ("GET", f"{base}/ranges/outage.1.0-9", {"headers": task}),
        ("POST", f"{base}/claim", {"headers": task, "json": {"worker": "w1", "n": 1}}),
        ("POST", f"{base}/update", {"headers": task, "json": {"worker": "w1", "updates": [
            {"range_id": "outage.1.0-9", "status": "running"}]}}),
        ("POST", f"{base}/heartbeat", {"headers": task, "json": {"worker": "w1"}}),
        ("POST", f"{base}/uploads", {"headers": task, "json": {
            "worker": "w1", "range_id": "outage.1.0-9", "attempt": 1, "file_name": "out.root",
            "adler32": "00000001", "size": 0, "content_md5": "1B2M2Y8AsgTpgAmY7PhCfg=="}}),
        ("POST", f"{base}/cancel", {"headers": admin}),
        ("GET", "/metrics", {"headers": admin}),
        ("GET", "/api/v1/monitor/tasks", {"headers": admin}),
        ("GET", "/api/v1/monitor/tasks/outage", {"headers": admin}),
        ("POST", "/server/panda/getJob", {"headers": form, "content": "siteName=Q1&computingElement=Q1&node=n1"}),
        ("POST", "/server/panda/checkEventsAvailability", {"headers": form,
                                                          "content": "pandaID=1&jobsetID=1&taskID=1"}),
        ("GET", "/server/panda/queuedata/Q1", {}),
        ("GET", "/server/panda/schedconfig", {}),
        ("GET", "/server/panda/storagedata", {}),
    ]


def test_every_route_answers_503_while_the_database_is_down(cluster: ThrowawayCluster,
                                                             served: tuple[TestClient, str]) -> None:
    client, token = served
    cluster.stop("immediate")
    try:
        replies = {(method, path): client.request(method, path, **kwargs) for method, path, kwargs in calls(token)}
    finally:
        cluster.start()
    wrong = {f"{method} {path}": (reply.status_code, reply.text[:200]) for (method, path), reply in replies.items()
             if reply.status_code != 503 or "Retry-After" not in reply.headers}
    assert wrong == {}, sorted(wrong)
    for (_method, path), reply in replies.items():
        assert "Traceback" not in reply.text and "sqlalchemy" not in reply.text.lower(), (path, reply.text)
        if path.startswith("/server/panda/") and reply.headers["content-type"].startswith("application/json"):
            body = reply.json()
            assert body.get("StatusCode", 30) == 30, (path, body)
    # Back: the same client goes on, nothing was changed by the calls it made during the outage.
    reply = client.post("/api/v1/tasks/outage/claim", json={"worker": "w1", "n": 1},
                        headers={"Authorization": f"Bearer {token}"})
    assert reply.status_code == 200, reply.text
    assert [r["range_id"] for r in reply.json()["ranges"]] == ["outage.1.0-9"]

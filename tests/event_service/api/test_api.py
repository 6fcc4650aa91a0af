"""The dispatch API contract: replies, status codes, auth, and that a refused request changes nothing."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import text

from tests.event_service.api.conftest import ADMIN, Api
from tests.event_service.conftest import spec_data

FINISHED = {"status": "finished", "output": {"key": "alpha/alpha.1.0-9.1.root", "adler32": "0A0B0C0D", "size": 12},
            "cpu_s": 3.5, "wall_s": 4.0}


def ledger_state(api: Api) -> list[tuple[Any, ...]]:
    with api.ledger.engine.connect() as conn:
        return [tuple(row) for table in ("es_tasks", "es_ranges", "es_transitions", "es_workers")
                for row in conn.execute(text(f"SELECT * FROM {table} ORDER BY 1, 2"))]


def test_round_trip(api: Api) -> None:
    c, h = api.client, api.auth("alpha")
    claim = c.post("/api/v1/tasks/alpha/claim", json={"worker": "w1", "n": 2}, headers=h)
    assert claim.status_code == 200
    body = claim.json()
    assert body["lease_seconds"] == 60 and body["state"] == "running"
    assert [r["range_id"] for r in body["ranges"]] == ["alpha.1.0-9", "alpha.1.10-19"]
    assert set(body["ranges"][0]) == {"range_id", "lfn", "guid", "url", "first_event", "last_event", "attempt"}
    update = c.post("/api/v1/tasks/alpha/update", headers=h, json={"worker": "w1", "updates": [
        {"range_id": "alpha.1.0-9", **FINISHED},
        {"range_id": "alpha.1.10-19", "status": "failed", "error_code": 1305, "error": "payload crashed"}]})
    assert update.status_code == 200
    assert [(r["result"], r["status"]) for r in update.json()["results"]] == [("accepted", "finished"),
                                                                             ("accepted", "ready")]
    repeat = c.post("/api/v1/tasks/alpha/update", headers=h, json={"worker": "w1", "updates": [
        {"range_id": "alpha.1.0-9", **FINISHED}]})
    assert repeat.json()["results"][0]["result"] == "duplicate"
    beat = c.post("/api/v1/tasks/alpha/heartbeat", json={"worker": "w1"}, headers=h).json()
    assert beat == {"renewed": 0, "released": 0, "lease_seconds": 60, "state": "running", "command": None}
    status = c.get("/api/v1/tasks/alpha", headers=h).json()
    assert (status["events_done"], status["events_total"], status["live_workers"]) == (10, 30, 1)
    assert {k: v for k, v in status["counts"].items() if v} == {"finished": 1, "ready": 2}
    cancel = c.post("/api/v1/tasks/alpha/cancel", headers=api.auth())
    assert cancel.status_code == 200 and cancel.json()["state"] == "cancelled"
    revoked = c.post("/api/v1/tasks/alpha/heartbeat", json={"worker": "w1"}, headers=h)  # the token is revoked
    assert (revoked.status_code, revoked.json()["reason"]) == (403, "token_revoked")
    admin = api.auth()
    assert c.post("/api/v1/tasks/alpha/heartbeat", json={"worker": "w1"}, headers=admin).json()["command"] == "stop"
    assert c.post("/api/v1/tasks/alpha/claim", json={"worker": "w1"}, headers=admin).json()["state"] == "cancelled"
    assert [t["task"] for t in c.get("/api/v1/tasks", headers=api.auth()).json()] == ["alpha", "beta"]


def test_create_returns_a_token_once_and_refuses_duplicates(api: Api) -> None:
    reply = api.client.post("/api/v1/tasks", json=spec_data(name="gamma", events=(100,)), headers=api.auth())
    assert reply.status_code == 201
    assert reply.json()["task"] == "gamma" and reply.json()["ranges"] == 10 and len(reply.json()["token"]) >= 40
    before = ledger_state(api)
    again = api.client.post("/api/v1/tasks", json=spec_data(name="gamma", events=(5,)), headers=api.auth())
    assert again.status_code == 409 and "already exists" in again.json()["detail"]
    assert ledger_state(api) == before
    with api.ledger.engine.connect() as conn:
        stored = conn.execute(text("SELECT token_hash FROM es_tasks WHERE name = 'gamma'")).scalar_one()
    assert reply.json()["token"] not in stored and len(stored) == 64


def test_a_worker_reads_its_task_spec(api: Api) -> None:
    reply = api.client.get("/api/v1/tasks/alpha/spec", headers=api.auth("alpha"))
    assert reply.status_code == 200
    assert reply.json()["payload"] == {"command": "toysim --cost-ms 5"}
    assert reply.json()["inputs"][0]["guid"] == api.ledger.task_spec("alpha").inputs[0].guid
    assert api.client.get("/api/v1/tasks/alpha/spec", headers=api.auth("beta")).status_code == 403


ENDPOINTS = [("GET", "", None), ("GET", "/spec", None), ("POST", "/claim", {"worker": "w1", "n": 1}),
             ("POST", "/update", {"worker": "w1", "updates": [{"range_id": "alpha.1.0-9", "status": "running"}]}),
             ("POST", "/heartbeat", {"worker": "w1"}), ("POST", "/cancel", None)]


@pytest.mark.parametrize(("method", "path", "body"), ENDPOINTS)
def test_a_task_token_works_on_its_task_only(api: Api, method: str, path: str, body: Any) -> None:
    api.client.post("/api/v1/tasks/alpha/claim", json={"worker": "w1", "n": 1}, headers=api.auth("alpha"))
    before = ledger_state(api)
    url = f"/api/v1/tasks/alpha{path}"
    for headers, code in [({}, 401), ({"Authorization": "Bearer wrong"}, 403),
                          (api.auth("beta"), 403), ({"Authorization": "Basic YWxhZGRpbjpvcGVu"}, 401)]:
        reply = api.client.request(method, url, json=body, headers=headers)
        assert reply.status_code == code, (headers, reply.text)
        assert set(reply.json()) <= {"detail", "reason"}
    assert ledger_state(api) == before
    own = api.client.request(method, url, json=body, headers=api.auth("alpha"))
    assert own.status_code == (403 if path == "/cancel" else 200)  # cancelling needs the admin token


def test_creating_and_listing_need_the_admin_token(api: Api) -> None:
    before = ledger_state(api)
    spec = spec_data(name="gamma")
    assert api.client.post("/api/v1/tasks", json=spec).status_code == 401
    assert api.client.post("/api/v1/tasks", json=spec, headers=api.auth("alpha")).status_code == 403
    assert api.client.get("/api/v1/tasks", headers=api.auth("alpha")).status_code == 403
    assert ledger_state(api) == before


def test_unknown_task_and_range_are_404(api: Api) -> None:
    before = ledger_state(api)
    assert api.client.get("/api/v1/tasks/nosuch", headers=api.auth()).status_code == 404
    assert api.client.post("/api/v1/tasks/nosuch/cancel", headers=api.auth()).status_code == 404
    reply = api.client.post("/api/v1/tasks/alpha/update", headers=api.auth("alpha"), json={
        "worker": "w1", "updates": [{"range_id": "alpha.1.0-9", "status": "running"},
                                    {"range_id": "alpha.7.0-9", "status": "running"}]})
    assert reply.status_code == 404 and "alpha.7.0-9" in reply.json()["detail"]
    assert ledger_state(api) == before


MALFORMED: list[tuple[str, Any, str]] = [
    ("/claim", {"n": 1}, "body.worker"),
    ("/claim", {"worker": "w1", "n": 0}, "body.n"),
    ("/claim", {"worker": "w1", "n": 1001}, "body.n"),
    ("/claim", {"worker": "", "n": 1}, "body.worker"),
    ("/claim", {"worker": "w 1; drop table", "n": 1}, "body.worker"),
    ("/claim", {"worker": "w1", "n": "lots"}, "body.n"),
    ("/claim", {"worker": "w1", "extra": True}, "body.extra"),
    ("/claim", [1, 2], "body"),
    ("/update", {"worker": "w1", "updates": []}, "body.updates"),
    ("/update", {"worker": "w1", "updates": [{"range_id": "alpha.1.0-9", "status": "done"}]}, "body.updates.0.status"),
    ("/update", {"worker": "w1", "updates": [{"range_id": "alpha.1.0-9", "status": "finished"}]}, "body.updates.0"),
    ("/update", {"worker": "w1", "updates": [{"range_id": "alpha.1.0-9", "status": "finished",
                                             "output": {"key": "../../etc/passwd", "adler32": "0a0b0c0d",
                                                        "size": 1}}]}, "body.updates.0.output.key"),
    ("/update", {"worker": "w1", "updates": [{"range_id": "alpha.1.0-9", "status": "finished",
                                             "output": {"key": "k", "adler32": "xyz", "size": 1}}]},
     "body.updates.0.output.adler32"),
    ("/update", {"worker": "w1", "updates": [{"range_id": "alpha.1.0-9", "status": "finished",
                                             "output": {"key": "k", "adler32": "0a0b0c0d", "size": -1}}]},
     "body.updates.0.output.size"),
    ("/update", {"worker": "w1", "updates": [{"range_id": "alpha.1.0-9", "status": "failed", "cpu_s": -3}]},
     "body.updates.0.cpu_s"),
    ("/update", {"worker": "w1", "updates": [{"range_id": "alpha.1.0-9", "status": "running"},
                                            {"range_id": "alpha.1.0-9", "status": "running"}]}, "appears twice"),
    ("/update", {"worker": "w1", "updates": [{"range_id": "alpha.1.0-9", "status": "running"}] * 1001},
     "body.updates"),
    ("/heartbeat", {}, "body.worker"),
    ("/heartbeat", "not json at all", "body"),
]


@pytest.mark.parametrize(("path", "body", "field"), MALFORMED)
def test_malformed_requests_name_the_field_and_change_nothing(api: Api, path: str, body: Any, field: str) -> None:
    api.client.post("/api/v1/tasks/alpha/claim", json={"worker": "w1", "n": 1}, headers=api.auth("alpha"))
    before = ledger_state(api)
    if isinstance(body, str):
        reply = api.client.post(f"/api/v1/tasks/alpha{path}", content=body,
                                headers={**api.auth("alpha"), "Content-Type": "application/json"})
    else:
        reply = api.client.post(f"/api/v1/tasks/alpha{path}", json=body, headers=api.auth("alpha"))
    assert reply.status_code == 422, reply.text
    assert field in reply.json()["message"]
    assert ledger_state(api) == before


def test_a_bad_spec_names_its_fields_and_creates_nothing(api: Api) -> None:
    before = ledger_state(api)
    bad = spec_data(name="Bad Name", events=(0,))
    bad["object_store"] = {"url": "ftp://x/y"}
    reply = api.client.post("/api/v1/tasks", json=bad, headers=api.auth())
    assert reply.status_code == 422
    message = reply.json()["message"]
    for field in ("body.name", "body.inputs.0.events", "body.object_store.url"):
        assert field in message
    assert ledger_state(api) == before


def test_oversized_body_is_413(api: Api) -> None:
    before = ledger_state(api)
    blob = b'{"worker": "w1", "n": 1, "pad": "' + b"x" * (17 * 1024 * 1024) + b'"}'
    reply = api.client.post("/api/v1/tasks/alpha/claim", content=blob,
                            headers={**api.auth("alpha"), "Content-Type": "application/json"})
    assert reply.status_code == 413
    chunked = api.client.post("/api/v1/tasks/alpha/claim", content=iter([blob[:1 << 20]] * 17),
                              headers={**api.auth("alpha"), "Content-Type": "application/json"})
    assert chunked.status_code == 413
    assert ledger_state(api) == before


def test_openapi_is_served(api: Api) -> None:
    schema = api.client.get("/openapi.json").json()
    assert {"/api/v1/tasks", "/api/v1/tasks/{task}", "/api/v1/tasks/{task}/claim", "/api/v1/tasks/{task}/update",
            "/api/v1/tasks/{task}/heartbeat", "/api/v1/tasks/{task}/cancel", "/server/panda/{method}",
            "/server/panda/queuedata/{queue}"} <= set(schema["paths"])
    assert "bearer" in str(schema["components"]["securitySchemes"]).lower()
    assert api.client.get("/docs").status_code == 200
    assert api.client.get("/api/v1/health").json()["status"] == "ok"


def test_admin_token_can_act_on_any_task(api: Api) -> None:
    reply = api.client.post("/api/v1/tasks/beta/claim", json={"worker": "operator", "n": 1}, headers=api.auth())
    assert reply.status_code == 200 and len(reply.json()["ranges"]) == 1
    assert ADMIN not in reply.text


def test_a_retried_claim_is_answered_with_the_same_ranges(api: Api) -> None:
    body = {"worker": "w1", "n": 2, "claim_id": "5f1c0a7e9b2d4c1f"}
    first = api.client.post("/api/v1/tasks/alpha/claim", json=body, headers=api.auth("alpha")).json()
    again = api.client.post("/api/v1/tasks/alpha/claim", json=body, headers=api.auth("alpha")).json()
    assert again == first and len(first["ranges"]) == 2
    fresh = api.client.post("/api/v1/tasks/alpha/claim", json={**body, "claim_id": "0c9d8e7f6a5b4c3d"},
                            headers=api.auth("alpha")).json()
    assert [r["range_id"] for r in fresh["ranges"]] == ["alpha.1.20-29"]
    bad = api.client.post("/api/v1/tasks/alpha/claim", json={**body, "claim_id": "no spaces"},
                          headers=api.auth("alpha"))
    assert bad.status_code == 422 and bad.json()["detail"][0]["field"] == "body.claim_id"

"""The security model: task tokens scoped to one task and revoked by a cancel, outputs kept inside the task's
prefix and stores, and uploads pre-signed only for the worker that holds the range."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path
from typing import Any

import pytest
import requests
from sqlalchemy import event

from event_service.checksums import adler32_bytes
from event_service.stores import S3Store
from tests.event_service.api.conftest import Api
from tests.event_service.api.test_api import ENDPOINTS, ledger_state
from tests.event_service.conftest import spec_data
from tests.servers import S3Server

WORKER_ENDPOINTS = [e for e in ENDPOINTS if e[1] != "/cancel"]


def claim(api: Api, task: str, worker: str = "w1", n: int = 1) -> list[dict[str, Any]]:
    reply = api.client.post(f"/api/v1/tasks/{task}/claim", json={"worker": worker, "n": n}, headers=api.auth(task))
    assert reply.status_code == 200, reply.text
    ranges: list[dict[str, Any]] = reply.json()["ranges"]
    return ranges


def test_cancelling_a_task_revokes_its_token(api: Api) -> None:
    claim(api, "alpha")
    assert api.client.post("/api/v1/tasks/alpha/cancel", headers=api.auth()).status_code == 200
    before = ledger_state(api)
    for method, path, body in WORKER_ENDPOINTS:
        reply = api.client.request(method, f"/api/v1/tasks/alpha{path}", json=body, headers=api.auth("alpha"))
        assert reply.status_code == 403, (path, reply.text)
        assert reply.json() == {"detail": "task 'alpha' was cancelled: its token is revoked",
                                "reason": "token_revoked"}
    assert ledger_state(api) == before
    # The admin still reads the cancelled task; the other task's token still opens the other task.
    assert api.client.get("/api/v1/tasks/alpha", headers=api.auth()).json()["state"] == "cancelled"
    assert api.client.get("/api/v1/tasks/beta", headers=api.auth("beta")).status_code == 200


def test_a_token_does_not_tell_which_other_tasks_exist(api: Api) -> None:
    api.ledger.task("beta")  # a known task's record is cached; an unknown name is looked up in the database
    statements: list[str] = []

    def count(*args: Any) -> None:
        if not str(args[2]).startswith("BEGIN"):  # SQLite's transaction start, which PostgreSQL does not show
            statements.append(str(args[2]))

    for task in ("beta", "nosuch"):
        event.listen(api.ledger.engine, "before_cursor_execute", count)
        try:
            reply = api.client.get(f"/api/v1/tasks/{task}", headers=api.auth("alpha"))
        finally:
            event.remove(api.ledger.engine, "before_cursor_execute", count)
        assert reply.status_code == 403
        assert reply.json() == {"detail": f"the token is not valid for task {task!r}", "reason": "token_invalid"}
        # the same work either way, one query: the answer's timing does not tell which tasks exist
        assert len(statements) == 1, statements
        statements.clear()


def test_one_tasks_token_cannot_read_or_change_another_task(api: Api) -> None:
    claim(api, "beta", worker="b1")
    before = ledger_state(api)
    for method, path, body in ENDPOINTS + [("GET", "/ranges/beta.1.0-9", None)]:
        body = body and {**body, "worker": "w1"}
        if path == "/update":
            body = {"worker": "b1", "updates": [{"range_id": "beta.1.0-9", "status": "failed"}]}
        reply = api.client.request(method, f"/api/v1/tasks/beta{path}", json=body, headers=api.auth("alpha"))
        assert reply.status_code == 403, (path, reply.text)
    assert ledger_state(api) == before


def test_an_output_outside_the_tasks_prefix_or_stores_is_rejected(api: Api) -> None:
    claim(api, "alpha")
    before = ledger_state(api)
    outputs = {
        "beta/beta.1.0-9/1/HITS.root": "output key 'beta/beta.1.0-9/1/HITS.root' lies outside the task's prefix "
                                       "'alpha/'",
        "alphabet/x.root": "lies outside the task's prefix 'alpha/'",
    }
    for key, reason in outputs.items():
        reply = api.client.post("/api/v1/tasks/alpha/update", headers=api.auth("alpha"), json={
            "worker": "w1", "updates": [{"range_id": "alpha.1.0-9", "status": "finished",
                                         "output": {"key": key, "adler32": "0a0b0c0d", "size": 1}}]})
        [result] = reply.json()["results"]
        assert (result["result"], result["status"]) == ("rejected", "sent")
        assert reason in result["reason"]
    reply = api.client.post("/api/v1/tasks/alpha/update", headers=api.auth("alpha"), json={
        "worker": "w1", "updates": [{"range_id": "alpha.1.0-9", "status": "finished", "output": {
            "key": "alpha/alpha.1.0-9/1/HITS.root", "adler32": "0a0b0c0d", "size": 1,
            "store": "s3://someone-elses-bucket/x"}}]})
    [result] = reply.json()["results"]
    assert result["result"] == "rejected"
    assert result["reason"] == ("output store 's3://someone-elses-bucket/x' is not a store of task 'alpha' "
                                "(its failover: none)")
    assert ledger_state(api) == before


# ------------------------------------------------------------------------------------- pre-signed uploads

@pytest.fixture
def s3_task(api: Api, s3_server: S3Server, s3_bucket: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """Task ``gamma`` on the S3 server; this process (the dispatch API) holds the store's credentials."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_server.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_server.secret_key)
    monkeypatch.setenv("AWS_DEFAULT_REGION", s3_server.region)
    spec = spec_data(name="gamma", events=(30,), object_store={
        "url": f"s3://{s3_bucket}/ranges", "endpoint_url": s3_server.endpoint_url})
    reply = api.client.post("/api/v1/tasks", json=spec, headers=api.auth())
    assert reply.status_code == 201, reply.text
    api.tokens["gamma"] = reply.json()["token"]
    return "gamma"


def upload_request(range_id: str, data: bytes, **fields: Any) -> dict[str, Any]:
    return {"worker": "w1", "range_id": range_id, "attempt": 1, "file_name": "HITS.pool.root",
            "adler32": adler32_bytes(data), "size": len(data),
            "content_md5": base64.b64encode(hashlib.md5(data).digest()).decode(), **fields}


def test_the_holder_gets_an_upload_bound_to_key_checksum_and_size(api: Api, s3_task: str, s3_server: S3Server,
                                                                  s3_bucket: str) -> None:
    [claimed] = claim(api, s3_task)
    data = b"the range's output bytes"
    reply = api.client.post(f"/api/v1/tasks/{s3_task}/uploads", headers=api.auth(s3_task),
                            json=upload_request(claimed["range_id"], data))
    assert reply.status_code == 200, reply.text
    grant = reply.json()
    key = f"gamma/{claimed['range_id']}/1/HITS.pool.root"
    assert (grant["key"], grant["method"], grant["store"]) == (key, "PUT", None)

    # Other metadata than the signed one is refused by the store itself; the signed upload is taken.
    forged = {**grant["headers"], "x-amz-meta-adler32": "00000001"}
    assert requests.put(grant["url"], data=data, headers=forged, timeout=30).status_code == 403
    # Other bytes of the same size within the grant's lifetime: the store checks them against the signed MD5.
    other = bytes(reversed(data))
    assert requests.put(grant["url"], data=other, headers=grant["headers"], timeout=30).status_code == 400
    assert requests.put(grant["url"], data=data, headers=grant["headers"], timeout=30).status_code == 200
    # The grant creates only: replayed, it never overwrites.
    assert requests.put(grant["url"], data=data, headers=grant["headers"], timeout=30).status_code == 412
    with S3Store(s3_bucket, "ranges", endpoint_url=s3_server.endpoint_url, region=s3_server.region,
                 access_key=s3_server.access_key, secret_key=s3_server.secret_key) as store:
        stored = store.head(key)
    assert stored is not None and (stored.adler32, stored.size) == (adler32_bytes(data), len(data))


def test_uploads_are_refused_to_all_but_the_holder(api: Api, s3_task: str) -> None:
    [claimed] = claim(api, s3_task)
    range_id = claimed["range_id"]
    url = f"/api/v1/tasks/{s3_task}/uploads"
    before = ledger_state(api)
    refused: list[tuple[dict[str, str], dict[str, Any], int, str]] = [
        (api.auth(s3_task), upload_request(range_id, b"x", worker="w2"), 409,
         "worker 'w2' does not hold it in attempt 1"),
        (api.auth(s3_task), upload_request(range_id, b"x", attempt=2), 409, "does not hold it in attempt 2"),
        (api.auth(s3_task), upload_request("gamma.1.10-19", b"x"), 409, "is ready"),
        (api.auth(s3_task), upload_request("gamma.9.0-9", b"x"), 404, "has no event range 'gamma.9.0-9'"),
        (api.auth(s3_task), upload_request(range_id, b"x", file_name="../../beta/x.root"), 422,
         "filename must be a single key segment without '/'"),
        (api.auth(s3_task), upload_request(range_id, b"x", file_name=".hidden"), 422, "starts with '.'"),
        (api.auth(s3_task), upload_request(range_id, b"x", size=6 * 1024**3), 422, "size"),
        (api.auth(s3_task), upload_request(range_id, b"x", content_md5="00"), 422, "body.content_md5"),
        (api.auth(s3_task), {k: v for k, v in upload_request(range_id, b"x").items() if k != "content_md5"}, 422,
         "body.content_md5: Field required"),
        (api.auth(s3_task), upload_request(range_id, b"x", failover=True), 409, "names no failover store"),
        (api.auth("alpha"), upload_request(range_id, b"x"), 403, "not valid for task 'gamma'"),
    ]
    for headers, body, code, words in refused:
        reply = api.client.post(url, headers=headers, json=body)
        assert reply.status_code == code, (body, reply.text)
        assert words in reply.text, reply.text
    assert ledger_state(api) == before


def test_a_store_that_cannot_sign_says_so(api: Api) -> None:
    [claimed] = claim(api, "alpha")  # alpha's store is a local directory
    reply = api.client.post("/api/v1/tasks/alpha/uploads", headers=api.auth("alpha"),
                            json=upload_request(claimed["range_id"], b"x"))
    assert reply.status_code == 422
    assert reply.json()["detail"] == ("the store file:///var/tmp/es-objects of task 'alpha' cannot sign uploads; "
                                      "runners of this task need their own access to it")


def test_a_server_without_store_credentials_says_so(api: Api, s3_server: S3Server, s3_bucket: str,
                                                    monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    spec = spec_data(name="delta", events=(30,), object_store={
        "url": f"s3://{s3_bucket}/ranges", "endpoint_url": s3_server.endpoint_url})
    api.tokens["delta"] = api.client.post("/api/v1/tasks", json=spec, headers=api.auth()).json()["token"]
    [claimed] = claim(api, "delta")
    reply = api.client.post("/api/v1/tasks/delta/uploads", headers=api.auth("delta"),
                            json=upload_request(claimed["range_id"], b"x"))
    assert reply.status_code == 422
    assert reply.json()["detail"].startswith(
        f"the dispatch API holds no credentials for the store s3://{s3_bucket}/ranges of task 'delta', so it "
        "cannot sign uploads (")


def test_nul_characters_are_refused_as_bad_input(api: Api) -> None:
    """PostgreSQL cannot store or compare text with NUL: each such request is a 422, never a 500."""
    claim(api, "alpha")
    before = ledger_state(api)
    refused = [
        ("GET", "/api/v1/tasks/al%00pha", api.auth("alpha"), None),
        ("GET", "/api/v1/tasks/alpha/ranges/alpha.1.0-9%00", api.auth("alpha"), None),
        ("GET", "/api/v1/monitor/tasks/al%00pha", api.auth(), None),
        ("GET", "/api/v1/monitor/tasks?window_s=60%00", api.auth(), None),
        ("POST", "/api/v1/tasks/alpha/claim", api.auth("alpha"), {"worker": "w1", "host": "node\u0000a"}),
        ("POST", "/api/v1/tasks/alpha/heartbeat", api.auth("alpha"), {"worker": "w1", "host": "\u0000"}),
        ("POST", "/api/v1/tasks/alpha/update", api.auth("alpha"), {"worker": "w1", "updates": [
            {"range_id": "alpha.1.0-9", "status": "failed", "error": "crash\u0000"}]}),
        ("POST", "/api/v1/tasks/alpha/update", api.auth("alpha"), {"worker": "w1", "updates": [
            {"range_id": "alpha.1.0-9\u0000", "status": "running"}]}),
        ("POST", "/api/v1/tasks", api.auth(), spec_data(name="gamma", payload={"command": "toysim\u0000"})),
    ]
    for method, path, headers, body in refused:
        reply = api.client.request(method, path, headers=headers, json=body)
        assert reply.status_code == 422, (path, body, reply.text)
        assert "NUL character" in reply.text, reply.text
    assert ledger_state(api) == before

"""The OpenAPI contract, property-based (schemathesis): no 5xx, replies as documented, refusals change nothing."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from fastapi import FastAPI
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.specs.openapi.checks import positive_data_acceptance
from sqlalchemy import text

from event_service.api.app import create_app
from event_service.api.panda.router import METHODS
from event_service.checksums import adler32_file
from event_service.ledger import Ledger
from event_service.merge.certify import Histogram, Validation
from event_service.merge.part import MergedFile
from event_service.merge.register import register_output
from event_service.messages import OutputRef, RangeUpdate
from event_service.stores import LocalStore
from tests.event_service.conftest import spec_data

ADMIN = "contract-admin-token"
PANDA = "contract-panda-token"
QUEUE = "ES_CONTRACT"
TABLES = ("es_tasks", "es_ranges", "es_transitions", "es_workers", "es_panda_jobs")
EXAMPLES_PER_OPERATION = 20


@dataclass
class World:
    """The app over a real SQLite ledger holding two tasks, one served to PanDA, with ranges in flight."""

    app: FastAPI
    ledger: Ledger
    tokens: dict[str, str]
    range_ids: list[str]
    panda_ids: list[int]
    panda_range_ids: list[str]
    requests: list[tuple[str, str, int]] = field(default_factory=list)

    def snapshot(self) -> list[tuple[Any, ...]]:
        with self.ledger.engine.connect() as conn:
            return [(table, *row) for table in TABLES
                    for row in conn.execute(text(f"SELECT * FROM {table} ORDER BY 1, 2"))]


@pytest.fixture
def world(sqlite_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[World]:
    # S3 keys for the server, so that it can sign uploads (signing needs no connection to the store).
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "contract-key")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "contract-secret")
    with Ledger(sqlite_url) as ledger:
        app = create_app(ledger, ADMIN, panda_token=PANDA)
        with TestClient(app) as client:
            admin = {"Authorization": f"Bearer {ADMIN}"}
            tokens = {}
            served = {"panda": {"queues": [QUEUE]},
                      "object_store": {"url": "s3://esbucket/ranges", "endpoint_url": "http://127.0.0.1:9"}}
            results = {"merge": {"output_url": (tmp_path / "results").as_uri()}}
            for name, extra in (("alpha", served), ("beta", results)):
                reply = client.post("/api/v1/tasks", headers=admin,
                                    json=spec_data(name=name, events=(30, 20), **extra))
                assert reply.status_code == 201, reply.text
                tokens[name] = reply.json()["token"]
            claimed = client.post("/api/v1/tasks/alpha/claim", json={"worker": "w1", "n": 2},
                                  headers={"Authorization": f"Bearer {tokens['alpha']}"})
            assert [r["range_id"] for r in claimed.json()["ranges"]] == list(HELD), claimed.text
            job = client.post("/server/panda/getJob", data={"siteName": QUEUE, "node": "wn1"},
                              headers={"Authorization": f"Bearer {PANDA}", "Accept": "application/json"})
            assert job.json()["StatusCode"] == 0, job.text
            panda_id = job.json()["PandaID"]
            handed = client.post("/server/panda/getEventRanges", data={"pandaID": panda_id, "nRanges": 2},
                                headers={"Authorization": f"Bearer {PANDA}", "Accept": "application/json"})
            assert handed.json()["StatusCode"] == 0 and len(handed.json()["eventRanges"]) == 2, handed.text
            register_with_validation(ledger, tmp_path)
            range_ids = [plan.range_id for name in tokens for plan in ledger.task_spec(name).event_ranges()]
            yield World(app, ledger, tokens, range_ids, [panda_id],
                        [r["eventRangeID"] for r in handed.json()["eventRanges"]])


MERGED = "beta.merged._000001.root"


def register_with_validation(ledger: Ledger, tmp_path: Path) -> None:
    """Beta's first range merged into a catalog file whose validation set lies beside it (the monitor reads it)."""
    [claimed] = ledger.claim("beta", "b1", 1).ranges
    ledger.update("beta", "b1", [RangeUpdate(range_id=claimed.range_id, status="finished", output=OutputRef(
        key=f"beta/{claimed.range_id}/1/HITS.root", adler32="00000001", size=1))])
    merged = tmp_path / "work" / MERGED
    merged.parent.mkdir()
    merged.write_bytes(b"merged" * 100)
    adler32, size = adler32_file(merged)
    validation = merged.with_name(f"{MERGED}.validation.json")
    validation.write_text(Validation(file_name=MERGED, events=10, histograms=[Histogram(
        name="nhits", branch="nhits", of="value", edges=[0.0, 1.0], counts=[10], entries=10)]).model_dump_json())
    register_output(ledger, "beta", MergedFile(1, MERGED, merged, 10, adler32, size, (claimed.range_id,), 1, 10),
                    LocalStore(tmp_path / "results"), "beta.merged", validation=[validation])


def _operations() -> list[tuple[str, str]]:
    document = create_app(lambda: Ledger("sqlite://"), ADMIN, panda_token=PANDA).openapi()
    return [(method.upper(), path) for path, item in document["paths"].items() for method in item]


OPERATIONS = _operations()


@pytest.fixture
def contract(world: World) -> schemathesis.BaseSchema:
    # The test sends the tokens itself (valid ones among them), so schemathesis generates none.
    config = schemathesis.Config.from_dict({"generation": {"with-security-parameters": False}})
    return schemathesis.openapi.from_asgi("/openapi.json", world.app, config=config)


def path_parameters(world: World, params: list[str]) -> st.SearchStrategy[dict[str, str]]:
    """Path parameters naming real tasks, ranges, methods and queues, and a few that do not exist."""
    choices = {"task": ["alpha", "beta", "nosuch"], "range_id": [*world.range_ids, "alpha.9.0-9", "x"],
               "method": [*METHODS, "getStatus"], "queue": [QUEUE, "OTHER_Q", "-bad"],
               "file_name": [MERGED, "nosuch.root"]}
    return st.fixed_dictionaries({name: st.sampled_from(choices.get(name, ["x"])) for name in params})


WORKERS = ("w1", "w2", "wn1")
HELD = ("alpha.1.0-9", "alpha.1.10-19")  # claimed by w1 in attempt 1 when the world is made
EMPTY_MD5 = "1B2M2Y8AsgTpgAmY7PhCfg=="  # Content-MD5 of no bytes
STATUSES = ("running", "finished", "failed", "fatal", "ready", "done", "cancelled")


def realistic_bodies(world: World, method: str, path: str) -> st.SearchStrategy[Any] | None:
    """Bodies as real clients send them, on the world's tasks, ranges and jobs, varied by hypothesis."""
    range_id = st.one_of(st.sampled_from(HELD), st.sampled_from(world.range_ids))  # w1 holds HELD
    output = st.fixed_dictionaries({"key": st.sampled_from(["alpha/a.root", "beta/b.root", "x/y.root"]),
                                    "adler32": st.sampled_from(["0a0b0c0d", "FFFFFFFF"]),
                                    "size": st.integers(0, 10**6)})
    update = st.one_of(
        st.fixed_dictionaries({"range_id": range_id,
                               "status": st.sampled_from(["running", "failed", "fatal", "ready"])},
                              optional={"error_code": st.text(max_size=8), "attempt": st.integers(1, 3)}),
        st.fixed_dictionaries({"range_id": range_id, "status": st.just("finished"), "output": output},
                              optional={"cpu_s": st.floats(0, 100), "attempt": st.integers(1, 3)}))
    if (method, path) == ("POST", "/api/v1/tasks"):
        return st.builds(lambda name, events, per: spec_data(name=name, events=tuple(events), per_range=per),
                         st.sampled_from(["gamma", "delta", "alpha", "g-1"]),
                         st.lists(st.integers(1, 60), min_size=1, max_size=3), st.integers(1, 30))
    if path.endswith("/claim"):
        return st.fixed_dictionaries({"worker": st.sampled_from(WORKERS)}, optional={"n": st.integers(1, 5)})
    if path.endswith("/heartbeat"):
        return st.fixed_dictionaries({"worker": st.sampled_from(WORKERS)}, optional={"restarted": st.booleans()})
    if path.endswith("/update"):
        return st.fixed_dictionaries({"worker": st.sampled_from(WORKERS), "updates": st.lists(
            update, min_size=1, max_size=3, unique_by=lambda u: u["range_id"])})
    if path.endswith("/uploads"):
        held = st.fixed_dictionaries({"worker": st.just("w1"), "range_id": st.sampled_from(HELD), "attempt": st.just(1),
                                      "file_name": st.just("out.root"), "adler32": st.just("0a0b0c0d"),
                                      "size": st.integers(0, 100), "content_md5": st.just(EMPTY_MD5)})
        return held | st.fixed_dictionaries({
            "worker": st.sampled_from(WORKERS), "range_id": range_id, "attempt": st.sampled_from([1, 1, 2]),
            "file_name": st.sampled_from(["out.root", "../x", "a b"]), "adler32": st.just("0a0b0c0d"),
            "size": st.integers(0, 100), "content_md5": st.sampled_from([EMPTY_MD5, "not-md5"])})
    if path == "/server/panda/{method}":
        panda_id = st.sampled_from([*world.panda_ids, 99])
        report = st.fixed_dictionaries({"eventRangeID": st.sampled_from([*world.panda_range_ids, "1-2-3-4-5"]),
                                        "eventStatus": st.sampled_from(STATUSES)})
        return st.one_of(
            st.fixed_dictionaries({"siteName": st.sampled_from([QUEUE, "OTHER_Q"]), "node": st.just("wn1")}),
            st.fixed_dictionaries({"jobId": panda_id, "state": st.sampled_from(["running", "finished", "failed"])}),
            st.fixed_dictionaries({"pandaID": panda_id}, optional={"nRanges": st.integers(1, 3),
                                                                    "taskID": st.integers(1, 3)}),
            st.fixed_dictionaries({"eventRanges": st.lists(report, max_size=3).map(json.dumps)},
                                  optional={"version": st.just(0)}))
    return None


def cases(world: World, operation: Any) -> st.SearchStrategy[schemathesis.Case]:
    """Valid requests on real objects (generated, and as real clients send them); invalid bodies on real
    objects; invalid requests of any kind."""
    params = [p.name for p in operation.path_parameters]
    fixed = path_parameters(world, params)
    strategies = [fixed.flatmap(lambda chosen: operation.as_strategy(GenerationMode.POSITIVE,
                                                                     path_parameters=chosen))]
    bodies = realistic_bodies(world, operation.method.upper(), operation.path)
    if bodies is not None:
        media_types = ["application/json", "application/x-www-form-urlencoded"] \
            if operation.path.startswith("/server/panda") else ["application/json"]
        realistic = st.builds(lambda chosen, body, media_type: operation.Case(
            path_parameters=chosen, body=body, media_type=media_type), fixed, bodies, st.sampled_from(media_types))
        strategies.insert(0, realistic)
    if operation.body:
        strategies.append(fixed.flatmap(lambda chosen: operation.as_strategy(GenerationMode.NEGATIVE,
                                                                             path_parameters=chosen)))
    if params or operation.body:
        strategies.append(operation.as_strategy(GenerationMode.NEGATIVE))
    return st.one_of(strategies)


ROLES = ("admin", "panda", "alpha", "beta", "wrong", "basic", "none")


def auth_header(world: World, role: str) -> dict[str, str]:
    """The Authorization header a caller in ``role`` sends (none for ``none``)."""
    token = {"admin": ADMIN, "panda": PANDA, "wrong": "est_not-a-token", **world.tokens}.get(role)
    if role == "basic":
        return {"Authorization": "Basic YWxhZGRpbjpvcGVu"}
    return {"Authorization": f"Bearer {token}"} if token else {}


def allowed_roles(method: str, path: str, case: schemathesis.Case) -> set[str] | None:
    """Who may call the operation (None: anyone), as the API documents it."""
    params = case.path_parameters or {}
    if path.startswith("/server/panda/{method}"):
        return {"admin", "panda"} if params.get("method") in METHODS else None
    if path.startswith("/server/panda") or path == "/api/v1/health":
        return None
    if path == "/api/v1/tasks" or path.endswith("/cancel"):
        return {"admin"}
    return {"admin", params.get("task", "")}


# Schemathesis' checks all apply, except "positive_data_acceptance" (a request valid by the schema is
# accepted) where the API checks more than JSON Schema can say, and refuses with a 422 naming the field:
# the PanDA method routes (one route serves five methods, each requiring its own fields), task specs
# (storage URLs are parsed, input names and GUIDs unique), range reports (a range once per batch), and
# upload grants (the key built from range id and file name follows the store's key rules).
SEMANTIC = {("POST", "/server/panda/{method}"), ("GET", "/server/panda/{method}"), ("POST", "/api/v1/tasks"),
            ("POST", "/api/v1/tasks/{task}/update"), ("POST", "/api/v1/tasks/{task}/uploads")}


@pytest.mark.parametrize(("method", "path"), OPERATIONS, ids=[f"{m} {p}" for m, p in OPERATIONS])
def test_generated_requests(method: str, path: str, world: World, contract: schemathesis.BaseSchema) -> None:
    operation = contract[path][method]

    @settings(max_examples=EXAMPLES_PER_OPERATION, derandomize=True, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
    @given(data=st.data())
    def one_request(data: st.DataObject) -> None:
        case = data.draw(cases(world, operation), label="case")
        # The test chooses the caller; the token goes in as an explicit header, so that schemathesis' auth
        # check knows a valid one from a generated one (and probes the operation without it).
        allowed = allowed_roles(method, path, case)
        role = data.draw(st.one_of(st.sampled_from(sorted(allowed or ROLES)), st.sampled_from(ROLES)), label="caller")
        auth = auth_header(world, role)
        before = world.snapshot()
        response = case.call(headers=auth)
        world.requests.append((role, case.formatted_path, response.status_code))
        where = f"{case.method} {case.formatted_path} as {role}"
        assert response.status_code < 500, f"{where}: {response.status_code} {response.text[:500]}"
        if response.status_code >= 400:
            assert world.snapshot() == before, f"{where}: refused with {response.status_code} but changed the ledger"
        if allowed is not None and role not in allowed:
            # FastAPI decodes a JSON body before it runs the token check: a body that is not UTF-8 is 400
            # and one that is not JSON is 422 for anyone (and changes nothing).
            undecodable = (response.status_code == 422 and "json_invalid" in response.text) or (
                response.status_code == 400 and "not UTF-8" in response.text)
            assert response.status_code in (401, 403) or undecodable, \
                f"{where}: {response.status_code} for a caller not allowed: {response.text[:300]}"
        excluded = [positive_data_acceptance] if (method, path) in SEMANTIC else []
        case.validate_response(response, headers=auth, excluded_checks=excluded)

    one_request()
    codes = Counter(code for _, _, code in world.requests)
    print(f"\n{method} {path}: {len(world.requests)} requests, {dict(sorted(codes.items()))}")
    assert world.requests
    assert any(code < 400 for code in codes), f"no generated request to {method} {path} was accepted"

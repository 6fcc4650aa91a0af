"""Bad input to both APIs: each refusal names what is wrong, is documented in the OpenAPI, and changes nothing."""

from __future__ import annotations

import gzip
import json
from urllib.parse import urlencode

import pytest
from fastapi.testclient import TestClient

from event_service.api.app import create_app
from tests.event_service.api.conftest import ADMIN, Api
from tests.event_service.api.test_api import ledger_state
from tests.event_service.conftest import spec_data


@pytest.mark.parametrize(("body", "status", "said"), [
    (b"\x80 not text", 400, "the request body is not UTF-8 text (invalid start byte at byte 0)"),
    (b'{"worker": "w\xe9"}', 400, "not UTF-8 text (invalid continuation byte at byte 13)"),
    (b'{"worker": ', 422, "body: not valid JSON: Expecting value at character 11"),
    (b"[]", 422, "body: Input should be a valid dictionary"),
    (b'{"worker": "w1", "n": 1.5}', 422, "body.n: Input should be a valid integer"),
    (b'{"worker": "w1", "n": true, "m": 1}', 422, "body.m: unknown field"),
])
def test_undecodable_and_mistyped_bodies_are_named(api: Api, body: bytes, status: int, said: str) -> None:
    before = ledger_state(api)
    reply = api.client.post("/api/v1/tasks/alpha/claim", content=body,
                            headers={**api.auth("alpha"), "Content-Type": "application/json"})
    assert reply.status_code == status, reply.text
    assert said in reply.text
    assert ledger_state(api) == before


def test_a_task_too_big_for_one_transaction_is_refused_before_anything_is_written(api: Api) -> None:
    before = ledger_state(api)
    huge = spec_data(name="huge", events=(10**9, 10**9), per_range=1)
    reply = api.client.post("/api/v1/tasks", json=huge, headers=api.auth())
    assert reply.status_code == 422, reply.text
    assert "2000000000 ranges; at most 10000000 a task" in reply.json()["message"]
    assert ledger_state(api) == before


def test_a_batch_over_the_limit_is_422_and_changes_nothing(api: Api) -> None:
    api.client.post("/api/v1/tasks/alpha/claim", json={"worker": "w1", "n": 1}, headers=api.auth("alpha"))
    before = ledger_state(api)
    updates = [{"range_id": f"alpha.1.{n}-{n}", "status": "running"} for n in range(1001)]
    reply = api.client.post("/api/v1/tasks/alpha/update", json={"worker": "w1", "updates": updates},
                            headers=api.auth("alpha"))
    assert reply.status_code == 422 and "body.updates: List should have at most 1000 items" in reply.json()["message"]
    assert api.client.post("/api/v1/tasks/alpha/claim", json={"worker": "w1", "n": 1001},
                           headers=api.auth("alpha")).status_code == 422
    assert ledger_state(api) == before


def test_panda_routes_refuse_oversized_and_malformed_bodies_and_change_nothing(api: Api) -> None:
    with TestClient(create_app(api.ledger, ADMIN, panda_token="pt", max_body_bytes=1 << 20)) as client:
        before = ledger_state(api)
        form = {"Authorization": "Bearer pt", "Accept": "application/json",
                "Content-Type": "application/x-www-form-urlencoded"}
        big = urlencode({"siteName": "Q", "pad": "x" * (2 << 20)})
        assert client.post("/server/panda/getJob", content=big, headers=form).status_code == 413
        bomb = gzip.compress(b"a=" + b"0" * (9 << 20))
        reply = client.post("/server/panda/getJob", content=bomb, headers={**form, "Content-Encoding": "gzip"})
        assert reply.status_code == 400 and "inflates to more than" in reply.json()["errorDialog"]
        too_many = urlencode({"eventRanges": json.dumps([{"eventRangeID": "x", "eventStatus": "running"}] * 1001)})
        reply = client.post("/server/panda/updateEventRanges", content=too_many, headers=form)
        assert reply.status_code == 400 and "at most 1000 a call" in reply.json()["errorDialog"]
        reply = client.post("/server/panda/getEventRanges", json={"pandaID": "many"}, headers=form)
        assert reply.status_code == 400 and "field 'pandaID' must be an integer" in reply.json()["errorDialog"]
        assert ledger_state(api) == before


def test_the_openapi_documents_every_refusal(api: Api) -> None:
    """The contract test's first finding: refusals that the OpenAPI did not list (and PanDA's form replies)."""
    paths = api.client.get("/openapi.json").json()["paths"]
    expected = {("/api/v1/tasks", "post"): {"201", "400", "401", "403", "409", "413", "422", "503"},
                ("/api/v1/tasks/{task}/update", "post"): {"200", "401", "403", "404", "413", "422", "503"},
                ("/api/v1/tasks/{task}/cancel", "post"): {"200", "401", "403", "404", "503"},
                ("/server/panda/{method}", "post"): {"200", "400", "401", "404", "413", "503"},
                ("/server/panda/queuedata/{queue}", "get"): {"200", "404"}}
    for (path, method), codes in expected.items():
        assert codes <= set(paths[path][method]["responses"]), (path, method, paths[path][method]["responses"])
    panda = paths["/server/panda/{method}"]["post"]
    assert set(panda["responses"]["200"]["content"]) == {"application/json", "application/x-www-form-urlencoded"}
    assert set(panda["requestBody"]["content"]) == {"application/json", "application/x-www-form-urlencoded"}
    assert paths["/api/v1/tasks/{task}/claim"]["post"]["responses"]["422"]["content"]["application/json"]["schema"]

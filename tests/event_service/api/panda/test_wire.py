"""Hostile PanDA requests — deep nesting, huge numbers, bad encodings — answer PanDA's error, never a 500."""

from __future__ import annotations

import json
from collections.abc import Iterator
from urllib.parse import urlencode

import pytest
from fastapi.testclient import TestClient

from event_service.api.app import create_app
from event_service.api.errors import PandaRequestError
from event_service.api.panda.wire import MAX_JSON_DEPTH, int_field, json_field, loads_json, parse_request
from tests.event_service.api.conftest import ADMIN, Api
from tests.event_service.api.test_api import ledger_state

FORM = {"Authorization": "Bearer pt", "Accept": "application/json",
        "Content-Type": "application/x-www-form-urlencoded"}


@pytest.fixture
def panda(api: Api) -> Iterator[TestClient]:
    with TestClient(create_app(api.ledger, ADMIN, panda_token="pt"), raise_server_exceptions=False) as client:
        yield client


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


@pytest.mark.parametrize("body", [
    '{"eventRanges": ' + nested(100_000) + "}",
    '{"eventRanges": ' + nested(MAX_JSON_DEPTH + 1) + "}",
    '{"pandaID": ' + "9" * 5000 + "}",
    '{"pandaID": 1' + "0" * 400 + "}",
])
def test_hostile_json_bodies_are_panda_errors(api: Api, panda: TestClient, body: str) -> None:
    before = ledger_state(api)
    reply = panda.post("/server/panda/updateEventRanges", content=body,
                       headers={**FORM, "Content-Type": "application/json"})
    assert reply.status_code == 400, reply.text
    assert reply.json()["StatusCode"] == 30 and reply.json()["errorDialog"].startswith("updateEventRanges: ")
    assert ledger_state(api) == before


@pytest.mark.parametrize("fields", [
    {"eventRanges": nested(100_000)},
    {"eventRanges": "[" + "1" * 10_000 + "]"},
    {"jobsetID": "1" * 30, "pandaID": "1", "taskID": "1"},
    {"pandaID": "١٢٣"},  # Arabic-Indic digits: str.isdigit says yes, int() would take them
])
def test_hostile_form_fields_are_panda_errors(api: Api, panda: TestClient, fields: dict[str, str]) -> None:
    before = ledger_state(api)
    for method in ("updateEventRanges", "getEventRanges"):
        reply = panda.post(f"/server/panda/{method}", content=urlencode(fields), headers=FORM)
        assert reply.status_code == 400, reply.text
        assert reply.json()["StatusCode"] == 30
    assert ledger_state(api) == before


@pytest.mark.parametrize(("body", "encoding"), [
    (b"pandaID=\xff\xfe", ""),
    (b"\x1f\x8b not gzip at all", "gzip"),
    (b"not deflate", "deflate"),
])
def test_bad_encodings_are_panda_errors(api: Api, panda: TestClient, body: bytes, encoding: str) -> None:
    headers = {**FORM, "Content-Encoding": encoding} if encoding else FORM
    reply = panda.post("/server/panda/getEventRanges", content=body, headers=headers)
    assert reply.status_code == 400, reply.text
    assert reply.json()["StatusCode"] == 30


def test_the_parsers_name_what_is_wrong() -> None:
    with pytest.raises(PandaRequestError, match=f"nests more than {MAX_JSON_DEPTH} levels deep"):
        loads_json(nested(MAX_JSON_DEPTH + 1), "the request body")
    assert loads_json(nested(MAX_JSON_DEPTH), "the request body") == json.loads(nested(MAX_JSON_DEPTH))
    assert loads_json('["[[[[", "]"]', "x") == ["[[[[", "]"], "brackets inside strings do not count"
    with pytest.raises(PandaRequestError, match="field 'eventRanges' is not valid JSON"):
        json_field({"eventRanges": "[" + "7" * 5000 + "]"}, "eventRanges")
    with pytest.raises(PandaRequestError, match="got a number of 30 digits"):
        int_field({"jobId": "9" * 30}, "jobId")
    with pytest.raises(PandaRequestError, match="must be an integer"):
        parse_request(b"", "") or int_field({"jobId": "１２"}, "jobId")  # full-width digits

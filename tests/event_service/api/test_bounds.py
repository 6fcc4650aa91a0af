"""Numbers a hostile or broken peer sends are bounded before the ledger: a 422 naming the field, nothing written."""

from __future__ import annotations

from typing import Any

import pytest

from event_service.messages import MAX_ATTEMPT, MAX_OBJECT_BYTES, MAX_SECONDS
from event_service.spec import MAX_EVENTS_PER_FILE, MAX_TASK_EVENTS
from tests.event_service.api.conftest import Api
from tests.event_service.api.test_api import ledger_state
from tests.event_service.conftest import spec_data

HUGE = 2**63


def claim_one(api: Api, worker: str = "w1") -> dict[str, Any]:
    reply = api.client.post("/api/v1/tasks/alpha/claim", json={"worker": worker, "n": 1}, headers=api.auth("alpha"))
    assert reply.status_code == 200, reply.text
    (claimed,) = reply.json()["ranges"]
    return dict(claimed)


def update(api: Api, item: dict[str, Any], worker: str = "w1") -> Any:
    return api.client.post("/api/v1/tasks/alpha/update", json={"worker": worker, "updates": [item]},
                           headers=api.auth("alpha"))


def finished(range_id: str, **fields: Any) -> dict[str, Any]:
    output = {"key": f"alpha/{range_id}/1/out.root", "adler32": "0000abcd", "size": 10}
    output.update(fields.pop("output", {}))
    return {"range_id": range_id, "status": "finished", "output": output, **fields}


@pytest.mark.parametrize(("change", "field"), [
    ({"output": {"size": HUGE}}, "body.updates.0.output.size"),
    ({"output": {"size": MAX_OBJECT_BYTES + 1}}, "body.updates.0.output.size"),
    ({"cpu_s": MAX_SECONDS * 10}, "body.updates.0.cpu_s"),
    ({"wall_s": 1e300}, "body.updates.0.wall_s"),
    ({"attempt": HUGE}, "body.updates.0.attempt"),
    ({"attempt": MAX_ATTEMPT + 1}, "body.updates.0.attempt"),
])
def test_unbounded_numbers_in_an_update_are_422_naming_the_field(api: Api, change: dict[str, Any],
                                                                  field: str) -> None:
    claimed = claim_one(api)
    before = ledger_state(api)
    reply = update(api, finished(claimed["range_id"], **change))
    assert reply.status_code == 422, reply.text
    assert field in reply.json()["message"]
    assert ledger_state(api) == before


def test_an_update_for_an_attempt_the_range_never_had_is_rejected_saying_so(api: Api) -> None:
    claimed = claim_one(api)
    before = ledger_state(api)
    reply = update(api, finished(claimed["range_id"], attempt=claimed["attempt"] + 5))
    assert reply.status_code == 200, reply.text
    (result,) = reply.json()["results"]
    assert result["result"] == "rejected"
    assert result["reason"] == (f"attempt {claimed['attempt'] + 5} was never handed out: the range is at "
                                f"attempt {claimed['attempt']}")
    assert ledger_state(api) == before


def test_a_report_for_an_earlier_attempt_by_the_holder_says_which_attempts(api: Api) -> None:
    claimed = claim_one(api)
    range_id = claimed["range_id"]
    assert update(api, {"range_id": range_id, "status": "failed", "error_code": "E"}).status_code == 200
    reply = api.client.post("/api/v1/tasks/alpha/claim", json={"worker": "w1", "n": 10}, headers=api.auth("alpha"))
    (again,) = [r for r in reply.json()["ranges"] if r["range_id"] == range_id]  # a failed range goes last
    assert again["attempt"] == claimed["attempt"] + 1
    reply = update(api, {"range_id": range_id, "status": "running", "attempt": claimed["attempt"]})
    (result,) = reply.json()["results"]
    assert result["result"] == "rejected"
    assert result["reason"] == (f"range is sent with 'w1' for attempt {again['attempt']}; this report is for "
                                f"attempt {claimed['attempt']}, an earlier one")


@pytest.mark.parametrize(("events", "per_range", "said"), [
    ((HUGE,), 10, "inputs.0.events: Input should be less than or equal to"),
    ((MAX_EVENTS_PER_FILE + 1,), 10**9, "inputs.0.events"),
    ((10,), HUGE, "events_per_range: Input should be less than or equal to"),
])
def test_a_task_with_unbounded_event_counts_is_422_naming_the_field(api: Api, events: tuple[int, ...],
                                                                     per_range: int, said: str) -> None:
    before = ledger_state(api)
    reply = api.client.post("/api/v1/tasks", json=spec_data(name="huge", events=events, per_range=per_range),
                            headers=api.auth())
    assert reply.status_code == 422, reply.text
    assert said in reply.json()["message"]
    assert ledger_state(api) == before


def test_inputs_adding_up_past_the_task_limit_are_refused(api: Api) -> None:
    count = MAX_TASK_EVENTS // MAX_EVENTS_PER_FILE + 1
    before = ledger_state(api)
    data = spec_data(name="huge", events=(MAX_EVENTS_PER_FILE,) * count, per_range=MAX_EVENTS_PER_FILE)
    reply = api.client.post("/api/v1/tasks", json=data, headers=api.auth())
    assert reply.status_code == 422, reply.text
    assert f"events in all; at most {MAX_TASK_EVENTS} a task" in reply.json()["message"]
    assert ledger_state(api) == before

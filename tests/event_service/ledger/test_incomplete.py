"""A task whose ranges are all final but with more fatal ones than it tolerates is ``incomplete``, not ``done``:
the ledger, the API, the monitor and the metrics say the same."""

from __future__ import annotations

from fastapi.testclient import TestClient

from event_service.api.app import create_app
from event_service.ledger import Ledger
from event_service.messages import OutputRef, RangeUpdate
from event_service.statuses import TaskState
from tests.event_service.conftest import make_spec

ADMIN = "incomplete-admin"


def end_every_range(ledger: Ledger, task: str, fatal: int) -> None:
    claimed = ledger.claim(task, "w1", 100).ranges
    updates = [RangeUpdate(range_id=r.range_id, status="fatal", error_code="ERR_BROKEN", error="unrecoverable")
               if n < fatal else
               RangeUpdate(range_id=r.range_id, status="finished",
                           output=OutputRef(key=f"{task}/{r.range_id}/1/out.root", adler32="00000001", size=0))
               for n, r in enumerate(claimed)]
    assert all(result.result == "accepted" for result in ledger.update(task, "w1", updates))


def test_more_fatal_ranges_than_tolerated_make_the_task_incomplete(ledger: Ledger) -> None:
    ledger.create_task(make_spec(name="lossy", events=(30,), max_fatal_ranges=1))
    ledger.create_task(make_spec(name="tolerant", events=(30,), max_fatal_ranges=1))
    end_every_range(ledger, "lossy", fatal=2)
    end_every_range(ledger, "tolerant", fatal=1)
    assert ledger.status("lossy").state == TaskState.INCOMPLETE
    assert ledger.claim("lossy", "w2", 1).state == TaskState.INCOMPLETE
    assert ledger.status("tolerant").state == TaskState.DONE
    with TestClient(create_app(ledger, ADMIN)) as client:
        auth = {"Authorization": f"Bearer {ADMIN}"}
        assert client.get("/api/v1/tasks/lossy", headers=auth).json()["state"] == "incomplete"
        listed = {t["task"]: t["state"] for t in client.get("/api/v1/monitor/tasks", headers=auth).json()["tasks"]}
        assert listed == {"lossy": "incomplete", "tolerant": "done"}
        metrics = client.get("/metrics", headers=auth).text
        assert 'event_service_task_state{state="incomplete",task="lossy"} 1.0' in metrics
        assert 'event_service_task_state{state="done",task="tolerant"} 1.0' in metrics


def test_a_task_still_running_is_running_whatever_its_fatal_ranges(ledger: Ledger) -> None:
    ledger.create_task(make_spec(name="early", events=(30,)))
    claimed = ledger.claim("early", "w1", 1).ranges
    ledger.update("early", "w1", [RangeUpdate(range_id=claimed[0].range_id, status="fatal", error_code="E")])
    assert ledger.status("early").state == TaskState.RUNNING

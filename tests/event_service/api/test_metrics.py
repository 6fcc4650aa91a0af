"""``GET /metrics``: Prometheus samples read from the ledger after known activity, and who may read them."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import requests
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.parser import text_string_to_metric_families

from event_service.api.app import create_app
from event_service.api.server import ServerThread
from event_service.ledger import Ledger
from event_service.messages import OutputRef, RangeUpdate
from event_service.spec import TaskSpec
from tests.event_service.conftest import spec_data

ADMIN = "metrics-admin"
MONITOR = "metrics-monitor"
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@pytest.fixture
def served(ledger: Ledger) -> Iterator[str]:
    with ServerThread(create_app(ledger, ADMIN, monitor_token=MONITOR)) as server:
        yield server.url


def scrape(url: str, token: str = MONITOR) -> Samples:
    reply = requests.get(f"{url}/metrics", headers={"Authorization": f"Bearer {token}"}, timeout=30)
    assert reply.status_code == 200, reply.text
    assert reply.headers["content-type"] == CONTENT_TYPE_LATEST
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(reply.text) for s in family.samples}


def task_samples(task: str, state: str, ranges: dict[str, int], events: int, done: int, live: int, claims: int,
                 updates: dict[str, int], failures: dict[str, int], stageout: int, expiries: int,
                 corrupted: int) -> Samples:
    """Every sample the endpoint gives for one task."""
    t = ("task", task)
    statuses = ("ready", "sent", "running", "finished", "done", "merged", "failed", "fatal", "cancelled", "corrupted")
    samples: Samples = {("event_service_task_state", (("state", state), t)): 1.0}
    samples |= {("event_service_ranges", (("status", s), t)): float(ranges.get(s, 0)) for s in statuses}
    samples |= {("event_service_events", (t,)): float(events), ("event_service_events_done", (t,)): float(done),
                ("event_service_live_workers", (t,)): float(live), ("event_service_claims_total", (t,)): float(claims),
                ("event_service_stageout_failures_total", (t,)): float(stageout),
                ("event_service_lease_expiries_total", (t,)): float(expiries),
                ("event_service_corrupted_outputs_total", (t,)): float(corrupted)}
    samples |= {("event_service_updates_total", (("status", s), t)): float(updates.get(s, 0))
                for s in ("failed", "fatal", "finished", "ready", "running")}
    samples |= {("event_service_failures_total", (("error_code", code), t)): float(n) for code, n in failures.items()}
    return samples


def finished(range_id: str, attempt: int) -> RangeUpdate:
    return RangeUpdate(range_id=range_id, status="finished", cpu_s=1.0, wall_s=1.0,
                       output=OutputRef(key=f"m/{range_id}.{attempt}", adler32="00000001", size=1))


def test_metrics_count_what_happened_in_the_ledger(ledger: Ledger, served: str) -> None:
    ledger.create_task(TaskSpec.parse(spec_data(name="m", events=(25,))))  # ranges of 10, 10 and 5 events
    ledger.create_task(TaskSpec.parse(spec_data(name="n", events=(5,))))
    ledger.cancel("n")

    r0, r1, r2 = ledger.claim("m", "w1", 3).ranges
    ledger.update("m", "w1", [RangeUpdate(range_id=r0.range_id, status="running")])
    ledger.update("m", "w1", [
        finished(r0.range_id, 1),
        RangeUpdate(range_id=r1.range_id, status="failed", error_code="ERR_STAGEOUT", error="store down"),
        RangeUpdate(range_id=r2.range_id, status="ready")])  # given back unstarted
    again = ledger.claim("m", "w2", 2).ranges
    assert sorted(r.range_id for r in again) == sorted([r1.range_id, r2.range_id])
    ledger.update("m", "w2", [RangeUpdate(range_id=r1.range_id, status="failed", error_code="ERR_PAYLOAD_EXIT")])
    assert ledger.expire_leases("m", now=time.time() + 3600) == 1  # w2 vanished holding r2
    assert ledger.mark_corrupted("m", [r0.range_id], "adler32 mismatch", by="verification") == 1
    a, b = ledger.claim("m", "w3", 2).ranges
    ledger.update("m", "w3", [RangeUpdate(range_id=b.range_id, status="running")])
    ledger.update("m", "w3", [finished(a.range_id, a.attempt)])

    expected = task_samples(
        "m", "running", {"ready": 1, "running": 1, "finished": 1}, events=25, done=a.last_event - a.first_event + 1,
        live=3, claims=7, updates={"running": 2, "finished": 2, "failed": 2, "ready": 1},
        failures={"ERR_STAGEOUT": 1, "ERR_PAYLOAD_EXIT": 1}, stageout=1, expiries=1, corrupted=1)
    expected |= task_samples("n", "cancelled", {"cancelled": 1}, events=5, done=0, live=0, claims=0, updates={},
                             failures={}, stageout=0, expiries=0, corrupted=0)
    assert scrape(served) == expected

    # Another API process over the same database gives the same numbers: nothing is counted in memory.
    with Ledger(ledger.url) as other, ServerThread(create_app(other, ADMIN)) as second:
        assert scrape(second.url, ADMIN) == expected


def test_failure_codes_are_bounded_per_task(ledger: Ledger, served: str) -> None:
    # Payloads name their own error codes: the most frequent 20 keep their label, the rest count as "other".
    ledger.create_task(TaskSpec.parse(spec_data(name="m", events=(250,))))
    claimed = ledger.claim("m", "w1", 25).ranges
    ledger.update("m", "w1", [RangeUpdate(range_id=r.range_id, status="failed", error_code=f"ERR_C{i:02d}")
                              for i, r in enumerate(claimed)])
    (again,) = ledger.claim("m", "w1", 1).ranges  # a range back for its second attempt
    ledger.update("m", "w1", [RangeUpdate(range_id=again.range_id, status="failed", error_code="ERR_C00")])
    failures = {dict(labels)["error_code"]: value for (name, labels), value in scrape(served).items()
                if name == "event_service_failures_total"}
    assert failures == {"ERR_C00": 2.0, **{f"ERR_C{i:02d}": 1.0 for i in range(1, 20)}, "other": 5.0}


def test_metrics_need_the_admin_or_the_monitor_token(ledger: Ledger, served: str) -> None:
    _record, task_token = ledger.create_task(TaskSpec.parse(spec_data(name="m")))
    refused = {token: requests.get(f"{served}/metrics", timeout=30,
                                   headers={"Authorization": f"Bearer {token}"} if token else {})
               for token in (None, task_token, "wrong")}
    assert {token: (r.status_code, r.json()["detail"]) for token, r in refused.items()} == {
        None: (401, "missing bearer token (the admin or the monitor token)"),
        task_token: (403, "the admin or the monitor token is required"),
        "wrong": (403, "the admin or the monitor token is required"),
    }
    assert scrape(served, ADMIN)[("event_service_ranges", (("status", "ready"), ("task", "m")))] == 3.0
    assert scrape(served, MONITOR)[("event_service_events", (("task", "m"),))] == 25.0


def test_metrics_are_documented_in_the_openapi(served: str) -> None:
    operation = requests.get(f"{served}/openapi.json", timeout=30).json()["paths"]["/metrics"]["get"]
    assert set(operation["responses"]) >= {"200", "401", "403"}
    assert "text/plain" in operation["responses"]["200"]["content"]
    assert operation["security"] == [{"HTTPBearer": []}]

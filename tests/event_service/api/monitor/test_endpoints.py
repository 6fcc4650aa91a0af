"""The monitoring JSON against a task with known transitions at known times: every figure checked exactly."""

from __future__ import annotations

import re
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

import event_service.ledger.ledger
import event_service.merge.register
from event_service.api.app import create_app
from event_service.api.monitor.queries import auto_bin_s, redact_url
from event_service.api.monitor.router import ASSETS
from event_service.checksums import adler32_file
from event_service.ledger import Ledger
from event_service.merge.part import MergedFile
from event_service.merge.register import register_output
from event_service.messages import OutputRef, RangeUpdate
from event_service.stores import LocalStore
from tests.event_service.conftest import make_spec

T0 = 1_700_000_000.0
ADMIN = "monitor-test-admin"
MONITOR = "monitor-test-reader"
PART = b"two merged ranges" * 100
STATUSES = ("ready", "sent", "running", "finished", "done", "merged", "failed", "fatal", "cancelled", "corrupted")


class Clock:
    """The ledger's clock in these tests: time stands still until the test moves it."""

    def __init__(self, now: float) -> None:
        self.now = now

    def time(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds

    def at(self, offset: float) -> Clock:
        self.now = T0 + offset
        return self


@dataclass
class Scene:
    ledger: Ledger
    token: str
    client: TestClient


def r(i: int) -> str:
    return f"mon.1.{10 * i}-{10 * i + 9}"


def finished(i: int, cpu: float, wall: float) -> RangeUpdate:
    return RangeUpdate(range_id=r(i), status="finished", cpu_s=cpu, wall_s=wall,
                       output=OutputRef(key=f"mon/{r(i)}/out.root", adler32="0000abcd", size=1000 + i))


@pytest.fixture
def scene(ledger: Ledger, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Scene]:
    """Task ``mon``: 100 events in 10 ranges, three workers on three hosts, failures of three kinds, one give-back,
    two ranges merged into a catalog file; the API's clock at T0 + 300."""
    clock = Clock(T0)
    monkeypatch.setattr(event_service.ledger.ledger, "time", clock)
    monkeypatch.setattr(event_service.merge.register, "time", clock)
    _, token = ledger.create_task(make_spec(name="mon", events=(100,), per_range=10, max_attempts=3,
                                            lease_seconds=60))
    ledger.claim("mon", "w1", 4, host="node-a")                          # r0..r3
    clock.at(12)
    ledger.claim("mon", "w2", 3, host="node-b")                          # r4..r6
    clock.at(40)
    ledger.update("mon", "w1", [finished(0, 6, 8), finished(1, 9, 10), RangeUpdate(
        range_id=r(2), status="failed", error_code="ERR_PAYLOAD_CRASH", cpu_s=1, wall_s=2)])
    clock.at(70)
    ledger.update("mon", "w2", [finished(4, 20, 20), RangeUpdate(range_id=r(5), status="fatal",
                                                                 error_code="ERR_BAD_INPUT")])
    clock.at(200)
    assert ledger.expire_leases("mon") == 2                              # r3 (w1) and r6 (w2)
    clock.at(240)
    ledger.claim("mon", "w3", 2, host="node-c")                          # r7, r8
    clock.at(250)
    ledger.heartbeat("mon", "w1", host="node-a")
    ledger.update("mon", "w3", [finished(7, 3, 6), RangeUpdate(range_id=r(8), status="running")])
    clock.at(260)
    claimed = ledger.claim("mon", "w3", 3, host="node-c")
    assert [c.range_id for c in claimed.ranges] == [r(9), r(2), r(3)]
    clock.at(270)
    ledger.update("mon", "w3", [RangeUpdate(range_id=r(3), status="ready")])  # given back: not a failure
    clock.at(280)
    part = tmp_path / "mon.merged._000001.root"
    part.write_bytes(PART)
    adler, size = adler32_file(part)
    register_output(ledger, "mon", MergedFile(1, part.name, part, 20, adler, size, (r(0), r(1)), 0, 19),
                    LocalStore(tmp_path / "results"), "mon.merged")
    clock.at(300)
    app = create_app(ledger, ADMIN, monitor_token=MONITOR)
    app.state.monitor_clock = clock.time
    with TestClient(app) as client:
        yield Scene(ledger, token, client)


def get(scene: Scene, path: str, token: str | None = MONITOR) -> dict:
    reply = scene.client.get(path, headers={"Authorization": f"Bearer {token}"} if token else {})
    assert reply.status_code == 200, reply.text
    return reply.json()


SUMMARY = {
    "task": "mon", "dag_id": "es_mon", "state": "running", "ranges": 10,
    "counts": {**dict.fromkeys(STATUSES, 0), "ready": 2, "sent": 2, "running": 1, "finished": 2, "merged": 2,
               "fatal": 1},
    "events_total": 100, "events_done": 40, "events_remaining": 50,
    "events_per_s": 0.1, "rate_window_s": 100.0, "eta_s": 500.0,  # r7's 10 events in the last 100 s
    "live_workers": 2,  # w1 (heartbeat at +250) and w3 (claim at +260); w2 was last seen at +12, lease 60 s
    "created_at": T0, "last_activity": T0 + 280,
}


def test_task_list(scene: Scene) -> None:
    assert get(scene, "/api/v1/monitor/tasks?window_s=100") == {"now": T0 + 300, "tasks": [SUMMARY]}
    # the default window (300 s) holds every finish: r0, r1 at +40, r4 at +70, r7 at +250
    default = get(scene, "/api/v1/monitor/tasks")["tasks"][0]
    assert (default["events_per_s"], default["rate_window_s"], default["eta_s"]) == (40 / 300, 300.0, 50 / (40 / 300))


def test_task_detail(scene: Scene) -> None:
    detail = get(scene, "/api/v1/monitor/tasks/mon?window_s=100&bin_s=60&bins=7")
    outputs = detail.pop("outputs")
    assert detail == {
        "now": T0 + 300, "summary": SUMMARY, "bin_s": 60.0,
        "rate": [{"start": T0, "events": 20, "ranges": 2, "events_per_s": 20 / 60},
                 {"start": T0 + 60, "events": 10, "ranges": 1, "events_per_s": 10 / 60},
                 {"start": T0 + 120, "events": 0, "ranges": 0, "events_per_s": 0.0},
                 {"start": T0 + 180, "events": 0, "ranges": 0, "events_per_s": 0.0},
                 {"start": T0 + 240, "events": 10, "ranges": 1, "events_per_s": 10 / 60}],
        # wall seconds of r0, r1, r4, r7 (two of them merged since): 8, 10, 20, 6
        "durations": {"ranges": 4, "min_s": 6.0, "max_s": 20.0, "mean_s": 11.0, "bins": [
            {"low": 6.0, "high": 8.0, "count": 1}, {"low": 8.0, "high": 10.0, "count": 1},
            {"low": 10.0, "high": 12.0, "count": 1}, {"low": 12.0, "high": 14.0, "count": 0},
            {"low": 14.0, "high": 16.0, "count": 0}, {"low": 16.0, "high": 18.0, "count": 0},
            {"low": 18.0, "high": 20.0, "count": 1}]},
        # CPU / wall: 0.75, 0.9, 1.0, 0.5
        "cpu_efficiency": {"ranges": 4, "overall": 38 / 44, "bins": [
            {"low": i / 10, "high": (i + 1) / 10, "count": int(i in (5, 7, 9))} for i in range(10)]
            + [{"low": 1.0, "high": None, "count": 1}]},
        "failures": 4,
        "failures_by_code": [{"key": "lease_expired", "failures": 2}, {"key": "ERR_BAD_INPUT", "failures": 1},
                             {"key": "ERR_PAYLOAD_CRASH", "failures": 1}],
        # r2's crash and r3's lapsed lease were w1's; r5 and r6 w2's
        "failures_by_host": [{"key": "node-a", "failures": 2}, {"key": "node-b", "failures": 2}],
        "attempts": [{"attempts": 1, "ranges": 9}, {"attempts": 2, "ranges": 1}],
        "workers": [
            {"worker": "w3", "host": "node-c", "first_seen": T0 + 240, "last_heartbeat": T0 + 260, "live": True,
             "held": 3, "finished": 1},
            {"worker": "w1", "host": "node-a", "first_seen": T0, "last_heartbeat": T0 + 250, "live": True,
             "held": 0, "finished": 2},
            {"worker": "w2", "host": "node-b", "first_seen": T0 + 12, "last_heartbeat": T0 + 12, "live": False,
             "held": 0, "finished": 1}],
    }
    assert len(outputs) == 1
    entry = outputs[0]
    assert entry.pop("location").endswith("/results/mon.merged._000001.root")
    assert entry == {"dataset": "mon.merged", "file_name": "mon.merged._000001.root", "events": 20, "size": 1700,
                     "adler32": f"{zlib.adler32(PART):08x}", "first_range": r(0), "last_range": r(1),
                     "registered_at": T0 + 280, "certification": None, "validation": None}


def test_the_rate_bins_default_to_a_round_width(scene: Scene) -> None:
    detail = get(scene, "/api/v1/monitor/tasks/mon")
    assert detail["bin_s"] == 5.0  # 300 s of history: the smallest round width giving at most 120 bins
    assert len(detail["rate"]) == 60
    assert sum(b["events"] for b in detail["rate"]) == 40
    assert [b["start"] - T0 for b in detail["rate"] if b["events"]] == [40, 70, 250]
    assert [auto_bin_s(s) for s in (0, 120, 121, 3600, 86400, 86400 * 365)] == [1, 1, 2, 30, 900, 86400 * 4]


def test_a_finished_task_has_eta_zero_and_unknown_tasks_are_404(scene: Scene) -> None:
    assert scene.client.get("/api/v1/monitor/tasks/nope", headers={"Authorization": f"Bearer {MONITOR}"}) \
        .status_code == 404
    reply = scene.client.get("/api/v1/monitor/tasks/mon?bins=0", headers={"Authorization": f"Bearer {MONITOR}"})
    assert reply.status_code == 422 and "bins" in reply.json()["message"]
    scene.ledger.cancel("mon")
    summary = get(scene, "/api/v1/monitor/tasks/mon")["summary"]
    assert (summary["state"], summary["eta_s"], summary["counts"]["cancelled"]) == ("cancelled", None, 5)


@pytest.mark.parametrize("path", ["/api/v1/monitor/tasks", "/api/v1/monitor/tasks/mon"])
def test_read_access(scene: Scene, path: str) -> None:
    def status(headers: dict[str, str]) -> int:
        return scene.client.get(path, headers=headers).status_code

    assert status({}) == 401
    assert status({"Authorization": f"Bearer {scene.token}"}) == 403  # a task token never reads the monitor
    assert status({"Authorization": "Bearer wrong"}) == 403
    assert status({"Authorization": f"Bearer {MONITOR}"}) == 200
    assert status({"Authorization": f"Bearer {ADMIN}"}) == 200
    # a host's own check (the Airflow plugin lets its logged-in users in this way)
    scene.client.app.state.reader_checks.append(lambda request: request.headers.get("X-Test-User") == "alice")
    assert status({"X-Test-User": "alice"}) == 200
    assert status({"X-Test-User": "bob"}) == 401


def test_the_replies_hold_no_token(scene: Scene) -> None:
    text = scene.client.get("/api/v1/monitor/tasks/mon", headers={"Authorization": f"Bearer {ADMIN}"}).text \
        + scene.client.get("/api/v1/monitor/tasks", headers={"Authorization": f"Bearer {ADMIN}"}).text
    assert scene.token not in text and ADMIN not in text and MONITOR not in text


def test_catalog_locations_are_shown_without_credentials() -> None:
    assert redact_url("https://user:secret@host.example/data/f.root?X-Amz-Signature=abc") \
        == "https://host.example/data/f.root"
    assert redact_url("s3://bucket/merged/f.root") == "s3://bucket/merged/f.root"
    assert redact_url("file:///srv/results/f.root") == "file:///srv/results/f.root"
    assert redact_url("root://eos.example//eos/f.root") == "root://eos.example//eos/f.root"


def test_the_endpoints_are_documented(scene: Scene) -> None:
    spec = scene.client.get("/openapi.json").json()
    for path, model in (("/api/v1/monitor/tasks", "TaskList"), ("/api/v1/monitor/tasks/{task}", "TaskDetail")):
        operation = spec["paths"][path]["get"]
        assert operation["tags"] == ["monitoring"]
        assert operation["responses"]["200"]["content"]["application/json"]["schema"] == {
            "$ref": f"#/components/schemas/{model}"}
        assert {"401", "403"} <= set(operation["responses"])
        assert operation["security"] == [{"HTTPBearer": []}]
    assert {"window_s", "bin_s", "bins"} == {p["name"] for p in spec["paths"]["/api/v1/monitor/tasks/{task}"]["get"]
                                             ["parameters"] if p["in"] == "query"}
    assert not any(path.startswith("/monitor") for path in spec["paths"])


def test_the_page_is_served_from_the_package_with_nothing_from_elsewhere(scene: Scene) -> None:
    redirect = scene.client.get("/monitor", follow_redirects=False)
    assert (redirect.status_code, redirect.headers["location"]) == (307, "monitor/")
    for name, path in [("index.html", "/monitor/"), ("app.js", "/monitor/app.js"),
                       ("style.css", "/monitor/style.css"), ("icon.svg", "/monitor/icon.svg")]:
        reply = scene.client.get(path)  # the page itself holds no data: it asks the JSON routes for it
        assert reply.status_code == 200 and reply.headers["content-type"] == ASSETS[name]
        assert "connect-src 'self'" in reply.headers["content-security-policy"]
        # the only absolute URL in the page is SVG's namespace, never something to load
        assert set(re.findall(r"(?:https?:)?//[\w.-]+\.[a-z]{2,}[^\s\"'`)]*", reply.text)) <= {
            "http://www.w3.org/2000/svg"}
    assert scene.client.get("/monitor/../api/v1/monitor/tasks").status_code in (401, 404)
    assert scene.client.get("/monitor/secret.txt").status_code == 404

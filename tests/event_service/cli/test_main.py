"""The ``event-service`` command: ``serve`` as a real server process on both backends, and the demo."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from event_service.api.client import AdminClient, DispatchClient
from event_service.api.server import free_port
from event_service.messages import OutputRef, RangeUpdate
from event_service.spec import TaskSpec
from event_service.statuses import TaskState
from tests.event_service.conftest import spec_data

EXE = Path(sys.executable).with_name("event-service")


@pytest.fixture
def served(ledger_url: str, tmp_path: Path) -> Iterator[str]:
    port = free_port()
    env = {**os.environ, "EVENT_SERVICE_ADMIN_TOKEN": "cli-admin"}
    log = (tmp_path / "serve.log").open("wb")
    process = subprocess.Popen([str(EXE), "serve", "--db", ledger_url, "--host", "127.0.0.1", "--port", str(port),
                                "--workers", "2"], env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if requests.get(f"{url}/api/v1/health", timeout=1).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"serve did not start: {(tmp_path / 'serve.log').read_text()}")
            time.sleep(0.1)
        yield url
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
        log.close()


def test_serve_round_trip(served: str) -> None:
    with AdminClient(served, "cli-admin") as admin:
        created = admin.create_task(TaskSpec.parse(spec_data(name="served", events=(40,))))
    assert created.ranges == 4
    with DispatchClient(served, "served", created.token) as client:
        while (reply := client.claim("runner-1", 3, host="node-a")).ranges:
            results = client.update("runner-1", [
                RangeUpdate(range_id=r.range_id, status="finished", cpu_s=1.0, wall_s=1.1,
                            output=OutputRef(key=f"served/{r.range_id}.{r.attempt}", adler32="00000001", size=1))
                for r in reply.ranges])
            assert {r.result for r in results} == {"accepted"}
        assert reply.state == TaskState.DONE
        assert client.heartbeat("runner-1").renewed == 0
        status = client.status()
    assert (status.state, status.events_done, status.counts["finished"]) == (TaskState.DONE, 40, 4)


def test_serve_without_a_database_says_so() -> None:
    env = {k: v for k, v in os.environ.items() if k != "EVENT_SERVICE_DB"}
    done = subprocess.run([str(EXE), "serve"], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "--db URL" in done.stderr
    bad = subprocess.run([str(EXE), "serve", "--db", "mysql://x/y"], env=env, capture_output=True, text=True,
                         timeout=60)
    assert bad.returncode == 1 and "postgresql://" in bad.stderr


def test_demo_without_airflow_survives_an_evicted_runner(tmp_path: Path) -> None:
    done = subprocess.run([str(EXE), "demo", "--without-airflow", "--workdir", str(tmp_path / "demo"),
                           "--events-per-file", "300", "--runners", "3"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "events:  600 of 600 done" in done.stdout
    assert "runner-1 killed with SIGKILL" in done.stdout
    assert "outputs: 600 distinct events in the stored outputs, 0 duplicates, 0 missing" in done.stdout
    assert "demo succeeded" in done.stdout

"""Fixtures for runner tests: generator inputs, a served dispatch API on each backend, the runner as a process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from event_service.api.app import create_app
from event_service.api.client import AdminClient
from event_service.api.server import ServerThread
from event_service.inputs.generate import make_inputs
from event_service.ledger import Ledger
from event_service.spec import InputFile, TaskSpec

ADMIN = "runner-test-admin"
RUNNER = Path(sys.executable).with_name("payload-runner")


@pytest.fixture(scope="session")
def evnt(tmp_path_factory: pytest.TempPathFactory) -> list[InputFile]:
    """Two generator files of 60 events each."""
    return make_inputs(tmp_path_factory.mktemp("evnt"), events=120, files=2, seed=11)


@dataclass
class Dispatch:
    """A dispatch API served from the test process over a ledger, and the task made for the test."""

    url: str
    ledger: Ledger
    tmp: Path

    def create(self, inputs: list[InputFile], *, name: str = "rt", per_range: int = 10, **fields: Any) -> str:
        spec: dict[str, Any] = {
            "name": name, "inputs": [i.model_dump() for i in inputs], "events_per_range": per_range,
            "lease_seconds": 30, "max_attempts": 3, "payload": {"command": "toysim --cost-ms 1"},
            "object_store": {"url": (self.tmp / "objects").as_uri()},
            "merge": {"output_url": (self.tmp / "results").as_uri()},
        }
        spec.update(fields)
        with AdminClient(self.url, ADMIN) as admin:
            return admin.create_task(TaskSpec.parse(spec)).token

    def runner(self, token: str, workdir: Path, *options: str, task: str = "rt") -> subprocess.Popen[str]:
        """Start ``payload-runner`` against this server."""
        log = (workdir.parent / f"{workdir.name}.log").open("w")
        try:
            return subprocess.Popen([str(RUNNER), "--server", self.url, "--task", task, "--token", token,
                                     "--workdir", str(workdir), *options], stdout=subprocess.PIPE, stderr=log,
                                    text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        finally:
            log.close()

    def run(self, token: str, workdir: Path, *options: str, timeout_s: float = 120,
            task: str = "rt") -> tuple[int, str]:
        """Run ``payload-runner`` to its end; returns its exit code and standard output."""
        process = self.runner(token, workdir, *options, task=task)
        try:
            out, _ = process.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGKILL)
            process.communicate()
            raise AssertionError(f"the runner did not finish in {timeout_s} s; its log: "
                                 f"{(workdir.parent / f'{workdir.name}.log').read_text()[-3000:]}") from None
        return process.returncode, out

    def log(self, workdir: Path) -> str:
        return (workdir.parent / f"{workdir.name}.log").read_text()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def dispatch(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Dispatch]:
    url = request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "pg_url")
    with Ledger(url) as ledger, ServerThread(create_app(ledger, ADMIN)) as server:
        yield Dispatch(server.url, ledger, tmp_path)


@pytest.fixture
def sqlite_dispatch(sqlite_url: str, tmp_path: Path) -> Iterator[Dispatch]:
    """The same on SQLite only, for tests of the runner's own behaviour."""
    with Ledger(sqlite_url) as ledger, ServerThread(create_app(ledger, ADMIN)) as server:
        yield Dispatch(server.url, ledger, tmp_path)


def wait_for(condition: Any, timeout_s: float = 60, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)

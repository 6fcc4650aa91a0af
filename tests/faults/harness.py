"""The deployment a fault-injection run works on: `event-service serve` and payload runners as processes."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
from sqlalchemy import func, select

from event_service.ledger import Ledger
from event_service.ledger.schema import ranges
from event_service.statuses import IN_FLIGHT
from tests import pg
from tests.servers import LOCAL_HOST, free_ports, log_tail, stop_process

BIN = Path(sys.executable).parent
SERVE, RUNNER = BIN / "event-service", BIN / "payload-runner"
POLL_S = 0.2
FAULTS_APPLICATION_NAME = "pytest-faults"


class Watchdog:
    """Bounds a whole run: past its deadline it kills every process of the deployment, and waits fail."""

    def __init__(self, seconds: float, on_expiry: Callable[[], None]) -> None:
        self.seconds = seconds
        self.expired = threading.Event()
        self._on_expiry = on_expiry
        self._timer = threading.Timer(seconds, self._fire)
        self._timer.daemon = True
        self._timer.start()

    def _fire(self) -> None:
        self.expired.set()
        self._on_expiry()

    def cancel(self) -> None:
        self._timer.cancel()


@dataclass
class RunnerProcess:
    """One ``payload-runner`` process, its work directory, and the fault the test dealt it (if any)."""

    name: str
    workdir: Path
    process: subprocess.Popen[bytes]
    fault: str | None = None  # "SIGKILL" or "SIGTERM" when the test ended it on purpose
    checked: bool = False  # it exited and the ledger showed that it had nothing left to do

    @property
    def out_path(self) -> Path:
        return self.workdir.parent / f"{self.name}.out"

    @property
    def log_path(self) -> Path:
        return self.workdir.parent / f"{self.name}.log"

    def summary(self) -> dict[str, Any] | None:
        """The runner's ``summary {json}`` line, when it printed one (a killed runner did not)."""
        for line in self.out_path.read_text(errors="replace").splitlines():
            if line.startswith("summary "):
                return dict(json.loads(line.removeprefix("summary ")))
        return None

    def outputs(self) -> list[dict[str, Any]]:
        """Every payload output this runner accepted (range, attempt, payload CPU), read from its manifests."""
        found = []
        for path in sorted(self.workdir.glob("manifest*.jsonl")):
            for line in path.read_text(errors="replace").splitlines():
                with contextlib.suppress(json.JSONDecodeError):  # a line cut short by SIGKILL
                    record = json.loads(line)
                    if record.get("event") == "output":
                        found.append({**record, "runner": self.name})
        return found


class Deployment:
    """The dispatch API server and the runners of one task, all killed when the run ends or overruns."""

    def __init__(self, root: Path, task: str, ledger: Ledger, runner_env: dict[str, str], deadline_s: float) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self.task = task
        self.ledger = ledger
        self.runner_env = runner_env
        self.token = ""
        self.api: subprocess.Popen[bytes] | None = None
        self.api_url = ""
        self.api_log = root / "api.log"
        self.runners: dict[str, RunnerProcess] = {}
        self._lock = threading.Lock()
        self.watchdog = Watchdog(deadline_s, self._kill_everything)

    # -- processes --------------------------------------------------------------------------------------

    def start_api(self, db_url: str, admin_token: str, timeout_s: float = 60) -> str:
        """``event-service serve`` on a free port of 127.0.0.1 with its access log; returns its URL."""
        port = free_ports(1)[0]
        env = {**os.environ, "EVENT_SERVICE_ADMIN_TOKEN": admin_token, "PYTHONUNBUFFERED": "1"}
        env.pop("EVENT_SERVICE_DB", None)
        with open(self.api_log, "ab") as log:
            self.api = subprocess.Popen(
                [str(SERVE), "serve", "--db", db_url, "--host", LOCAL_HOST, "--port", str(port), "--workers", "1",
                 "--access-log"], cwd=self.root, env=env, stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True)
        self.api_url = f"http://{LOCAL_HOST}:{port}"
        self.wait_until(self.api_answers, "answer from the dispatch API's health endpoint", timeout_s)
        return self.api_url

    def api_answers(self) -> bool:
        try:
            return requests.get(f"{self.api_url}/api/v1/health", timeout=2).status_code == 200
        except requests.RequestException:
            return False

    def start_runner(self, name: str, *options: str) -> RunnerProcess:
        """``payload-runner`` for the task under worker id ``name``, in a fresh work directory."""
        workdir = self.root / name
        workdir.mkdir(parents=True)
        runner = RunnerProcess(name, workdir, self._popen_runner(name, workdir, options))
        with self._lock:
            self.runners[name] = runner
        return runner

    def _popen_runner(self, name: str, workdir: Path, options: tuple[str, ...]) -> subprocess.Popen[bytes]:
        env = {**self.runner_env, "EVENT_SERVICE_TOKEN": self.token, "PYTHONUNBUFFERED": "1"}
        with open(workdir.parent / f"{name}.out", "wb") as out, open(workdir.parent / f"{name}.log", "wb") as log:
            return subprocess.Popen(
                [str(RUNNER), "--server", self.api_url, "--task", self.task, "--worker-id", name,
                 "--workdir", str(workdir), *options], cwd=self.root, env=env, stdin=subprocess.DEVNULL,
                stdout=out, stderr=log, start_new_session=True)

    def kill(self, name: str) -> None:
        """kill -9 one runner (an evicted node); its payloads die with it (PR_SET_PDEATHSIG)."""
        runner = self.runners[name]
        runner.fault = "SIGKILL"
        runner.process.send_signal(signal.SIGKILL)
        runner.process.wait(timeout=30)

    def terminate(self, name: str) -> None:
        """SIGTERM one runner (a batch system reclaiming its slot): it should drain and exit 0."""
        runner = self.runners[name]
        runner.fault = "SIGTERM"
        runner.process.send_signal(signal.SIGTERM)

    def wait_exit(self, name: str, timeout_s: float) -> int:
        """The runner's exit code, once it has exited; fails the test if it has not within ``timeout_s``."""
        runner = self.runners[name]
        self.wait_until(lambda: runner.process.poll() is not None, f"exit of {name}", timeout_s,
                        expected_exit=name)
        runner.checked = True  # the caller judges its exit
        return int(runner.process.returncode)

    def _kill_everything(self) -> None:
        with self._lock:
            processes = [r.process for r in self.runners.values()] + ([self.api] if self.api else [])
        for process in processes:
            with contextlib.suppress(ProcessLookupError, OSError):
                if process.poll() is None:
                    process.send_signal(signal.SIGKILL)

    def close(self) -> None:
        """Kill every runner, stop the API server; nothing is left running."""
        self.watchdog.cancel()
        for runner in self.runners.values():
            if runner.process.poll() is None:
                runner.process.send_signal(signal.SIGKILL)
            runner.process.wait()
        if self.api is not None:
            stop_process(self.api)

    def __enter__(self) -> Deployment:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the ledger, read without side effects ----------------------------------------------------------

    def counts(self) -> dict[str, int]:
        """Ranges per status (a plain query: lapsed leases are left for the API to expire)."""
        task_id = self.ledger.task(self.task).id
        rows = self.ledger.transaction(lambda conn: conn.execute(
            select(ranges.c.status, func.count()).where(ranges.c.task_id == task_id)
            .group_by(ranges.c.status)).all())
        return {str(status): int(n) for status, n in rows}

    def finished(self) -> int:
        return self.counts().get("finished", 0)

    def held(self) -> dict[str, set[str]]:
        """The ranges each worker holds (sent or running), in one query."""
        task_id = self.ledger.task(self.task).id
        rows = self.ledger.transaction(lambda conn: conn.execute(
            select(ranges.c.worker, ranges.c.range_id).where(
                ranges.c.task_id == task_id, ranges.c.status.in_([s.value for s in IN_FLIGHT]))).all())
        found: dict[str, set[str]] = defaultdict(set)
        for worker, range_id in rows:
            found[worker].add(range_id)
        return found

    # -- waiting, with deadlines --------------------------------------------------------------------------

    def check(self, expected_exit: str | None = None) -> None:
        """Fail now when the run overran, the API died, or a runner the test did not end exited badly."""
        if self.watchdog.expired.is_set():
            pytest.fail(f"the suite's deadline of {self.watchdog.seconds:.0f} s passed; every process was killed\n"
                        f"{self.diagnosis()}", pytrace=False)
        if self.api is not None and self.api.poll() is not None:
            pytest.fail(f"the dispatch API exited with {self.api.returncode}:\n{log_tail(self.api_log)}",
                        pytrace=False)
        for runner in self.runners.values():
            code = runner.process.poll()
            if code is None or runner.fault is not None or runner.name == expected_exit or runner.checked:
                continue
            open_ranges = sum(n for status, n in self.counts().items() if status in ("ready", "sent", "running"))
            if code != 0 or open_ranges:
                # Nothing re-opens ranges while runners work: a runner that left early failed, even with 0.
                pytest.fail(f"{runner.name} exited with {code} while {open_ranges} ranges were open:\n"
                            f"{log_tail(runner.log_path)}\n{runner.out_path.read_text(errors='replace')}",
                            pytrace=False)
            runner.checked = True

    def wait_until(self, condition: Callable[[], bool], what: str, timeout_s: float,
                   expected_exit: str | None = None) -> None:
        """Poll ``condition``; a deadline only turns a hang into a clear failure, it asserts no speed."""
        deadline = time.monotonic() + timeout_s
        while not condition():
            self.check(expected_exit)
            if time.monotonic() > deadline:
                pytest.fail(f"no {what} within {timeout_s:.0f} s\n{self.diagnosis()}", pytrace=False)
            time.sleep(POLL_S)

    def wait_for_progress(self, ranges_more: int, what: str, timeout_s: float) -> None:
        """Wait until ``ranges_more`` more ranges are finished than now."""
        target = self.finished() + ranges_more
        self.wait_until(lambda: self.finished() >= target, f"{ranges_more} more finished ranges {what}", timeout_s)

    def diagnosis(self) -> str:
        lines = []
        with contextlib.suppress(Exception):
            lines.append(f"ledger: {self.counts()}; held: {dict(self.held())}")
        for runner in self.runners.values():
            lines.append(f"--- {runner.name} (exit {runner.process.poll()}, fault {runner.fault}):\n"
                         f"{log_tail(runner.log_path, 12)}")
        lines.append(f"--- dispatch API:\n{log_tail(self.api_log, 12)}")
        return "\n".join(lines)

    def api_answers_by_status(self) -> Counter[int]:
        """HTTP status codes in the API's access log."""
        text = self.api_log.read_text(errors="replace")
        return Counter(int(code) for code in re.findall(r'HTTP/1\.[01]" (\d{3})', text))


def terminate_backends(server_url: str, application_name: str) -> int:
    """``pg_terminate_backend`` every connection of ``application_name``; returns how many were ended."""
    with contextlib.closing(pg.connect(server_url, application_name=FAULTS_APPLICATION_NAME)) as conn, \
            conn.cursor() as cur:
        cur.execute("SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE application_name = %s AND pid <> pg_backend_pid()", (application_name,))
        row = cur.fetchone()
        return int(row[0]) if row else 0

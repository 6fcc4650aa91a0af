"""``event-service tasks|status|create|cancel`` against a served API over a real ledger: output and error lines."""

from __future__ import annotations

import os
import re
import signal
import stat
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from rich.console import Console

from event_service.api.app import create_app
from event_service.api.client import DispatchClient
from event_service.api.server import ServerThread, free_port
from event_service.cli.main import main
from event_service.cli.tasks import COLUMNS, RateMeter, bar, progress_view, timestamp
from event_service.ledger import Ledger
from event_service.messages import OutputRef, RangeUpdate, TaskStatus
from event_service.spec import TaskSpec
from tests.event_service.conftest import spec_data

EXE = Path(sys.executable).with_name("event-service")
ADMIN = "cli-tasks-admin"


@dataclass
class Served:
    url: str
    ledger: Ledger

    def create(self, name: str, events: tuple[int, ...] = (25,)) -> str:
        return self.ledger.create_task(TaskSpec.parse(spec_data(name=name, events=events)))[1]

    def finish(self, task: str, worker: str, n: int) -> list[str]:
        """Claim up to ``n`` ranges as ``worker`` and report them finished; returns their ids."""
        claimed = self.ledger.claim(task, worker, n).ranges
        self.ledger.update(task, worker, [
            RangeUpdate(range_id=r.range_id, status="finished", cpu_s=1.0, wall_s=1.0,
                        output=OutputRef(key=f"{task}/{r.range_id}.{r.attempt}", adler32="00000001", size=1))
            for r in claimed])
        return [r.range_id for r in claimed]


@pytest.fixture
def served(sqlite_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Served]:
    with Ledger(sqlite_url) as ledger, ServerThread(create_app(ledger, ADMIN)) as server:
        monkeypatch.setenv("EVENT_SERVICE_URL", server.url)
        monkeypatch.setenv("EVENT_SERVICE_ADMIN_TOKEN", ADMIN)
        yield Served(server.url, ledger)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, list[str], list[str]]:
    """``event-service ARGV`` in this process: exit code, stdout lines, stderr lines."""
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out.splitlines(), err.splitlines()


def status_lines(status: TaskStatus, ranges: str, events: str) -> list[str]:
    return [f"task      {status.task}", f"state     {status.state.value}", f"ranges    {status.ranges}: {ranges}",
            f"events    {events}", f"workers   {status.live_workers} live",
            f"created   {timestamp(status.created_at)}"]


def test_tasks_prints_a_table_of_every_task(served: Served, capsys: pytest.CaptureFixture[str]) -> None:
    served.create("alpha", events=(25,))
    served.create("beta", events=(40, 20))
    served.finish("alpha", "w1", 1)
    served.ledger.claim("alpha", "w2", 1)
    served.ledger.cancel("beta")
    code, out, err = run(capsys, "tasks")
    assert (code, err) == (0, [])
    assert out[0].split() == [c for c in COLUMNS]
    created = {name: timestamp(served.ledger.status(name).created_at) for name in ("alpha", "beta")}
    assert [line.split() for line in out[1:]] == [
        ["alpha", "running", "3", "1", "1", "1", "0", "0", "0", "10/25", "40.0%", "2", created["alpha"]],
        ["beta", "cancelled", "6", "0", "0", "0", "0", "0", "6", "0/60", "0.0%", "0", created["beta"]],
    ]
    # Columns line up: text to the left edge of its header, numbers to the right edge.
    for line in out[1:]:
        assert line.index("running" if "alpha" in line else "cancelled") == out[0].index("STATE")
        assert line.index("%") == out[0].index("DONE") + len("DONE") - 1


def test_tasks_with_none_says_so(served: Served, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, "tasks") == (0, [], [f"no tasks on {served.url}"])


def test_status_with_the_admin_or_the_task_token(served: Served, capsys: pytest.CaptureFixture[str]) -> None:
    token = served.create("gamma", events=(25,))
    served.finish("gamma", "w1", 2)
    served.ledger.claim("gamma", "w2", 1)
    status = served.ledger.status("gamma")
    expected = status_lines(status, "finished 2, sent 1", "20 of 25 done (80.0%)")
    assert run(capsys, "status", "gamma") == (0, expected, [])
    assert run(capsys, "status", "gamma", "--token", token, "--server", served.url + "/") == (0, expected, [])


def test_create_prints_the_token_once_and_cancel_the_status(served: Served, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    spec = tmp_path / "delta.yaml"
    spec.write_text(yaml.safe_dump(spec_data(name="delta", events=(30, 15))))
    code, out, err = run(capsys, "create", str(spec))
    assert code == 0 and out[:2] == ["task    delta", "ranges  5"]
    assert err == ["event-service create: the task token is shown this once; the server keeps only its hash"]
    assert len(out) == 3 and re.fullmatch(r"token   est_[\w-]{43}", out[2]), out
    token = out[2].removeprefix("token   ")
    with DispatchClient(served.url, "delta", token) as client:
        assert client.status().counts["ready"] == 5

    code, out, err = run(capsys, "cancel", "delta")
    assert (code, err) == (0, [])
    assert out == status_lines(served.ledger.status("delta"), "cancelled 5", "0 of 45 done (0.0%)")
    assert out[1] == "state     cancelled"
    assert run(capsys, "status", "delta", "--token", token) == (
        1, [], ["event-service status: HTTP 403: task 'delta' was cancelled: its token is revoked"])


def test_create_writes_the_token_to_a_new_private_file(served: Served, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    spec = tmp_path / "eps.json"
    spec.write_text(yaml.safe_dump(spec_data(name="eps")))
    token_file = tmp_path / "eps.token"
    assert run(capsys, "create", str(spec), "--token-file", str(token_file)) == (
        0, ["task    eps", "ranges  3", f"token   written to {token_file} (mode 0600)"], [])
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    served.ledger.authorize("eps", token_file.read_text().strip())

    # An existing file is refused before the task is created: no token is ever lost.
    spec.write_text(yaml.safe_dump(spec_data(name="eps2")))
    assert run(capsys, "create", str(spec), "--token-file", str(token_file)) == (
        1, [], [f"event-service create: {token_file} exists; the token file must be new"])
    assert served.ledger.task_names() == ["eps"]
    # A refused create leaves no token file behind.
    spec.write_text(yaml.safe_dump(spec_data(name="eps")))
    assert run(capsys, "create", str(spec), "--token-file", str(tmp_path / "again.token")) == (
        1, [], ["event-service create: HTTP 409: a task named 'eps' already exists in the ledger"])
    assert not (tmp_path / "again.token").exists()


def test_error_lines(served: Served, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    served.create("zeta")
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(spec_data(name="bad", events=(0,))))
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: [unclosed\n")
    closed = f"http://127.0.0.1:{free_port()}"
    cases = [
        (("tasks", "--server", closed), 1, f"event-service tasks: cannot reach the dispatch API at {closed}: "
                                           "connection refused"),
        (("tasks", "--token", "wrong"), 1, "event-service tasks: HTTP 403: the admin token is required"),
        (("cancel", "zeta", "--token", "wrong"), 1, "event-service cancel: HTTP 403: the admin token is required"),
        (("status", "zeta", "--token", "wrong"), 1, "event-service status: HTTP 403: the token is not valid for "
                                                    "task 'zeta'"),
        (("status", "nope"), 1, "event-service status: HTTP 404: no task named 'nope' in the ledger"),
        (("cancel", "nope"), 1, "event-service cancel: HTTP 404: no task named 'nope' in the ledger"),
        (("create", str(bad)), 1, f"event-service create: {bad}: inputs.0.events: Input should be greater than 0"),
        (("create", str(broken)), 1, f"event-service create: {broken}: not valid YAML or JSON at line 2, column 1: "
                                     "expected ',' or ']', but got '<stream end>'"),
        (("create", str(tmp_path / "none.yaml")), 1,
         f"event-service create: {tmp_path / 'none.yaml'}: cannot read the task spec: No such file or directory"),
        (("tasks", "--server", served.url + "/event-service"), 1,
         f"event-service tasks: HTTP 404 for {served.url}/event-service/api/v1/tasks: is {served.url}/event-service "
         "the dispatch API's base URL (with its path prefix, e.g. http://airflow:8080/event-service)?"),
        (("tasks", "--server", "127.0.0.1:8000"), 2,
         "event-service tasks: --server must be an http:// or https:// URL, got '127.0.0.1:8000'"),
    ]
    for argv, code, line in cases:
        assert run(capsys, *argv) == (code, [], [line]), argv


def test_missing_server_or_token(served: Served, monkeypatch: pytest.MonkeyPatch,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("EVENT_SERVICE_ADMIN_TOKEN")
    assert run(capsys, "tasks") == (
        2, [], ["event-service tasks: no token: give --token or set EVENT_SERVICE_ADMIN_TOKEN"])
    monkeypatch.delenv("EVENT_SERVICE_URL")
    assert run(capsys, "status", "x", "--token", ADMIN) == (
        2, [], ["event-service status: no server: give --server URL or set EVENT_SERVICE_URL "
                "(e.g. http://airflow:8080/event-service)"])


def _cli_env(served: Served) -> dict[str, str]:
    return {**os.environ, "EVENT_SERVICE_URL": served.url, "EVENT_SERVICE_ADMIN_TOKEN": ADMIN,
            "PYTHONUNBUFFERED": "1"}


def test_the_command_fails_in_one_line_without_traceback(served: Served) -> None:
    done = subprocess.run([str(EXE), "status", "nope"], env=_cli_env(served), capture_output=True, text=True,
                          timeout=60)
    assert (done.returncode, done.stdout, done.stderr) == (
        1, "", "event-service status: HTTP 404: no task named 'nope' in the ledger\n")


PROGRESS = re.compile(r"^watched running \| ranges (.+) \| events (\d+)/25 \(([\d.]+)%\) \| "
                      r"(rate measuring|[\d.]+ events/s) \| ETA (unknown|\d+:\d\d:\d\d) \| (\d+) workers$")


def test_watch_follows_the_task_until_it_is_done(served: Served) -> None:
    served.create("watched", events=(25,))
    process = subprocess.Popen([str(EXE), "status", "watched", "--watch", "--interval", "0.2"],
                               env=_cli_env(served), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    try:
        assert process.stdout is not None
        for done in (0, 10, 20):  # finish the next range once the watch has shown the task at this point
            while not (match := PROGRESS.match(line := process.stdout.readline().rstrip())) or \
                    int(match.group(2)) != done:
                assert line, f"the watch ended early: {lines}"
                lines.append(line)
            lines.append(line)
            served.finish("watched", "w1", 1)
        out, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    lines += out.splitlines()
    assert (process.returncode, err) == (0, "")
    assert re.fullmatch(r"watched done \| ranges 3 finished \| events 25/25 \(100\.0%\) \| [\d.]+ events/s \| "
                        r"ETA 0:00:00 \| 1 workers", lines[-1]), lines[-1]
    progress = [PROGRESS.match(line) for line in lines[:-1]]
    assert all(progress), lines  # every line before the last shows the running task
    rates = [m.group(4) for m in progress if m]
    assert rates[0] == "rate measuring" and float(rates[-1].split()[0]) > 0


def test_watch_ends_with_ctrl_c_and_exit_code_0(served: Served) -> None:
    served.create("endless", events=(25,))
    process = subprocess.Popen([str(EXE), "status", "endless", "--watch", "--interval", "0.2"],
                               env=_cli_env(served), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        assert process.stdout.readline().startswith("endless running | ranges 3 ready | events 0/25 (0.0%)")
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert (process.returncode, err) == (0, "")


def _status(**counts: int) -> TaskStatus:
    full = {s: 0 for s in ("ready", "sent", "running", "finished", "done", "merged", "failed", "fatal", "cancelled",
                           "corrupted")} | counts
    return TaskStatus.model_validate({"task": "view", "state": "running", "ranges": sum(full.values()),
                                      "counts": full, "events_total": 1000, "events_done": 300, "live_workers": 3,
                                      "created_at": 1.7e9})


def test_rate_and_eta_come_from_a_window_of_samples() -> None:
    meter = RateMeter(window_s=30)
    status = _status(ready=70, finished=30)
    meter.add(100.0, 100)
    assert (meter.rate, meter.eta(status)) == (None, None)
    meter.add(110.0, 300)
    assert (meter.rate, meter.eta(status)) == (20.0, 35.0)  # 700 events left at 20 events/s
    meter.add(140.0, 400)  # the sample at 100 s leaves the 30 s window
    assert meter.rate == pytest.approx(100 / 30)
    meter.add(150.0, 400)
    meter.add(180.0, 400)
    assert (meter.rate, meter.eta(status)) == (0.0, None)  # stalled: no estimate


def test_the_live_view_draws_ranges_per_status_as_coloured_segments() -> None:
    status = _status(ready=50, sent=4, running=6, finished=30, fatal=4, merged=6)
    segments = [(span.style, span.end - span.start) for span in bar(status, 50).spans]
    assert segments == [("blue", 3), ("green", 15), ("cyan", 3), ("yellow", 2), ("grey50", 25), ("red", 2)]
    # Cells that do not divide evenly go to the largest remainders: 1/3 and 2/3 of 10 cells are 3 and 7.
    assert [(span.style, span.end - span.start) for span in bar(_status(finished=1, ready=2), 10).spans] == [
        ("green", 3), ("grey50", 7)]
    console = Console(width=80, record=True, force_terminal=True, color_system="truecolor")
    meter = RateMeter()
    meter.add(0.0, 100)
    meter.add(10.0, 300)
    console.print(progress_view(status, meter, width=50))
    assert [line.rstrip() for line in console.export_text().splitlines()] == [
        "view  running  3 live workers  100 ranges",
        "━" * 50 + "  30.0%",
        "■ merged 6   ■ finished 30   ■ running 6   ■ sent 4   ■ ready 50   ■ fatal 4",
        "events 300/1,000   20.0 events/s   ETA 0:00:35",
    ]


def test_create_can_check_the_inputs_first(served: Served, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    spec = tmp_path / "eta.yaml"
    data = spec_data(name="eta")  # its inputs are file:///data/…, which this machine does not have
    spec.write_text(yaml.safe_dump(data))
    lfn, url = data["inputs"][0]["lfn"], data["inputs"][0]["url"]
    assert run(capsys, "create", str(spec), "--check-inputs") == (1, [], [
        f"event-service create: {spec}: 1 of 1 inputs cannot be used (nothing created): inputs.0 ({lfn}): "
        f"{url}: no such file"])
    assert served.ledger.task_names() == []

"""The payload runner as a real process with real toysim payloads, against a real dispatch API."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import uproot

from event_service.checksums import adler32_file
from event_service.ledger import Ledger
from event_service.spec import InputFile
from tests.payload_runner.conftest import RUNNER, Dispatch, wait_for


def summary(out: str) -> dict[str, Any]:
    line = next(line for line in out.splitlines() if line.startswith("summary "))
    return dict(json.loads(line.removeprefix("summary ")))


def counts(ledger: Ledger, task: str = "rt") -> dict[str, int]:
    return {str(k): v for k, v in ledger.status(task).counts.items() if v}


def event_numbers_of_outputs(ledger: Ledger, objects: Path, task: str = "rt") -> Counter[int]:
    """Every event number in every finished range's output object, after checking its adler32 and size."""
    seen: Counter[int] = Counter()
    for row in ledger.finished_ranges(task):
        assert row.output_key is not None
        root = objects if row.output_store is None else Path(row.output_store.removeprefix("file://"))
        path = root / row.output_key
        assert adler32_file(path) == (row.adler32, row.size), row.range_id
        with uproot.open(path) as opened:
            numbers = opened["events"]["event_number"].array(library="np")
        seen.update(int(n) for n in numbers)
    return seen


def test_a_runner_processes_a_whole_task(dispatch: Dispatch, evnt: list[InputFile], tmp_path: Path) -> None:
    token = dispatch.create(evnt)
    code, out = dispatch.run(token, tmp_path / "w1", "--workers", "2")
    assert code == 0, dispatch.log(tmp_path / "w1")
    result = summary(out)
    assert (result["reason"], result["finished"], result["events"], result["failed"]) == ("done", 12, 120, 0)
    assert result["payload_cpu_s"] > 0 and result["staged_bytes"] > 0
    assert counts(dispatch.ledger) == {"finished": 12}
    assert event_numbers_of_outputs(dispatch.ledger, tmp_path / "objects") == Counter(range(1, 121))
    assert not list((tmp_path / "w1").glob("payload-*/HITS.*.root"))  # reported outputs are removed locally


def test_two_runners_share_one_task(sqlite_dispatch: Dispatch, evnt: list[InputFile], tmp_path: Path) -> None:
    # 0.5 s of payload CPU per range: one runner alone needs at least 12 s for the task, far longer than the
    # other's start-up even on a loaded machine, so both get ranges (at 5 ms a range one could take them all).
    token = sqlite_dispatch.create(evnt, per_range=5, payload={"command": "toysim --cost-ms 100"})
    runners = [sqlite_dispatch.runner(token, tmp_path / f"w{n}", "--batch", "2") for n in (1, 2)]
    outs = [process.communicate(timeout=120)[0] for process in runners]
    assert [p.returncode for p in runners] == [0, 0]
    finished = [summary(out)["finished"] for out in outs]
    assert sum(finished) == 24 and min(finished) > 0
    assert event_numbers_of_outputs(sqlite_dispatch.ledger, tmp_path / "objects") == Counter(range(1, 121))


def test_sigterm_drains_and_gives_back_unstarted_ranges(sqlite_dispatch: Dispatch, evnt: list[InputFile],
                                                        tmp_path: Path) -> None:
    token = sqlite_dispatch.create(evnt, payload={"command": "toysim --cost-ms 60"})  # 0.6 s per range
    process = sqlite_dispatch.runner(token, tmp_path / "w1", "--batch", "6", "--grace", "20")
    wait_for(lambda: sqlite_dispatch.ledger.status("rt").counts["finished"] >= 1, what="a first finished range")
    process.send_signal(signal.SIGTERM)
    out, _ = process.communicate(timeout=60)
    assert process.returncode == 0, sqlite_dispatch.log(tmp_path / "w1")
    result = summary(out)
    assert result["reason"] == "drained" and result["released"] >= 1
    state = counts(sqlite_dispatch.ledger)
    assert "sent" not in state and "running" not in state  # nothing left held by the drained runner
    assert state["finished"] == result["finished"] and state["ready"] == 12 - result["finished"]
    given_back = [t for t in sqlite_dispatch.ledger.transitions("rt") if t["to_status"] == "ready"]
    assert given_back and {t["from_status"] for t in given_back} == {"sent"}


def one_file_task(dispatch: Dispatch, evnt: list[InputFile], command: str, **fields: Any) -> str:
    return dispatch.create(evnt[:1], per_range=30, payload={"command": command}, **fields)


def test_a_crashed_payload_fails_its_range_and_is_restarted(sqlite_dispatch: Dispatch, evnt: list[InputFile],
                                                            tmp_path: Path) -> None:
    token = one_file_task(sqlite_dispatch, evnt, "toysim --cost-ms 1 --crash-at-range 2")
    code, out = sqlite_dispatch.run(token, tmp_path / "w1")
    assert code == 0, sqlite_dispatch.log(tmp_path / "w1")
    assert summary(out)["restarts"] == 1
    moves = [(t["to_status"], t["attempt"], t["error_code"])
             for t in sqlite_dispatch.ledger.transitions("rt", "rt.1.30-59")]
    assert moves == [("sent", 1, None), ("failed", 1, "ERR_PAYLOAD_EXIT"), ("ready", 1, "ERR_PAYLOAD_EXIT"),
                     ("sent", 2, None), ("finished", 2, None)]
    error = sqlite_dispatch.ledger.transitions("rt", "rt.1.30-59")[1]["error"]
    assert "exited with code 3" in error and "crashing at range 2" in error
    assert counts(sqlite_dispatch.ledger) == {"finished": 2}


def test_a_silent_payload_is_killed(sqlite_dispatch: Dispatch, evnt: list[InputFile], tmp_path: Path) -> None:
    token = one_file_task(sqlite_dispatch, evnt, "toysim --cost-ms 1 --hang-at-range 2")
    code, _ = sqlite_dispatch.run(token, tmp_path / "w1", "--silence-timeout", "2")
    assert code == 0, sqlite_dispatch.log(tmp_path / "w1")
    codes = [t["error_code"] for t in sqlite_dispatch.ledger.transitions("rt", "rt.1.30-59")
             if t["to_status"] == "failed"]
    assert codes == ["ERR_PAYLOAD_HANG"]
    assert counts(sqlite_dispatch.ledger) == {"finished": 2}


def test_payload_errors_use_up_the_attempts(sqlite_dispatch: Dispatch, evnt: list[InputFile], tmp_path: Path) -> None:
    token = one_file_task(sqlite_dispatch, evnt, "toysim --cost-ms 1 --fail-range-ids rt.1.0-29", max_attempts=2)
    code, out = sqlite_dispatch.run(token, tmp_path / "w1")
    assert code == 0 and summary(out)["failed"] == 2
    assert counts(sqlite_dispatch.ledger) == {"finished": 1, "fatal": 1}
    fatal = sqlite_dispatch.ledger.transitions("rt", "rt.1.0-29")[-1]
    assert fatal["to_status"] == "fatal" and fatal["error_code"] == "ERR_TOYSIM_INJECTED"


def test_stage_out_fails_over_to_the_second_store(sqlite_dispatch: Dispatch, evnt: list[InputFile],
                                                  tmp_path: Path) -> None:
    failover = tmp_path / "failover"
    token = sqlite_dispatch.create(evnt[:1], object_store={
        "url": "file:///dev/null/no-store-here", "failover": {"url": failover.as_uri()}})
    code, out = sqlite_dispatch.run(token, tmp_path / "w1")
    assert code == 0, sqlite_dispatch.log(tmp_path / "w1")
    assert counts(sqlite_dispatch.ledger) == {"finished": 6}
    stores = {row.output_store for row in sqlite_dispatch.ledger.finished_ranges("rt")}
    assert stores == {failover.as_uri()}
    assert event_numbers_of_outputs(sqlite_dispatch.ledger, tmp_path / "objects") == Counter(range(1, 61))


def test_stage_out_failure_without_failover_redispatches(sqlite_dispatch: Dispatch, evnt: list[InputFile],
                                                          tmp_path: Path) -> None:
    token = sqlite_dispatch.create(evnt[:1], object_store={"url": "file:///dev/null/no-store-here"})
    code, out = sqlite_dispatch.run(token, tmp_path / "w1", "--outage-timeout", "3")
    assert code == 3, sqlite_dispatch.log(tmp_path / "w1")
    result = summary(out)
    assert result["reason"] == "stageout_failed" and result["finished"] == 0 and result["failed"] >= 2
    assert counts(sqlite_dispatch.ledger) == {"ready": 6}  # failed attempts and given-back ranges are ready again
    code, out = sqlite_dispatch.run(token, tmp_path / "w2", "--store", (tmp_path / "objects").as_uri())
    assert code == 0 and counts(sqlite_dispatch.ledger) == {"finished": 6}
    finished_at = {r.range_id: r.attempt for r in sqlite_dispatch.ledger.finished_ranges("rt")}
    failed_at: dict[str, int] = {}
    for t in sqlite_dispatch.ledger.transitions("rt"):
        if t["to_status"] == "failed":
            assert t["error_code"] == "ERR_STAGEOUT"
            failed_at[t["range_id"]] = max(failed_at.get(t["range_id"], 0), t["attempt"])
    assert failed_at and all(finished_at[r] > attempt for r, attempt in failed_at.items())


def manifest_outputs(workdir: Path) -> int:
    path = workdir / "manifest.jsonl"
    return path.read_text().count('"event":"output"') if path.exists() else 0


def kill_runner_after_outputs(dispatch: Dispatch, token: str, workdir: Path, outputs: int) -> list[int]:
    """Start a runner that reports nothing for a minute, kill -9 it once it has ``outputs`` outputs."""
    process = dispatch.runner(token, workdir, "--batch", "20", "--report-interval", "60")
    wait_for(lambda: manifest_outputs(workdir) >= outputs, what=f"{outputs} outputs in the manifest")
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=30)
    return [int(pid) for pid in re.findall(r"\(pid (\d+)\)", dispatch.log(workdir))]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"


def test_outputs_left_by_a_killed_runner_are_recovered(sqlite_dispatch: Dispatch, evnt: list[InputFile],
                                                       tmp_path: Path) -> None:
    token = sqlite_dispatch.create(evnt, lease_seconds=3)
    payloads = kill_runner_after_outputs(sqlite_dispatch, token, tmp_path / "w1", 3)
    wait_for(lambda: not any(alive(pid) for pid in payloads), 10, "the payloads to die with their runner")
    assert counts(sqlite_dispatch.ledger).get("finished", 0) == 0
    code, out = sqlite_dispatch.run(token, tmp_path / "w1")  # same work directory, same worker id
    assert code == 0, sqlite_dispatch.log(tmp_path / "w1")
    assert summary(out)["recovered"] >= 3
    assert counts(sqlite_dispatch.ledger) == {"finished": 12}
    assert event_numbers_of_outputs(sqlite_dispatch.ledger, tmp_path / "objects") == Counter(range(1, 121))


def test_recovery_skips_ranges_another_worker_finished(sqlite_dispatch: Dispatch, evnt: list[InputFile],
                                                       tmp_path: Path) -> None:
    token = sqlite_dispatch.create(evnt, lease_seconds=2)
    kill_runner_after_outputs(sqlite_dispatch, token, tmp_path / "w1", 3)
    code, _ = sqlite_dispatch.run(token, tmp_path / "w2")  # another worker takes everything over
    assert code == 0 and counts(sqlite_dispatch.ledger) == {"finished": 12}
    before = sorted(p.relative_to(tmp_path) for p in (tmp_path / "objects").rglob("*.root"))
    code, out = sqlite_dispatch.run(token, tmp_path / "w1")
    assert code == 0 and summary(out)["recovered"] == 0
    assert any("left-over output dropped" in note for note in summary(out)["notes"])
    assert sorted(p.relative_to(tmp_path) for p in (tmp_path / "objects").rglob("*.root")) == before
    assert not list((tmp_path / "w1").glob("payload-*/HITS.*.root"))


def test_what_a_previous_run_left_unreported_in_the_payload_folders_is_removed(
        sqlite_dispatch: Dispatch, evnt: list[InputFile], tmp_path: Path) -> None:
    # What a runner killed between its payload's write and the report leaves: an output no manifest names.
    folder = tmp_path / "w" / "payload-0"
    (folder / "scratch").mkdir(parents=True)
    (folder / "scratch" / "tmp.dat").write_bytes(b"x")
    (folder / "HITS.rt.1.0-9.root").write_bytes(b"an output never reported")
    (folder / "payload.7.log").write_text("the log of a payload of the previous run\n")
    token = sqlite_dispatch.create(evnt)
    code, out = sqlite_dispatch.run(token, tmp_path / "w")
    assert code == 0 and summary(out)["finished"] == 12
    assert not (folder / "scratch").exists() and not list(folder.glob("HITS.*.root"))
    assert (folder / "payload.7.log").read_text() == "the log of a payload of the previous run\n"
    assert "removed 2 entries that a previous run's payloads left" in sqlite_dispatch.log(tmp_path / "w")


def test_a_job_file_runs_without_a_server(evnt: list[InputFile], tmp_path: Path) -> None:
    job = {"task": "offgrid", "payload": {"command": "toysim --cost-ms 1"},
           "object_store": {"url": (tmp_path / "objects").as_uri()},
           "ranges": [{"range_id": f"offgrid.1.{first}-{first + 19}", "lfn": evnt[0].lfn, "guid": evnt[0].guid,
                       "url": evnt[0].url, "first_event": first, "last_event": first + 19, "attempt": 1}
                      for first in (0, 20, 40)]}
    (tmp_path / "job.json").write_text(json.dumps(job))
    done = subprocess.run([str(RUNNER), "--job-file", str(tmp_path / "job.json"), "--workdir", str(tmp_path / "w")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads((tmp_path / "w" / "report.json").read_text())
    assert {item["status"] for item in report["ranges"].values()} == {"finished"}
    for item in report["ranges"].values():
        path = tmp_path / "objects" / item["output"]["key"]
        assert adler32_file(path) == (item["output"]["adler32"], item["output"]["size"])


@pytest.mark.parametrize(("args", "message"), [
    (["--server", "http://127.0.0.1:9"], "--server needs --task and a token"),
    (["--job-file", "/nonexistent/job.json"], "cannot read the job file"),
    (["--server", "http://127.0.0.1:9", "--task", "t", "--token", "x", "--workers", "0"],
     "--workers must be at least 1"),
])
def test_bad_arguments_are_named(args: list[str], message: str, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "EVENT_SERVICE_TOKEN"}
    done = subprocess.run([str(RUNNER), *args, "--workdir", str(tmp_path / "w")], capture_output=True, text=True,
                          timeout=60, env=env)
    assert done.returncode == 2 and message in done.stderr


def test_a_bad_job_file_names_the_field(tmp_path: Path) -> None:
    (tmp_path / "job.json").write_text(json.dumps({"task": "x", "object_store": {"url": "file:///tmp/x"},
                                                   "ranges": [{"range_id": "x.1.0-9"}]}))
    done = subprocess.run([str(RUNNER), "--job-file", str(tmp_path / "job.json"), "--workdir", str(tmp_path / "w")],
                          capture_output=True, text=True, timeout=60, env={**os.environ, "PATH": os.defpath})
    assert done.returncode == 2 and "ranges.0.lfn: Field required" in done.stderr
    assert sys.executable  # the runner was found by its absolute path


def test_a_runner_works_on_the_ledger_directly(dispatch: Dispatch, evnt: list[InputFile], tmp_path: Path) -> None:
    dispatch.create(evnt)
    url = str(dispatch.ledger.engine.url.render_as_string(hide_password=False))
    done = subprocess.run([str(RUNNER), "--ledger", url, "--task", "rt", "--workdir", str(tmp_path / "w"),
                           "--workers", "2"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert summary(done.stdout)["finished"] == 12
    assert counts(dispatch.ledger) == {"finished": 12}
    assert event_numbers_of_outputs(dispatch.ledger, tmp_path / "objects") == Counter(range(1, 121))


def test_a_cancelled_tasks_runner_stops_on_its_revoked_token(sqlite_dispatch: Dispatch, evnt: list[InputFile],
                                                             tmp_path: Path) -> None:
    token = sqlite_dispatch.create(evnt, payload={"command": "toysim --cost-ms 50"})
    process = sqlite_dispatch.runner(token, tmp_path / "w1", "--workers", "2")
    try:
        wait_for(lambda: counts(sqlite_dispatch.ledger).get("finished", 0) >= 1, what="a finished range")
        sqlite_dispatch.ledger.cancel("rt", by="admin")
        out, _ = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0, sqlite_dispatch.log(tmp_path / "w1")
    assert summary(out)["reason"] == "cancelled"
    # A runner started afterwards is refused at once, with the server's reason.
    code, _ = sqlite_dispatch.run(token, tmp_path / "w2")
    assert code == 2
    assert ("the dispatch API refused: task 'rt' was cancelled: its token is revoked (HTTP 403)"
            in sqlite_dispatch.log(tmp_path / "w2"))

"""The embedded demo: one task on SQLite and a local object store, drained by payload runners, one evicted."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import uproot

from event_service import settings
from event_service.api.app import create_app
from event_service.api.client import AdminClient
from event_service.api.server import ServerThread
from event_service.checksums import adler32_file
from event_service.inputs.generate import make_inputs
from event_service.ledger import Ledger
from event_service.spec import TaskSpec
from event_service.statuses import RangeStatus, TaskState

RUNNER = Path(sys.executable).with_name("payload-runner")


def _spec(workdir: Path, files: int, events: int, per_range: int, cost_ms: float, lease_s: int) -> TaskSpec:
    inputs = make_inputs(workdir / "inputs", events=events, files=files, force=True)
    return TaskSpec.parse({
        "name": "demo",
        "inputs": [item.model_dump() for item in inputs],
        "events_per_range": per_range,
        "lease_seconds": lease_s,
        "max_attempts": 3,
        "payload": {"command": f"toysim --cost-ms {cost_ms}"},
        "workers": 3,
        "object_store": {"url": (workdir / "objects").as_uri()},
        "merge": {"output_url": (workdir / "results").as_uri()},
    }, "demo task")


def _start_runner(url: str, token: str, workdir: Path, name: str) -> subprocess.Popen[str]:
    with (workdir / f"{name}.log").open("w") as log:
        return subprocess.Popen([str(RUNNER), "--server", url, "--task", "demo", "--workdir", str(workdir / name),
                                 "--worker-id", name], stdout=subprocess.PIPE, stderr=log, text=True,
                                env={**os.environ, settings.TOKEN.name: token})


def run_demo(workdir: Path, *, files: int = 2, events: int = 2000, events_per_range: int = 10,
             runners: int = 3, cost_ms: float = 1.0, lease_seconds: int = 5) -> int:
    """Run one task end to end on the embedded defaults and print its summary; returns an exit code."""
    workdir = workdir.resolve()
    if workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    print(f"making {events} generator events in {files} ROOT files under {workdir / 'inputs'}")
    spec = _spec(workdir, files, events, events_per_range, cost_ms, lease_seconds)
    admin = secrets.token_urlsafe(16)
    ledger = Ledger(f"sqlite:///{workdir / 'ledger.sqlite'}")
    started = time.perf_counter()
    with ServerThread(create_app(ledger, admin)) as server:
        with AdminClient(server.url, admin) as client:
            token = client.create_task(spec).token
        print(f"task 'demo': {spec.total_events} events in {spec.total_ranges} ranges of {events_per_range}, "
              f"dispatch API at {server.url}, ledger {workdir / 'ledger.sqlite'}")
        names = [f"runner-{n}" for n in range(1, runners + 1)]
        processes = {name: _start_runner(server.url, token, workdir, name) for name in names}
        evicted = names[0]
        # A spot instance vanishes: the first runner is killed outright once it has done some work.
        while ledger.status("demo").counts[RangeStatus.FINISHED] < spec.total_ranges // 10:
            if all(p.poll() is not None for p in processes.values()):
                break  # the runners ended early; the summary below says how
            time.sleep(0.05)
        processes[evicted].send_signal(signal.SIGKILL)
        print(f"{evicted} killed with SIGKILL (an evicted spot instance); its ranges return when the "
              f"{lease_seconds} s lease lapses")
        summaries: dict[str, dict[str, Any]] = {}
        for name, process in processes.items():
            out, _ = process.communicate(timeout=600)
            for line in out.splitlines():
                if line.startswith("summary "):
                    summaries[name] = json.loads(line.removeprefix("summary "))
        status = ledger.status("demo")
    elapsed = time.perf_counter() - started
    return _report(ledger, spec, status.state, workdir, evicted, summaries, elapsed)


def _report(ledger: Ledger, spec: TaskSpec, state: TaskState, workdir: Path, evicted: str,
            summaries: dict[str, dict[str, Any]], elapsed: float) -> int:
    status = ledger.status(spec.name)
    transitions = ledger.transitions(spec.name)
    lapsed = {t["range_id"] for t in transitions if t["error_code"] == "lease_expired"}
    numbers: Counter[int] = Counter()
    bad = []
    for row in ledger.finished_ranges(spec.name):
        path = workdir / "objects" / (row.output_key or "")
        if not path.is_file() or adler32_file(path) != (row.adler32, row.size):
            bad.append(row.range_id)
            continue
        with uproot.open(path) as opened:
            numbers.update(int(n) for n in opened["events"]["event_number"].array(library="np"))
    ledger.close()
    expected = Counter(range(1, spec.total_events + 1))
    print(f"task 'demo': {state} in {elapsed:.1f} s")
    print("  ranges:  " + ", ".join(f"{n} {s}" for s, n in status.counts.items() if n) + f" (of {status.ranges})")
    print(f"  events:  {status.events_done} of {status.events_total} done ({status.events_done / elapsed:.0f}/s)")
    for name, result in sorted(summaries.items()):
        print(f"  {name}: {result['finished']} ranges, payload CPU {result['payload_cpu_s']:.1f} s, "
              f"{result['staged_bytes'] / 1e6:.1f} MB staged out, exit {result['exit_code']}")
    by_evicted = sum(1 for t in transitions if t["worker"] == evicted and t["to_status"] == RangeStatus.FINISHED)
    print(f"  {evicted}: {by_evicted} ranges, then evicted; {len(lapsed)} ranges it held were re-dispatched "
          "after their lease lapsed")
    print(f"  outputs: {len(numbers.keys() & expected.keys())} distinct events in the stored outputs, "
          f"{sum(numbers.values()) - len(numbers)} duplicates, {len(expected.keys() - numbers.keys())} missing; "
          f"{len(bad)} objects failed their adler32 check")
    ok = (state == TaskState.DONE and not bad and numbers == expected
          and all(summaries[name]["exit_code"] == 0 for name in summaries))
    print("demo " + ("succeeded" if ok else "FAILED"))
    return 0 if ok else 1

"""The README demo: a small task run as its Airflow DAG with ``airflow dags test`` on SQLite, then validated."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import uproot
import yaml

from event_service import settings
from event_service.inputs.generate import make_inputs
from event_service.ledger import Ledger
from event_service.merge.register import catalog_entries

REPO = Path(__file__).resolve().parents[2]  # the checkout: its dags/ folder
AIRFLOW = Path(sys.executable).with_name("airflow")


def airflow_environment(workdir: Path, tasks: Path, dags: Path) -> dict[str, str]:
    """Airflow on SQLite in ``workdir``, with the event service's connections for the embedded mode."""
    ledger = {"conn_type": "sqlite", "host": str(workdir / "ledger.sqlite")}
    return {
        **os.environ,
        "AIRFLOW_HOME": str(workdir / "airflow"),
        "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "false",
        "AIRFLOW__CORE__UNIT_TEST_MODE": "false",
        "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
        "AIRFLOW__EVENT_SERVICE__TASKS_FOLDER": str(tasks),
        "AIRFLOW__EVENT_SERVICE__POLL_INTERVAL": "1",
        "AIRFLOW__EVENT_SERVICE__DISPATCH_CONN_ID": "",
        "AIRFLOW_CONN_EVENT_SERVICE_LEDGER": json.dumps(ledger),
        settings.WORKDIR.name: str(workdir / "work"),
    }


def write_spec(workdir: Path, *, files: int, events: int, per_range: int, slots: int) -> dict[str, Any]:
    inputs = make_inputs(workdir / "inputs", events=events, files=files, force=True)
    spec = {
        "name": "demo",
        "inputs": [item.model_dump() for item in inputs],
        "events_per_range": per_range,
        "lease_seconds": 30,
        "payload": {"command": "toysim --cost-ms 1"},
        "workers": slots,
        "object_store": {"url": (workdir / "objects").as_uri()},
        "merge": {"output_url": (workdir / "results").as_uri(), "max_events_per_file": max(1, events // 2)},
    }
    (workdir / "tasks").mkdir(parents=True, exist_ok=True)
    (workdir / "tasks" / "demo.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    return spec


def _run(command: list[str], env: dict[str, str], log: Path) -> None:
    with log.open("a") as stream:
        stream.write(f"$ {' '.join(command)}\n")
        stream.flush()
        done = subprocess.run(command, env=env, stdout=stream, stderr=subprocess.STDOUT, check=False)
    if done.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-40:])
        raise RuntimeError(f"{' '.join(command[:3])} failed with exit code {done.returncode}; the end of {log}:\n"
                           f"{tail}")


def validate(workdir: Path, events: int) -> dict[str, Any]:
    """Read the merged files back from normal storage: every event of the task there exactly once."""
    with Ledger(f"sqlite:///{workdir / 'ledger.sqlite'}") as ledger:
        status = ledger.status("demo")
        entries = catalog_entries(ledger, task="demo")
    seen: Counter[int] = Counter()
    for entry in entries:
        with uproot.open(entry.location.removeprefix("file://")) as opened:
            seen.update(int(n) for n in opened["events"]["event_number"].array(library="np"))
    return {
        "task": "demo",
        "ranges": status.ranges,
        "ranges_finished": status.counts["finished"] + status.counts["merged"],
        "events_merged": sum(entry.events for entry in entries),
        "outputs": [{"url": e.location, "events": e.events, "adler32": e.adler32, "size": e.size,
                     "certification": e.certification, "validation": e.validation} for e in entries],
        "validated": seen == Counter(range(1, events + 1)),
    }


def run_dag_demo(workdir: Path, *, files: int = 2, events_per_file: int = 500, per_range: int = 10,
                 slots: int = 2) -> int:
    """Generate inputs, write the spec, run ``airflow dags test es_demo``, print one JSON line of results."""
    workdir = workdir.resolve()
    if workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    started = time.perf_counter()
    events = files * events_per_file
    write_spec(workdir, files=files, events=events, per_range=per_range, slots=slots)
    env = airflow_environment(workdir, workdir / "tasks", REPO / "dags")
    log = workdir / "airflow.log"
    print(f"inputs, task spec and Airflow home in {workdir}; Airflow's output goes to {log}", file=sys.stderr)
    _run([str(AIRFLOW), "db", "migrate"], env, log)
    print(f"Airflow metadata database ready ({time.perf_counter() - started:.0f} s); running the DAG es_demo",
          file=sys.stderr)
    _run([str(AIRFLOW), "dags", "test", "es_demo"], env, log)
    result = validate(workdir, events)
    print(f"DAG es_demo finished in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    print(json.dumps(result))
    return 0 if result["validated"] else 1

"""Beyond one machine: Airflow with CeleryExecutor and a Redis broker, two Celery workers, and two runners
started by hand outside Airflow, all on one task, as processes on this machine."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import uproot

from event_service.api.client import AdminClient
from event_service.inputs.generate import make_inputs
from event_service.ledger import Ledger
from event_service.merge.register import catalog_entries
from event_service.spec import TaskSpec
from tests import servers
from tests.airflow_cluster import AirflowCluster, ClusterConfig, pg_database
from tests.servers import S3Server

TASK = "celery"
EVENTS, FILES, PER_RANGE, SLOTS, PER_MERGED_FILE = 400, 2, 5, 4, 200
RUNNER = Path(sys.executable).with_name("payload-runner")
OUTSIDE = ("site-a-runner", "site-b-runner")


@pytest.fixture
def broker() -> Iterator[servers.RedisServer]:
    try:
        with servers.redis() as server:
            yield server
    except servers.ServerUnavailable as exc:
        pytest.fail(str(exc), pytrace=False)


def spec(inputs_dir: Path, bucket: str, endpoint_url: str) -> TaskSpec:
    inputs = make_inputs(inputs_dir, events=EVENTS, files=FILES)
    return TaskSpec.parse({
        "name": TASK, "inputs": [item.model_dump() for item in inputs], "events_per_range": PER_RANGE,
        "lease_seconds": 30, "payload": {"command": "toysim --cost-ms 20"}, "workers": SLOTS,
        "object_store": {"url": f"s3://{bucket}/ranges", "endpoint_url": endpoint_url},
        "merge": {"output_url": f"s3://{bucket}/merged", "endpoint_url": endpoint_url,
                  "max_events_per_file": PER_MERGED_FILE},
    })


def start_outside_runner(name: str, cluster: AirflowCluster, token: str, s3: S3Server,
                         workdir: Path) -> subprocess.Popen[bytes]:
    """A site operator's runner: its own machine (here a work directory), the task's token, the HTTP API."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(("AWS_", "AIRFLOW"))}
    env.update(AWS_ACCESS_KEY_ID=s3.access_key, AWS_SECRET_ACCESS_KEY=s3.secret_key, AWS_DEFAULT_REGION=s3.region,
               EVENT_SERVICE_TOKEN=token, PYTHONUNBUFFERED="1")
    workdir.mkdir(parents=True)
    with (workdir.parent / f"{name}.log").open("wb") as log:
        return subprocess.Popen([str(RUNNER), "--server", cluster.dispatch_url, "--task", TASK, "--worker-id", name,
                                 "--workdir", str(workdir), "--workers", "1", "--idle-timeout", "60"],
                                env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


@pytest.mark.integration
@pytest.mark.celery
def test_a_task_runs_on_two_celery_workers_with_runners_from_outside(
        pg_server: str, s3_server: S3Server, s3_bucket: str, s3_client: Any, broker: servers.RedisServer,
        tmp_path: Path) -> None:
    task_spec = spec(tmp_path / "evnt", s3_bucket, s3_server.endpoint_url)
    (tmp_path / "tasks").mkdir()
    outside: dict[str, subprocess.Popen[bytes]] = {}
    with pg_database(pg_server, "airflow") as metadata_url, pg_database(pg_server, "ledger") as ledger_url:
        config = ClusterConfig(home=tmp_path / "airflow", metadata_url=metadata_url, ledger_url=ledger_url,
                               tasks_folder=tmp_path / "tasks", s3=s3_server, executor="CeleryExecutor",
                               celery_broker_url=broker.url, celery_workers=2, celery_concurrency=3,
                               parallelism=8, poll_interval=1.0, start_timeout=180, command_timeout=60,
                               settings={"AIRFLOW__EVENT_SERVICE__STALL_TIMEOUT": "60"})
        cluster = AirflowCluster(config)
        try:
            with cluster:
                # The production manager creates the task through the API; its DAG appears from the ledger.
                with AdminClient(cluster.dispatch_url, config.admin_token) as admin:
                    token = admin.create_task(task_spec).token
                cluster.wait_for_dag(f"es_{TASK}", timeout=120)
                run_id = cluster.trigger(f"es_{TASK}", {"workers": SLOTS})
                for name in OUTSIDE:
                    outside[name] = start_outside_runner(name, cluster, token, s3_server, tmp_path / "sites" / name)
                run = cluster.wait_for_run(f"es_{TASK}", run_id, timeout=300)
                for name, process in outside.items():
                    assert process.wait(90) == 0, (tmp_path / "sites" / f"{name}.log").read_text()[-3000:]
                pilots = cluster.query(
                    "SELECT map_index, hostname, state FROM task_instance WHERE dag_id = %(dag)s "
                    "AND run_id = %(run)s AND task_id = 'run_pilot' ORDER BY map_index",
                    {"dag": f"es_{TASK}", "run": run_id})
                worker_logs = {name: cluster.log_path(f"celery-{name}").read_text(errors="replace")
                               for name in ("worker1", "worker2")}
        finally:
            for process in outside.values():
                if process.poll() is None:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(process.pid, signal.SIGKILL)
                    process.wait()
        assert cluster.pids() == []

        with Ledger(ledger_url) as ledger:
            status = ledger.status(TASK)
            history = ledger.transitions(TASK)
            entries = catalog_entries(ledger, task=TASK)

    assert run.state == "success"
    # The pilot slots ran on both Celery workers (task_instance.hostname names the worker).
    host = socket.gethostname()
    assert [state for _, _, state in pilots] == ["success"] * SLOTS
    assert {hostname for _, hostname, _ in pilots} == {f"{host}-worker1", f"{host}-worker2"}, pilots
    assert all("execute_workload" in text or "Executing workload" in text for text in worker_logs.values())

    # Every range merged; the runners started by hand did part of the work through the HTTP API.
    ranges = EVENTS // PER_RANGE
    assert {str(k): v for k, v in status.counts.items() if v} == {"merged": ranges}
    finished_by = Counter(t["worker"] for t in history if t["to_status"] == "finished")
    assert set(OUTSIDE) <= set(finished_by), finished_by
    assert {w for w in finished_by if w not in OUTSIDE} <= {f"{host}-slot{slot}" for slot in range(SLOTS)}

    seen: Counter[int] = Counter()
    for entry in entries:
        local = tmp_path / "merged" / entry.file_name
        local.parent.mkdir(exist_ok=True)
        s3_client.download_file(s3_bucket, f"merged/{entry.file_name}", str(local))
        with uproot.open(local) as opened:
            seen.update(int(n) for n in opened["events"]["event_number"].array(library="np"))
    assert seen == Counter(range(1, EVENTS + 1))

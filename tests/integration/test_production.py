"""The production path: Airflow on PostgreSQL with LocalExecutor, pilots over the mounted HTTP API, S3 outputs."""

from __future__ import annotations

import socket
import zlib
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import uproot
import yaml
from sqlalchemy import select

from event_service.inputs.generate import make_inputs
from event_service.ledger import Ledger
from event_service.ledger.schema import tasks, workers
from event_service.merge.register import catalog_entries
from tests.airflow_cluster import AirflowCluster, ClusterConfig, pg_database
from tests.servers import S3Server

TASK = "prod"
EVENTS, FILES, PER_RANGE, SLOTS, PER_MERGED_FILE = 200, 2, 10, 2, 120
RANGES_PREFIX, MERGED_PREFIX = "ranges", "merged"


def write_spec(folder: Path, inputs_dir: Path, bucket: str, endpoint_url: str) -> None:
    inputs = make_inputs(inputs_dir, events=EVENTS, files=FILES)
    spec = {
        "name": TASK, "inputs": [item.model_dump() for item in inputs], "events_per_range": PER_RANGE,
        "lease_seconds": 30, "payload": {"command": "toysim --cost-ms 1"}, "workers": SLOTS,
        "object_store": {"url": f"s3://{bucket}/{RANGES_PREFIX}", "endpoint_url": endpoint_url},
        "merge": {"output_url": f"s3://{bucket}/{MERGED_PREFIX}", "endpoint_url": endpoint_url,
                  "max_events_per_file": PER_MERGED_FILE},
    }
    folder.mkdir(parents=True)
    (folder / f"{TASK}.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))


def event_numbers(path: Path) -> list[int]:
    with uproot.open(path) as opened:
        return [int(n) for n in opened["events"]["event_number"].array(library="np")]


@pytest.mark.integration
def test_a_task_runs_to_success_through_airflow_on_postgresql(pg_server: str, s3_server: S3Server, s3_bucket: str,
                                                              s3_client: Any, tmp_path: Path) -> None:
    write_spec(tmp_path / "tasks", tmp_path / "evnt", s3_bucket, s3_server.endpoint_url)
    with pg_database(pg_server, "airflow") as metadata_url, pg_database(pg_server, "ledger") as ledger_url:
        config = ClusterConfig(home=tmp_path / "airflow", metadata_url=metadata_url, ledger_url=ledger_url,
                               tasks_folder=tmp_path / "tasks", s3=s3_server, parallelism=4, poll_interval=1.0,
                               start_timeout=120, command_timeout=45,
                               settings={"AIRFLOW__EVENT_SERVICE__STALL_TIMEOUT": "60"})
        cluster = AirflowCluster(config)
        with cluster:
            cluster.wait_for_dag(f"es_{TASK}", timeout=60)
            run_id = cluster.trigger(f"es_{TASK}")
            run = cluster.wait_for_run(f"es_{TASK}", run_id, timeout=150)
        assert cluster.pids() == []
        assert run.state == "success"
        assert run.task_states == {"success": 1 + SLOTS + 1 + 2 + 1}  # register, pilots, wait, 2 merges, output

        with Ledger(ledger_url) as ledger:
            status = ledger.status(TASK)
            outputs = ledger.outputs(TASK)
            entries = catalog_entries(ledger, task=TASK)
            history = ledger.transitions(TASK)
            with ledger.engine.connect() as conn:
                hosts = conn.execute(select(workers.c.worker, workers.c.host).select_from(
                    workers.join(tasks, tasks.c.id == workers.c.task_id)).where(tasks.c.name == TASK)).all()

    # Every range merged, in the ledger on PostgreSQL.
    ranges = EVENTS // PER_RANGE
    assert {str(k): v for k, v in status.counts.items() if v} == {"merged": ranges}
    assert status.events_done == EVENTS

    # Every range's output object in SeaweedFS, with the size and adler32 the ledger recorded.
    assert len(outputs) == ranges
    for output in outputs:
        head = s3_client.head_object(Bucket=s3_bucket, Key=f"{RANGES_PREFIX}/{output.key}")
        assert (head["Metadata"]["adler32"], head["ContentLength"]) == (output.adler32, output.size)

    # The catalog lists the merged files in normal storage; together they hold the task's events, each once.
    assert [e.events for e in entries] == [PER_MERGED_FILE, EVENTS - PER_MERGED_FILE]
    seen: Counter[int] = Counter()
    for entry in entries:
        where = urlsplit(entry.location)
        assert (where.scheme, where.netloc) == ("s3", s3_bucket)
        assert where.path.lstrip("/") == f"{MERGED_PREFIX}/{entry.file_name}"
        local = tmp_path / "merged" / entry.file_name
        local.parent.mkdir(exist_ok=True)
        s3_client.download_file(s3_bucket, where.path.lstrip("/"), str(local))
        data = local.read_bytes()
        assert (f"{zlib.adler32(data):08x}", len(data)) == (entry.adler32, entry.size)
        numbers = event_numbers(local)
        assert len(numbers) == entry.events
        seen.update(numbers)
    assert seen == Counter(range(1, EVENTS + 1))

    # The pilots worked through the dispatch API mounted in Airflow's api-server, under their own worker ids.
    pilots = {f"{socket.gethostname()}-slot{slot}" for slot in range(SLOTS)}
    finished_by = {t["worker"] for t in history if t["to_status"] == "finished"}
    assert finished_by and finished_by <= pilots
    assert {t["worker"] for t in history if t["to_status"] == "sent"} == finished_by
    assert {host for worker, host in hosts if worker in pilots} == {socket.gethostname()}
    api_log = cluster.log_path("api-server").read_text(errors="replace")
    assert f"/event-service/api/v1/tasks/{TASK}/claim" in api_log
    assert f"/event-service/api/v1/tasks/{TASK}/update" in api_log
    pilot_logs = "".join(p.read_text(errors="replace") for p in cluster.task_logs(f"es_{TASK}", run_id, "run_pilot"))
    assert f"--server {cluster.dispatch_url} " in pilot_logs

"""An unmodified PanDA pilot takes a task's event ranges from this server; the task's DAG merges its outputs."""

from __future__ import annotations

import json
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import pytest
import uproot
import yaml

from event_service.api.app import create_app
from event_service.api.panda.jobs import jobs_of_task
from event_service.api.server import ServerThread, free_port
from event_service.cli.airflow_demo import REPO, airflow_environment
from event_service.inputs.generate import make_inputs
from event_service.ledger import Ledger
from event_service.merge.register import catalog_entries
from event_service.spec import TaskSpec
from tests.panda_pilot import PilotUnavailable, run_pilot
from tests.servers import S3Server

pytestmark = [pytest.mark.panda, pytest.mark.s3]
TASK, QUEUE, TOKEN = "pilot", "ES_AIRFLOW_TEST", "panda-test-token"
EVENTS, FILES, PER_RANGE, PER_MERGED_FILE = 24, 2, 4, 15


def write_spec(folder: Path, root: Path, bucket: str, endpoint_url: str) -> TaskSpec:
    inputs = make_inputs(root / "inputs", events=EVENTS, files=FILES, seed=5)
    spec = {
        "name": TASK, "inputs": [item.model_dump() for item in inputs], "events_per_range": PER_RANGE,
        "lease_seconds": 300, "payload": {"command": "toysim --cost-ms 1"}, "workers": 1,
        "object_store": {"url": f"s3://{bucket}/ranges", "endpoint_url": endpoint_url},
        "merge": {"output_url": (root / "results").as_uri(), "max_events_per_file": PER_MERGED_FILE},
        "panda": {"queues": [QUEUE], "zip_time_gap": 5},
    }
    folder.mkdir(parents=True)
    (folder / f"{TASK}.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    return TaskSpec.parse(spec)


def test_a_real_pilot_runs_the_task_and_its_dag_merges_the_archived_outputs(
        tmp_path: Path, s3_server: S3Server, s3_bucket: str, s3_client: Any) -> None:
    spec = write_spec(tmp_path / "tasks", tmp_path, s3_bucket, s3_server.endpoint_url)
    s3_env = {"AWS_ACCESS_KEY_ID": s3_server.access_key, "AWS_SECRET_ACCESS_KEY": s3_server.secret_key,
              "AWS_DEFAULT_REGION": s3_server.region}
    with Ledger(f"sqlite:///{tmp_path / 'ledger.sqlite'}") as ledger:
        ledger.create_task(spec)
        port = free_port()
        with ServerThread(create_app(ledger, "admin-token", panda_token=TOKEN), port=port):
            try:
                pilot = run_pilot(QUEUE, f"http://127.0.0.1:{port}", TOKEN, tmp_path / "pilot", env=s3_env)
            except PilotUnavailable as exc:
                pytest.fail(str(exc), pytrace=False)
        log = pilot.stdout
        assert pilot.returncode == 0, log[-8000:]
        assert {str(k): v for k, v in ledger.status(TASK).counts.items() if v} == {"finished": 6}, log[-8000:]
        [job] = jobs_of_task(ledger, ledger.task(TASK).id)
        assert (job.queue, job.state) == (QUEUE, "finished")
        outputs = ledger.outputs(TASK)
        archives = {o.key for o in outputs}
        assert all(key.startswith(f"{QUEUE}/EventService_premerge_") and key.endswith(".tar") for key in archives)
        assert all(o.member is not None and o.member.split("-")[1] == str(job.panda_id) for o in outputs)
        stored = {item["Key"] for item in s3_client.list_objects_v2(Bucket=s3_bucket)["Contents"]}
        assert {f"ranges/{key}" for key in archives} <= stored
        # what the pilot uploaded: tars of the payload's per-range files
        s3_client.download_file(s3_bucket, f"ranges/{sorted(archives)[0]}", str(tmp_path / "one.tar"))
        with tarfile.open(tmp_path / "one.tar") as opened:
            assert all(Path(name).name.startswith("HITS.") for name in opened.getnames())

    # the task's DAG: register_task resumes the task, its own pilot finds nothing left, then verify and merge
    env = airflow_environment(tmp_path, tmp_path / "tasks", REPO / "dags")
    env["AIRFLOW_CONN_EVENT_SERVICE_STORE"] = json.dumps({
        "conn_type": "aws", "login": s3_server.access_key, "password": s3_server.secret_key,
        "extra": {"endpoint_url": s3_server.endpoint_url, "region_name": s3_server.region}})
    airflow = str(Path(sys.executable).with_name("airflow"))
    for command in (["db", "migrate"], ["dags", "test", f"es_{TASK}"]):
        done = subprocess.run([airflow, *command], env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    with Ledger(f"sqlite:///{tmp_path / 'ledger.sqlite'}") as ledger:
        assert {str(k): v for k, v in ledger.status(TASK).counts.items() if v} == {"merged": 6}
        entries = catalog_entries(ledger, task=TASK)
    assert [e.events for e in entries] == [12, 12]  # ranges are not split: 3 ranges of 4 events per file
    numbers = []
    for entry in entries:
        with uproot.open(tmp_path / "results" / entry.file_name) as opened:
            numbers.extend(opened["events"]["event_number"].array(library="np").tolist())
    assert numbers == list(range(1, EVENTS + 1))

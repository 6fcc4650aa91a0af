"""The payload runner through an object-store outage: SeaweedFS stopped mid-task and started again."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from event_service.spec import InputFile
from tests.payload_runner.conftest import RUNNER, Dispatch, wait_for
from tests.payload_runner.test_runner import counts, summary
from tests.servers import RestartableSeaweedFS


@pytest.fixture
def weed() -> Iterator[RestartableSeaweedFS]:
    with RestartableSeaweedFS() as server:
        yield server


def stageout_failures(dispatch: Dispatch) -> int:
    return sum(1 for t in dispatch.ledger.transitions("rt") if t["error_code"] == "ERR_STAGEOUT")


def outputs_made(workdir: Path) -> int:
    path = workdir / "manifest.jsonl"
    return path.read_text().count('"event":"output"') if path.exists() else 0


@pytest.mark.s3
def test_a_runner_waits_out_an_outage_and_finishes_the_task(sqlite_dispatch: Dispatch, evnt: list[InputFile],
                                                            weed: RestartableSeaweedFS, tmp_path: Path) -> None:
    s3 = weed.start()
    client = s3.client()
    try:
        client.create_bucket(Bucket="outage")
    finally:
        client.close()
    token = sqlite_dispatch.create(evnt, max_attempts=10, payload={"command": "toysim --cost-ms 100"},
                                   object_store={"url": "s3://outage/ranges", "endpoint_url": s3.endpoint_url})
    env = {name: value for name, value in os.environ.items() if not name.startswith("AWS_")}
    env.update(AWS_ACCESS_KEY_ID=s3.access_key, AWS_SECRET_ACCESS_KEY=s3.secret_key,
               AWS_DEFAULT_REGION=s3.region, EVENT_SERVICE_TOKEN=token, PYTHONUNBUFFERED="1")
    workdir = tmp_path / "w1"
    with (tmp_path / "w1.log").open("w") as log:
        process = subprocess.Popen([str(RUNNER), "--server", sqlite_dispatch.url, "--task", "rt", "--workdir",
                                    str(workdir), "--workers", "1", "--outage-timeout", "60"],
                                   stdout=subprocess.PIPE, stderr=log, text=True, env=env)
    try:
        wait_for(lambda: sqlite_dispatch.ledger.status("rt").counts["finished"] >= 2, what="two finished ranges")
        weed.stop()
        # Two failed uploads put the stage-out down; an output after that means the payload finished a range,
        # and asked for the next one, while the store was down.
        wait_for(lambda: "stops claiming" in sqlite_dispatch.log(workdir), what="the stage-out to go down")
        made = outputs_made(workdir)
        wait_for(lambda: outputs_made(workdir) > made, what="an output made while the store was down")
        weed.start()
        try:
            out, _ = process.communicate(timeout=90)
        except subprocess.TimeoutExpired:
            raise AssertionError("the runner did not finish the task after the store came back; its log: "
                                 f"{sqlite_dispatch.log(workdir)[-3000:]}") from None
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
            process.communicate()
    # Before the fix the runner told its idle payload "no more events" during the outage: once the store
    # answered it either ended at once ("done", exit 0) or claimed ranges it had no payload left to run.
    assert process.returncode == 0, sqlite_dispatch.log(workdir)
    result = summary(out)
    assert result["reason"] == "done"
    assert counts(sqlite_dispatch.ledger) == {"finished": 12}
    # The outputs made while the store was down were kept and uploaded once it answered: no work was lost.
    assert result["reuploads"] >= 2 and stageout_failures(sqlite_dispatch) == 0

"""The payload runner staging outputs out to a real S3 server (SeaweedFS), with credentials from the AWS variables."""

from __future__ import annotations

import os
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import uproot

from event_service.spec import InputFile
from event_service.stores import S3Store
from tests.payload_runner.conftest import RUNNER, Dispatch
from tests.payload_runner.test_runner import counts, summary
from tests.servers import S3Server

PREFIX = "es-outputs/rt"


def aws_environment(server: S3Server) -> dict[str, str]:
    """This environment without any AWS_* variable, plus the test server's credentials in the standard ones."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("AWS_")}
    env.update(AWS_ACCESS_KEY_ID=server.access_key, AWS_SECRET_ACCESS_KEY=server.secret_key,
               AWS_DEFAULT_REGION=server.region, PYTHONUNBUFFERED="1")
    return env


def run_runner(dispatch: Dispatch, token: str, workdir: Path, env: dict[str, str], *options: str,
               timeout_s: float = 180) -> tuple[int, str]:
    """``payload-runner`` against the dispatch API with ``env``, to its end: exit code and standard output."""
    log_path = workdir.parent / f"{workdir.name}.log"
    with log_path.open("w") as log:
        try:
            done = subprocess.run([str(RUNNER), "--server", dispatch.url, "--task", "rt", "--token", token,
                                   "--workdir", str(workdir), *options], stdout=subprocess.PIPE, stderr=log,
                                  text=True, env=env, timeout=timeout_s)
        except subprocess.TimeoutExpired:  # subprocess.run has killed it
            raise AssertionError(f"the runner did not finish in {timeout_s} s; its log: "
                                 f"{log_path.read_text()[-3000:]}") from None
    return done.returncode, done.stdout


def test_outputs_are_staged_out_to_s3(sqlite_dispatch: Dispatch, evnt: list[InputFile], s3_server: S3Server,
                                      s3_bucket: str, s3_client: Any, tmp_path: Path) -> None:
    token = sqlite_dispatch.create(evnt, object_store={"url": f"s3://{s3_bucket}/{PREFIX}",
                                                       "endpoint_url": s3_server.endpoint_url})
    workdir = tmp_path / "w1"
    # A store that refuses the runner (say, credentials not passed on) ends the run after 20 s instead of 600.
    code, out = run_runner(sqlite_dispatch, token, workdir, aws_environment(s3_server), "--workers", "2",
                           "--outage-timeout", "20")
    assert code == 0, sqlite_dispatch.log(workdir)
    result = summary(out)
    assert (result["reason"], result["finished"], result["events"], result["failed"]) == ("done", 12, 120, 0)
    assert counts(sqlite_dispatch.ledger) == {"finished": 12}

    rows = sqlite_dispatch.ledger.finished_ranges("rt")
    store = S3Store(s3_bucket, PREFIX, endpoint_url=s3_server.endpoint_url, region=s3_server.region,
                    access_key=s3_server.access_key, secret_key=s3_server.secret_key)
    seen: Counter[int] = Counter()
    with store:
        for row in rows:
            assert row.output_key is not None and row.output_store is None, row  # the task's own store
            stored = store.head(row.output_key)
            assert stored is not None, f"{row.range_id}: no object {row.output_key} in {store.url}"
            assert (stored.adler32, stored.size) == (row.adler32, row.size), row.range_id
            local = tmp_path / "downloads" / row.output_key
            store.get(row.output_key, local)  # checks the bytes against the object's adler32 and size
            with uproot.open(local) as opened:
                seen.update(int(n) for n in opened["events"]["event_number"].array(library="np"))
        assert {obj.key for obj in store.list()} == {row.output_key for row in rows}
    assert seen == Counter(range(1, 121))  # every event of the task exactly once

    pages = s3_client.get_paginator("list_objects_v2").paginate(Bucket=s3_bucket)
    keys = [item["Key"] for page in pages for item in page.get("Contents", [])]
    assert len(keys) == 12 and all(key.startswith(f"{PREFIX}/rt/") for key in keys)  # nothing else written
    assert result["staged_bytes"] == sum(row.size or 0 for row in rows)
    assert not list(workdir.glob("payload-*/HITS.*.root"))  # reported outputs are removed locally


def no_credentials_environment(tmp_path: Path) -> dict[str, str]:
    """This environment without any AWS_* variable and with no ~/.aws to find: a node holding no S3 secret."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("AWS_")}
    empty = tmp_path / "empty-home"
    empty.mkdir(exist_ok=True)
    env.update(HOME=str(empty), AWS_CONFIG_FILE=str(empty / "config"),
               AWS_SHARED_CREDENTIALS_FILE=str(empty / "credentials"), AWS_EC2_METADATA_DISABLED="true",
               PYTHONUNBUFFERED="1")
    return env


def test_a_runner_without_store_credentials_stages_out_through_presigned_uploads(
        sqlite_dispatch: Dispatch, evnt: list[InputFile], s3_server: S3Server, s3_bucket: str,
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # The dispatch API (served in this process) holds the store's credentials; the runner's node does not.
    for name, value in aws_environment(s3_server).items():
        monkeypatch.setenv(name, value)
    token = sqlite_dispatch.create(evnt, object_store={"url": f"s3://{s3_bucket}/{PREFIX}",
                                                       "endpoint_url": s3_server.endpoint_url})
    workdir = tmp_path / "w1"
    code, out = run_runner(sqlite_dispatch, token, workdir, no_credentials_environment(tmp_path),
                           "--workers", "2", "--outage-timeout", "20")
    assert code == 0, sqlite_dispatch.log(workdir)
    assert "pre-signed by the dispatch API" in sqlite_dispatch.log(workdir)
    result = summary(out)
    assert (result["reason"], result["finished"], result["events"], result["failed"]) == ("done", 12, 120, 0)

    # Each object holds the bytes the runner reported: the signature bound its adler32 and size.
    rows = sqlite_dispatch.ledger.finished_ranges("rt")
    seen: Counter[int] = Counter()
    with S3Store(s3_bucket, PREFIX, endpoint_url=s3_server.endpoint_url, region=s3_server.region,
                 access_key=s3_server.access_key, secret_key=s3_server.secret_key) as store:
        for row in rows:
            assert row.output_key is not None and row.output_key.startswith("rt/")
            local = tmp_path / "downloads" / row.output_key
            stored = store.get(row.output_key, local)  # checks the bytes against the recorded adler32 and size
            assert (stored.adler32, stored.size) == (row.adler32, row.size), row.range_id
            with uproot.open(local) as opened:
                seen.update(int(n) for n in opened["events"]["event_number"].array(library="np"))
    assert seen == Counter(range(1, 121))


def test_presigned_uploads_need_an_s3_store(sqlite_dispatch: Dispatch, evnt: list[InputFile],
                                            tmp_path: Path) -> None:
    token = sqlite_dispatch.create(evnt)  # a local directory: nothing to sign
    code, _ = run_runner(sqlite_dispatch, token, tmp_path / "w1", no_credentials_environment(tmp_path),
                         "--upload", "presigned")
    assert code == 2
    assert "--upload presigned needs S3 stores; task 'rt' uses file://" in sqlite_dispatch.log(tmp_path / "w1")

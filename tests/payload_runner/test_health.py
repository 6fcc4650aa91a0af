"""A broken node must not eat ranges: a runner on a full disk, or failing every range, stops and gives its work back."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from event_service.spec import InputFile
from payload_runner.health import NodeHealth, disk_problem
from payload_runner.options import EXIT_CODES
from tests.payload_runner.conftest import Dispatch
from tests.payload_runner.test_runner import counts, summary


def test_a_disk_error_breaks_the_node_at_once() -> None:
    health = NodeHealth(5)
    health.failed("ERR_TOYSIM_OUTPUT", "cannot write /w/payload-0/HITS.root: No space left on device")
    assert health.broken is not None and "No space left on device" in health.broken
    for text in ("Disk quota exceeded", "Read-only file system", "OSError: [Errno 28] ENOSPC"):
        assert disk_problem(text) is not None, text
    assert disk_problem("cannot read events 1-10: file not found") is None


def test_consecutive_failures_with_no_success_break_the_node() -> None:
    health = NodeHealth(3)
    health.failed("ERR_A", "one")
    health.failed("ERR_B", "two")
    health.succeeded()  # a success in between: not a broken node, only bad ranges
    health.failed("ERR_A", "three")
    health.failed("ERR_STAGEOUT", "the store refused")  # the store's fault, not the node's
    health.failed("ERR_A", "four")
    assert health.broken is None
    health.failed("ERR_PAYLOAD_EXIT", "five")
    assert health.broken is not None
    assert health.broken.startswith("3 ranges in a row failed here and none succeeded (ERR_A, ERR_PAYLOAD_EXIT;")
    assert "a node problem" in health.broken


def test_the_runners_own_disk_errors_break_the_node() -> None:
    health = NodeHealth()
    assert not health.os_error(OSError(errno.EACCES, "Permission denied"), "writing")
    assert health.broken is None
    assert health.os_error(OSError(errno.ENOSPC, "No space left on device"), "recording an output")
    assert health.broken is not None and "No space left on device" in health.broken


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 32 KiB tmpfs: the runner's own files fit, one toysim output (40 KB) does not."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small tmpfs needs root and mount(8)")
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=32k,mode=0777", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_runner_on_a_full_disk_stops_and_its_ranges_go_to_a_healthy_one(
        sqlite_dispatch: Dispatch, evnt: list[InputFile], tmp_path: Path, small_disk: Path) -> None:
    token = sqlite_dispatch.create(evnt, max_attempts=3)
    code, out = sqlite_dispatch.run(token, small_disk / "w-full", "--workers", "2", "--batch", "4")
    assert code == EXIT_CODES["node_failed"] == 5, out
    broken = summary(out)
    assert broken["reason"] == "node_failed" and broken["finished"] == 0
    assert any("No space left on device" in note for note in broken["notes"]), broken["notes"]
    assert broken["failed"] <= 2, "it stopped at its first failed ranges, one per payload process"
    assert "fatal" not in counts(sqlite_dispatch.ledger)
    code, out = sqlite_dispatch.run(token, tmp_path / "w-healthy", "--workers", "2")
    assert code == 0, out
    assert counts(sqlite_dispatch.ledger) == {"finished": 12}


def test_a_payload_that_fails_every_range_is_a_node_problem(sqlite_dispatch: Dispatch, evnt: list[InputFile],
                                                            tmp_path: Path) -> None:
    failing = tmp_path / "failing.py"
    failing.write_text(FAILING_PAYLOAD)
    token = sqlite_dispatch.create(evnt, max_attempts=3)
    code, out = sqlite_dispatch.run(token, tmp_path / "w-bad", "--workers", "1", "--batch", "1",
                                    "--max-consecutive-failures", "3", "--payload", f"{sys.executable} {failing}")
    assert code == 5, out
    result = summary(out)
    assert result["reason"] == "node_failed" and result["failed"] == 3
    assert "3 ranges in a row failed here and none succeeded (ERR_CONDITIONS;" in result["notes"][-1]
    assert "fatal" not in counts(sqlite_dispatch.ledger), "three attempts lost, on three different ranges"


FAILING_PAYLOAD = '''"""A payload whose conditions are broken on this node: every range fails."""
import json, os, zmq
sock = zmq.Context().socket(zmq.DEALER)
sock.setsockopt(zmq.IDENTITY, os.environ["EVENT_SERVICE_PAYLOAD_ID"].encode())
sock.connect(os.environ["EVENT_SERVICE_CHANNEL"])
while True:
    sock.send(b"Ready for events")
    text = sock.recv().decode()
    if text == "No more events":
        break
    range_id = json.loads(text)[0]["eventRangeID"]
    sock.send(f"ERR_CONDITIONS {range_id}: the conditions database cannot be read on this node".encode())
'''

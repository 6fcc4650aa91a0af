"""PayloadProcess.own_output: which reported output paths are the payload's own files, with real paths."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from payload_runner.processes import PayloadProcess


@pytest.fixture
def process(tmp_path: Path) -> Iterator[PayloadProcess]:
    folder = tmp_path / "workdir" / "payload-0"
    folder.mkdir(parents=True)
    (folder / "payload.1.log").write_text("log\n")
    popen = subprocess.Popen([sys.executable, "-c", "pass"])
    popen.wait()
    yield PayloadProcess(0, "w/p0.1", popen, folder / "payload.1.log", time.monotonic(), time.monotonic())


def test_a_file_in_the_folder_is_its_own_output(process: PayloadProcess) -> None:
    (process.folder / "out.root").write_bytes(b"x")
    (process.folder / "sub").mkdir()
    (process.folder / "sub" / "out.root").write_bytes(b"x")
    assert process.own_output("out.root") == process.folder / "out.root"
    assert process.own_output(str(process.folder / "out.root")) == process.folder / "out.root"
    assert process.own_output("./sub//out.root") == process.folder / "sub" / "out.root"
    assert process.own_output("missing.root") == process.folder / "missing.root"  # the runner then says missing


def test_paths_out_of_the_folder_or_to_its_log_are_not(process: PayloadProcess, tmp_path: Path) -> None:
    (tmp_path / "outside.root").write_bytes(b"x")
    (process.folder.parent / "payload-1").mkdir()
    (process.folder.parent / "payload-1" / "out.root").write_bytes(b"x")
    assert process.own_output("../../outside.root") is None
    assert process.own_output(str(tmp_path / "outside.root")) is None
    assert process.own_output("../payload-1/out.root") is None
    assert process.own_output("payload.1.log") is None
    assert process.own_output("sub/../payload.1.log") is None


def test_symbolic_links_are_followed_to_where_they_lead(process: PayloadProcess, tmp_path: Path) -> None:
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "out.root").write_bytes(b"x")
    (process.folder / "data").mkdir()
    (process.folder / "data" / "out.root").write_bytes(b"x")
    (process.folder / "escape").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    (process.folder / "file-link.root").symlink_to(tmp_path / "elsewhere" / "out.root")
    (process.folder / "log-link").symlink_to(process.folder / "payload.1.log")
    (process.folder / "inside").symlink_to(process.folder / "data", target_is_directory=True)
    assert process.own_output("escape/out.root") is None
    assert process.own_output("file-link.root") is None
    assert process.own_output("log-link") is None
    assert process.own_output("inside/out.root") == process.folder / "data" / "out.root"
    # The folder reached through a link from outside it is still the folder.
    (tmp_path / "alias").symlink_to(process.folder, target_is_directory=True)
    assert process.own_output(str(tmp_path / "alias" / "data" / "out.root")) == process.folder / "data" / "out.root"


def test_no_log_of_the_slot_is_an_output_whichever_process_wrote_it(process: PayloadProcess) -> None:
    """A payload reported ``payload-0/payload.3.log``, the log of the slot's crashed process, as its output."""
    for generation in (1, 2, 3, 17):
        (process.folder / f"payload.{generation}.log").write_text("an earlier process's log\n")
        assert process.own_output(f"payload.{generation}.log") is None
        assert process.own_output(str(process.folder / f"payload.{generation}.log")) is None
    (process.folder / "old-log").symlink_to(process.folder / "payload.3.log")
    assert process.own_output("old-log") is None
    (process.folder / "sub").mkdir()
    (process.folder / "sub" / "payload.3.log").write_text("the payload's own file\n")
    assert process.own_output("sub/payload.3.log") == process.folder / "sub" / "payload.3.log"
    assert process.own_output("payload.3.log.root") == process.folder / "payload.3.log.root"

"""Custom merge commands: the contract, events checked in the result, culprits found by reading the inputs."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

from event_service.checksums import adler32_file
from event_service.merge.errors import CorruptedOutputsError, MergeCommandError, MergeValidationError
from event_service.merge.part import merge_part
from event_service.statuses import RangeStatus
from tests.event_service.merge.conftest import Task, leftovers, merged_numbers, toysim_output, tree_arrays

MERGE_SCRIPT = '''
import argparse, sys
import awkward as ak, uproot
parser = argparse.ArgumentParser()
parser.add_argument("--drop", type=int, default=0)
parser.add_argument("--inputs"); parser.add_argument("--output")
args = parser.parse_args()
paths = open(args.inputs).read().split()
with open(args.output + ".seen", "w") as seen:
    seen.write("\\n".join(paths))
arrays = ak.concatenate([uproot.open(p)["events"].arrays(["event_number", "edep_sum"]) for p in paths])
with uproot.recreate(args.output) as out:
    out.mktree("events", {"event_number": "int64", "edep_sum": "float64"})
    out["events"].extend({"event_number": arrays["event_number"][args.drop:],
                          "edep_sum": arrays["edep_sum"][args.drop:]})
'''


@pytest.fixture
def script(tmp_path: Path) -> str:
    path = tmp_path / "my_merge.py"
    path.write_text(MERGE_SCRIPT)
    return f"{sys.executable} {path}"


def test_a_custom_command_merges_a_part(task: Task, tmp_path: Path, script: str) -> None:
    part = task.plan()[1]
    merged = merge_part(part, {None: task.store}, tmp_path / "work", command=script)
    assert merged_numbers(merged) == list(range(51, 101))
    assert tree_arrays(merged.path).fields == ["event_number", "edep_sum"]
    assert (merged.events, merged.first_event_number, merged.last_event_number) == (50, 51, 100)
    assert (merged.adler32, merged.size) == adler32_file(merged.path)
    assert leftovers(tmp_path / "work") == [part.file_name]


def test_a_custom_command_gets_the_verified_files_in_event_order(task: Task, tmp_path: Path) -> None:
    record = tmp_path / "record.py"
    record.write_text("import sys, shutil\nargs = dict(zip(sys.argv[1::2], sys.argv[2::2]))\n"
                      f"shutil.copyfile(args['--inputs'], {str(tmp_path / 'list.txt')!r})\n"
                      "paths = open(args['--inputs']).read().split()\n"
                      "data = b''.join(open(p, 'rb').read() for p in paths)\n"
                      "open(args['--output'], 'wb').write(b'CAT1' + data)\n")
    part = task.plan()[0]
    merged = merge_part(part, {None: task.store}, tmp_path / "work", command=f"{sys.executable} {record}")
    listed = [Path(line) for line in (tmp_path / "list.txt").read_text().splitlines()]
    assert listed == [task.object_path(r) for r in part.range_ids]  # a local store's own files, read in place
    assert merged.events == 50 and merged.first_event_number == 1 and merged.last_event_number == 50
    assert merged.size == 4 + sum(o.size for o in part.outputs)  # not a ROOT file: taken as it is


def test_a_custom_command_that_drops_events_fails_validation(task: Task, tmp_path: Path, script: str) -> None:
    part = task.plan()[0]
    with pytest.raises(MergeValidationError, match=r"49 events read back, 50 expected; missing: 1; "):
        merge_part(part, {None: task.store}, tmp_path / "work", command=f"{script} --drop 1")
    assert leftovers(tmp_path / "work") == []


def test_a_failing_custom_command_reports_its_exit_code_and_stderr(task: Task, tmp_path: Path) -> None:
    failing = tmp_path / "fail.py"
    failing.write_text("import sys\nprint('line 1 of noise', file=sys.stderr)\n"
                       "print('cannot merge: out of disk', file=sys.stderr)\nsys.exit(3)\n")
    part = task.plan()[0]
    with pytest.raises(MergeCommandError) as caught:
        merge_part(part, {None: task.store}, tmp_path / "work", command=f"{sys.executable} {failing}")
    assert caught.value.exit_code == 3
    assert caught.value.stderr_tail.endswith("cannot merge: out of disk")
    assert "exited with code 3" in str(caught.value) and part.file_name in str(caught.value)
    silent = tmp_path / "silent.py"
    silent.write_text("pass\n")
    with pytest.raises(MergeCommandError, match="exited with code 0 but wrote no file"):
        merge_part(part, {None: task.store}, tmp_path / "work", command=f"{sys.executable} {silent}")
    with pytest.raises(MergeCommandError, match="cannot start 'no-such-merge-program'"):
        merge_part(part, {None: task.store}, tmp_path / "work", command="no-such-merge-program --fast")
    assert leftovers(tmp_path / "work") == []
    assert all(task.status(r) == RangeStatus.FINISHED for r in part.range_ids)


COPY_SCRIPT = '''
import shutil, sys
args = dict(zip(sys.argv[1::2], sys.argv[2::2]))
paths = open(args["--inputs"]).read().split()
shutil.copyfile(paths[0], args["--output"])
'''


def test_a_custom_result_that_falls_short_has_every_input_read_to_find_the_culprits(task: Task,
                                                                                    tmp_path: Path) -> None:
    # The command's result holds one range's events, not the part's: the inputs are read, and the short one named.
    part = task.plan()[1]
    short = part.range_ids[3]
    task.redo([short], lambda path, item, first, last: toysim_output(path, item, first, last - 2))
    first_only = tmp_path / "first_only.py"
    first_only.write_text(COPY_SCRIPT)
    with pytest.raises(CorruptedOutputsError) as caught:
        merge_part(task.plan()[1], {None: task.store}, tmp_path / "work", command=f"{sys.executable} {first_only}")
    assert list(caught.value.reasons) == [short]
    assert caught.value.reasons[short].startswith("holds 8 events, the range has 10")
    assert leftovers(tmp_path / "work") == []


def test_a_failing_command_over_a_bad_input_names_the_range(task: Task, tmp_path: Path, script: str) -> None:
    # The input is not ROOT (its checksum is right: the payload wrote it so); the command fails on it, and the
    # merge reports the range rather than the command.
    part = task.plan()[0]
    garbage = part.range_ids[1]
    task.redo([garbage], lambda path, item, first, last: path.write_bytes(b"root" + os.urandom(3000)) and path)
    with pytest.raises(CorruptedOutputsError) as caught:
        merge_part(task.plan()[0], {None: task.store}, tmp_path / "work", command=script)
    assert list(caught.value.reasons) == [garbage]
    assert caught.value.reasons[garbage].startswith("unreadable: not a readable ROOT file")
    assert isinstance(caught.value.__cause__, MergeCommandError) and caught.value.__cause__.exit_code == 1


def test_a_command_that_changes_its_inputs_has_them_corrupted(task: Task, tmp_path: Path, script: str) -> None:
    part = task.plan()[0]
    touched = part.range_ids[2]
    writer = tmp_path / "writes_input.py"
    writer.write_text(f"import subprocess, sys, os\nargs = dict(zip(sys.argv[1::2], sys.argv[2::2]))\n"
                      f"path = open(args['--inputs']).read().split()[2]\nos.utime(path, (1, 1))\n"
                      f"sys.exit(subprocess.call({script.split()!r} + sys.argv[1:]))\n")
    with pytest.raises(CorruptedOutputsError) as caught:
        merge_part(part, {None: task.store}, tmp_path / "work", command=f"{sys.executable} {writer}")
    assert list(caught.value.reasons) == [touched]
    assert "changed in the store while it was merged" in caught.value.reasons[touched]


STALLING_SCRIPT = '''
import os, subprocess, sys, time
args = dict(zip(sys.argv[1::2], sys.argv[2::2]))
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
with open({pids!r} + ".tmp", "w") as out:
    out.write(f"{{os.getpid()}} {{child.pid}}")
os.replace({pids!r} + ".tmp", {pids!r})
time.sleep(120)
'''


def gone(pid: int) -> bool:
    """Whether the process has ended (a zombie waiting for its parent counts as ended)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def assert_both_ended(pids: Path) -> None:
    """The stalling program has ended, and its child too (an orphan once the program is killed, so reaped by init
    a moment later: waited for up to 10 s)."""
    program, child = map(int, pids.read_text().split())
    assert gone(program)
    deadline = time.monotonic() + 10
    while not gone(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert gone(child)


def test_a_command_reading_a_damaged_local_output_is_stopped_with_what_it_started(task: Task, tmp_path: Path) -> None:
    # A local store's files are verified while the program already reads them: one fails, and the program and
    # its own child are killed rather than left to finish a merge that is thrown away.
    part = task.plan()[0]
    damaged = part.range_ids[3]
    with open(task.object_path(damaged), "r+b") as stream:
        stream.seek(500)
        stream.write(b"\xde\xad\xbe\xef")
    pids = tmp_path / "pids"
    stalling = tmp_path / "stalling.py"
    stalling.write_text(STALLING_SCRIPT.format(pids=str(pids)))
    started = time.monotonic()
    with pytest.raises(CorruptedOutputsError) as caught:
        merge_part(part, {None: task.store}, tmp_path / "work", command=f"{sys.executable} {stalling}")
    assert time.monotonic() - started < 60, "the program ran its 120 s instead of being stopped"
    assert list(caught.value.reasons) == [damaged]
    assert caught.value.reasons[damaged].startswith("output damaged in the store")
    assert caught.value.__cause__ is None  # the stopped program is not what went wrong
    if pids.exists():  # the verification can end before the program got as far as writing them
        assert_both_ended(pids)
    assert leftovers(tmp_path / "work") == []
    assert task.status(damaged) == RangeStatus.FINISHED  # marking it is the caller's (report_corrupted)


def test_an_input_replaced_while_the_command_runs_is_corrupted(task: Task, tmp_path: Path) -> None:
    # The program started on one file; the store's file under that key was replaced (same bytes, a new inode)
    # before its verification: what the program read is not what was verified.
    part = task.plan()[0]
    replaced = part.range_ids[1]
    target = task.object_path(replaced)
    script = tmp_path / "replaces.py"
    script.write_text("import os, shutil, sys\nargs = dict(zip(sys.argv[1::2], sys.argv[2::2]))\n"
                      f"path = {str(target)!r}\nshutil.copyfile(path, path + '.new')\nos.replace(path + '.new', path)\n"
                      "paths = open(args['--inputs']).read().split()\n"
                      "open(args['--output'], 'wb').write(b''.join(open(p, 'rb').read() for p in paths))\n")
    with pytest.raises(CorruptedOutputsError) as caught:
        merge_part(part, {None: task.store}, tmp_path / "work", command=f"{sys.executable} {script}")
    assert list(caught.value.reasons) == [replaced]
    assert "changed in the store while it was merged" in caught.value.reasons[replaced]


def test_a_command_timeout_kills_the_program_and_its_children(task: Task, tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    stalling = tmp_path / "stalling.py"
    stalling.write_text(STALLING_SCRIPT.format(pids=str(pids)))
    with pytest.raises(MergeCommandError, match=r"still running after 8\.0 s; killed") as caught:
        merge_part(task.plan()[0], {None: task.store}, tmp_path / "work", command=f"{sys.executable} {stalling}",
                   command_timeout_s=8.0)  # time to start both, on a busy machine
    assert not caught.value.cancelled
    assert_both_ended(pids)
    assert leftovers(tmp_path / "work") == []

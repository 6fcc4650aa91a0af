"""event-service-hadd: ROOT's own hadd as the merge command, on real toysim outputs; its bad-input answers."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import awkward as ak
import pytest

from event_service.checksums import adler32_file
from event_service.merge.errors import CorruptedOutputsError, HaddNotFoundError
from event_service.merge.hadd import EXIT_HADD_FAILED, EXIT_USAGE, HADD_ENV, find_hadd
from event_service.merge.part import merge_part
from tests.event_service.merge.conftest import BRANCHES, Task, leftovers, toysim_output, tree_arrays

ADAPTER = Path(sys.executable).with_name("event-service-hadd")


def adapter(*args: str | Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(ADAPTER), *map(str, args)], capture_output=True, text=True, timeout=120,
                          env=env, check=False)


def test_hadd_is_found_in_the_root_package_when_it_is_not_on_the_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(HADD_ENV, raising=False)
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    found = find_hadd()
    assert found.name == "hadd" and found.parent.name == "bin" and found.parent.parent.name == "ROOT"
    with pytest.raises(HaddNotFoundError, match=r"hadd '/no/such/hadd' \(from --hadd\) is not an executable"):
        find_hadd("/no/such/hadd")
    monkeypatch.setenv(HADD_ENV, "/no/where/hadd")
    with pytest.raises(HaddNotFoundError, match=rf"from \${HADD_ENV}"):
        find_hadd()


def test_hadd_merges_a_part_like_the_default_merge_and_again_to_the_same_bytes(task: Task, tmp_path: Path) -> None:
    part = task.plan()[1]
    default = merge_part(part, {None: task.store}, tmp_path / "default")
    first = merge_part(part, {None: task.store}, tmp_path / "hadd-1", command="event-service-hadd")
    again = merge_part(part, {None: task.store}, tmp_path / "hadd-2", command="event-service-hadd")
    assert (first.events, first.first_event_number, first.last_event_number) == (50, 51, 100)
    assert (first.adler32, first.size) == adler32_file(first.path)
    assert (again.adler32, again.size) == (first.adler32, first.size)  # reproducible: a retry gives the same file
    merged, reference = tree_arrays(first.path), tree_arrays(default.path)
    assert merged.fields == BRANCHES
    assert all(ak.array_equal(merged[name], reference[name]) for name in BRANCHES)
    assert leftovers(tmp_path / "hadd-1") == [part.file_name]


def test_hadd_over_an_output_short_of_events_names_that_range(task: Task, tmp_path: Path) -> None:
    part = task.plan()[0]
    short = part.range_ids[4]
    task.redo([short], lambda path, item, first, last: toysim_output(path, item, first, last - 1))
    with pytest.raises(CorruptedOutputsError) as caught:
        merge_part(task.plan()[0], {None: task.store}, tmp_path / "work", command="event-service-hadd")
    assert list(caught.value.reasons) == [short]
    assert caught.value.reasons[short].startswith("holds 9 events, the range has 10")
    assert leftovers(tmp_path / "work") == []


def test_bad_arguments_and_a_failing_hadd_get_clear_answers(task: Task, tmp_path: Path) -> None:
    paths = [task.object_path(r) for r in task.plan()[0].range_ids]
    listing = tmp_path / "inputs.txt"
    listing.write_text("".join(f"{p}\n" for p in [*paths, tmp_path / "gone.root"]))
    done = adapter("--inputs", listing, "--output", tmp_path / "out.root")
    assert done.returncode == EXIT_USAGE and f"line {len(paths) + 1}: {tmp_path / 'gone.root'} is not a file" \
        in done.stderr
    listing.write_text("\n")
    assert "names no file" in adapter("--inputs", listing, "--output", tmp_path / "out.root").stderr
    listing.write_text(f"{paths[0]}\n")
    (tmp_path / "there.root").write_bytes(b"x")
    done = adapter("--inputs", listing, "--output", tmp_path / "there.root")
    assert done.returncode == EXIT_USAGE and "already exists" in done.stderr
    done = adapter("--inputs", listing, "--output", tmp_path / "out.root", "--hadd", "/no/such/hadd")
    assert done.returncode == EXIT_USAGE and "is not an executable file" in done.stderr
    env = {**os.environ, "PATH": "/usr/bin:/bin", HADD_ENV: ""}
    done = adapter("--inputs", listing, "--output", tmp_path / "out.root", env=env)
    assert done.returncode == 0, done.stderr  # found in the ROOT package

    truncated = tmp_path / "truncated.root"
    truncated.write_bytes(paths[1].read_bytes()[:1000])
    listing.write_text(f"{paths[0]}\n{truncated}\n")
    done = adapter("--inputs", listing, "--output", tmp_path / "merged.root")
    assert done.returncode == EXIT_HADD_FAILED
    assert f"failed (exit code 1) merging 2 files into {tmp_path / 'merged.root'}" in done.stderr
    assert "truncated.root" in done.stderr  # hadd's own error names the file
    assert not (tmp_path / "merged.root").exists()

"""nullsim, the trivial payload, run by a real runner; its merge program; the runner's adaptive claims."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

from event_service.spec import InputFile
from tests.payload_runner.conftest import Dispatch

NULLSIM = Path(sys.executable).with_name("nullsim")


def summary(out: str) -> dict[str, object]:
    line = next(line for line in out.splitlines() if line.startswith("summary "))
    return dict(json.loads(line.removeprefix("summary ")))


def claim_sizes(dispatch: Dispatch) -> list[int]:
    """How many ranges each claim handed out: a claim's transitions to ``sent`` share one time."""
    sent = Counter(t["at"] for t in dispatch.ledger.transitions("rt") if t["to_status"] == "sent")
    return list(sent.values())


def test_nullsim_outputs_hold_each_ranges_events(sqlite_dispatch: Dispatch, evnt: list[InputFile],
                                                 tmp_path: Path) -> None:
    token = sqlite_dispatch.create(evnt, per_range=4, payload={"command": "nullsim"})
    code, out = sqlite_dispatch.run(token, tmp_path / "w1", "--workers", "2")
    assert code == 0, sqlite_dispatch.log(tmp_path / "w1")
    assert (summary(out)["finished"], summary(out)["events"]) == (30, 120)
    lines: list[str] = []
    for row in sqlite_dispatch.ledger.finished_ranges("rt"):
        assert row.output_key is not None and row.output_key.endswith(f"EVENTS.{row.range_id}.txt")
        lines += (tmp_path / "objects" / row.output_key).read_text().splitlines()
    expected = [f"{item.lfn} {n}" for item in evnt for n in range(1, item.events + 1)]
    assert sorted(lines) == sorted(expected)


def test_short_ranges_are_claimed_in_larger_batches(sqlite_dispatch: Dispatch, evnt: list[InputFile],
                                                    tmp_path: Path) -> None:
    token = sqlite_dispatch.create(evnt, per_range=1, payload={"command": "nullsim"})
    code, out = sqlite_dispatch.run(token, tmp_path / "w1", "--workers", "1", "--max-batch", "25")
    assert code == 0, sqlite_dispatch.log(tmp_path / "w1")
    assert (summary(out)["finished"], summary(out)["failed"]) == (120, 0)
    sizes = claim_sizes(sqlite_dispatch)
    assert sum(sizes) == 120  # each range handed out once: no payload message was lost in a busy loop
    # The first claim is the smallest batch (2 per payload); ranges of a few ms then ask for up to 25 at a time.
    assert sizes[0] == 2 and 2 < max(sizes) <= 25, sizes


def test_a_fixed_batch_is_kept(sqlite_dispatch: Dispatch, evnt: list[InputFile], tmp_path: Path) -> None:
    token = sqlite_dispatch.create(evnt, per_range=2, payload={"command": "nullsim"})
    code, _ = sqlite_dispatch.run(token, tmp_path / "w1", "--workers", "1", "--batch", "3")
    assert code == 0, sqlite_dispatch.log(tmp_path / "w1")
    sizes = claim_sizes(sqlite_dispatch)
    assert sum(sizes) == 60 and max(sizes) <= 3, sizes


def test_runner_refuses_a_bad_claim_ahead(tmp_path: Path) -> None:
    result = subprocess.run([str(Path(sys.executable).with_name("payload-runner")), "--ledger", "sqlite://",
                             "--task", "t", "--claim-ahead", "0"], capture_output=True, text=True)
    assert result.returncode == 2 and "--claim-ahead must be a number of seconds above 0" in result.stderr


def _write(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(f"{line}\n" for line in lines))
    return path


def _merge(tmp_path: Path, inputs: list[Path]) -> subprocess.CompletedProcess[str]:
    listing = tmp_path / "inputs.txt"
    listing.write_text("".join(f"{path}\n" for path in inputs))
    return subprocess.run([str(NULLSIM), "merge", "--inputs", str(listing), "--output", str(tmp_path / "m.txt")],
                          capture_output=True, text=True)


def test_merge_concatenates_outputs_across_input_files(tmp_path: Path) -> None:
    inputs = [_write(tmp_path / "a", ["A.root 1", "A.root 2"]), _write(tmp_path / "b", ["A.root 3"]),
              _write(tmp_path / "c", ["B.root 1", "B.root 2"])]
    result = _merge(tmp_path, inputs)
    assert result.returncode == 0, result.stderr
    assert "5 events" in result.stdout
    assert (tmp_path / "m.txt").read_text().splitlines() == ["A.root 1", "A.root 2", "A.root 3", "B.root 1",
                                                             "B.root 2"]


def test_merge_refuses_bad_inputs_and_writes_nothing(tmp_path: Path) -> None:
    cases = {
        "is not '<LFN> <event number>'": [["A.root x"]],
        "not consecutive and ascending": [["A.root 2", "A.root 1"]],
        "not after event 2": [["A.root 1", "A.root 2"], ["A.root 2"]],
        "goes back to input A.root": [["A.root 1"], ["B.root 1"], ["A.root 2"]],
        "events of 2 input files": [["A.root 1", "B.root 1"]],
        "holds no event": [[]],
    }
    for message, contents in cases.items():
        inputs = [_write(tmp_path / f"in{n}", lines) for n, lines in enumerate(contents)]
        result = _merge(tmp_path, inputs)
        assert result.returncode == 6 and message in result.stderr, (message, result.stderr)
        assert not (tmp_path / "m.txt").exists() and not list(tmp_path.glob(".m.txt.*"))

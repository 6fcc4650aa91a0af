"""A real runner against a payload that sends bad messages: each is refused, named, and no range is lost."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from event_service.spec import InputFile
from tests.payload_runner.conftest import Dispatch
from tests.payload_runner.test_runner import counts, summary

PAYLOAD = Path(__file__).with_name("misbehaving_payload.py")

# mode: the error code the misbehaving range fails with, and what the runner's log says about it.
CASES = {
    "garbage": ("ERR_BAD_MESSAGE", "is not UTF-8 text"),
    "frames": ("ERR_BAD_MESSAGE", "sent 2 frames"),
    "wrong-id": ("ERR_NO_OUTPUT", "reported output"),
    "outside": ("ERR_OUTPUT_OUTSIDE_WORKDIR", "is outside"),
    "escape": ("ERR_OUTPUT_OUTSIDE_WORKDIR", "is outside"),
    "symlink": ("ERR_OUTPUT_OUTSIDE_WORKDIR", "is outside"),
}


@pytest.mark.parametrize("mode", list(CASES))
def test_a_bad_payload_message_is_refused_and_the_range_retried(sqlite_dispatch: Dispatch, evnt: list[InputFile],
                                                                tmp_path: Path, mode: str) -> None:
    code, said = CASES[mode]
    elsewhere = tmp_path / "elsewhere"
    command = f"{sys.executable} {PAYLOAD} --mode {mode} --marker {tmp_path / 'misbehaved'} --elsewhere {elsewhere}"
    token = sqlite_dispatch.create(evnt[:1], per_range=20, payload={"command": command})
    exit_code, out = sqlite_dispatch.run(token, tmp_path / "w1")
    log = sqlite_dispatch.log(tmp_path / "w1")
    assert exit_code == 0, log[-3000:]
    bad_range = (tmp_path / "misbehaved").read_text()
    assert said in log and (bad_range in log or "rt.9.0-9" in log), log[-3000:]
    # The range failed with a code naming the problem, went back to ready, and finished on a later attempt
    # with an output the runner staged itself, never the refused file.
    moves = [(t["to_status"], t["attempt"], t["error_code"])
             for t in sqlite_dispatch.ledger.transitions("rt", bad_range)]
    assert moves[:3] == [("sent", 1, None), ("failed", 1, code), ("ready", 1, code)], moves
    assert moves[-1][0] == "finished" and moves[-1][1] >= 2, moves
    assert counts(sqlite_dispatch.ledger) == {"finished": 3}
    for row in sqlite_dispatch.ledger.finished_ranges("rt"):
        stored = tmp_path / "objects" / str(row.output_key)
        assert stored.read_bytes().startswith(b"events "), (row.range_id, stored.read_bytes()[:60])
    assert summary(out)["finished"] == 3
    if mode in ("outside", "escape", "symlink"):  # the file outside is left alone
        assert (elsewhere / f"HITS.{bad_range}.root").read_bytes() == b"output written outside the work directory"

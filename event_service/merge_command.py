"""A custom merge program in place of the default ROOT merge: how it is run and what counts as success.

The contract: the program is run as ``shlex.split(command) + ["--inputs", LIST, "--output", PATH]`` (a bare
program name is looked up on the PATH, then beside the running Python), where LIST is a text file (UTF-8)
with one verified local input path per line, in event order, and PATH does not exist yet. An input may be a
local object store's own file: the program must only read it (a changed input is found and its range marked
corrupted). Exit code 0 with a file at PATH is success; any other exit code, or no file at PATH, is a
MergeCommandError carrying the exit code and the end of the program's standard error. Its standard output is
passed through. The working directory is the part's scratch directory. The result's events are then checked
(see ``event_service.merge``) when it is a ROOT file with ``events/event_number``.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

STDERR_TAIL_BYTES = 4096


class MergeCommandError(RuntimeError):
    """The merge command failed: it could not start, exited non-zero, timed out or wrote no output."""

    def __init__(self, command: str, part: str, reason: str, exit_code: int | None = None,
                 stderr_tail: str = "") -> None:
        super().__init__(command, part, reason, exit_code, stderr_tail)
        self.command = command
        self.part = part
        self.reason = reason
        self.exit_code = exit_code
        self.stderr_tail = stderr_tail

    def __str__(self) -> str:
        text = f"merge command {self.command!r} for {self.part}: {self.reason}"
        if self.stderr_tail:
            text += f"; end of its stderr:\n{self.stderr_tail}"
        return text


def _tail(path: Path, limit: int = STDERR_TAIL_BYTES) -> str:
    with open(path, "rb") as stream:
        stream.seek(0, 2)
        size = stream.tell()
        stream.seek(max(0, size - limit))
        return stream.read().decode("utf-8", errors="replace").strip()


def run_merge_command(command: str, inputs: Sequence[Path], output: Path, scratch: Path, part: str,
                      timeout_s: float | None = None) -> None:
    """Run the merge command over ``inputs`` (in event order) to write ``output``, per the contract above."""
    try:
        argv = shlex.split(command)
    except ValueError as exc:
        raise MergeCommandError(command, part, f"cannot split the command line: {exc}") from None
    if not argv:
        raise MergeCommandError(command, part, "the command is empty")
    # A bare name is looked up on the PATH, then beside this Python: a virtualenv's programs (event-service-hadd)
    # without the virtualenv on the PATH, as Airflow's components often run.
    if os.sep not in argv[0]:
        argv[0] = shutil.which(argv[0]) or shutil.which(argv[0], path=str(Path(sys.executable).parent)) or argv[0]
    listing = scratch / "inputs.txt"
    listing.write_text("".join(f"{path}\n" for path in inputs), encoding="utf-8")
    stderr_path = scratch / "merge-command.stderr"
    full = [*argv, "--inputs", str(listing), "--output", str(output)]
    with open(stderr_path, "wb") as stderr:
        try:
            done = subprocess.run(full, cwd=scratch, stdin=subprocess.DEVNULL, stderr=stderr, timeout=timeout_s,
                                  check=False)
        except FileNotFoundError as exc:
            raise MergeCommandError(command, part, f"cannot start {argv[0]!r}: {exc.strerror}") from None
        except PermissionError as exc:
            raise MergeCommandError(command, part, f"cannot start {argv[0]!r}: {exc.strerror}") from None
        except subprocess.TimeoutExpired:
            raise MergeCommandError(command, part, f"still running after {timeout_s} s; killed",
                                    stderr_tail=_tail(stderr_path)) from None
    if done.returncode != 0:
        raise MergeCommandError(command, part, f"exited with code {done.returncode}", done.returncode,
                                _tail(stderr_path))
    if not output.is_file():
        raise MergeCommandError(command, part, f"exited with code 0 but wrote no file at {output}", 0,
                                _tail(stderr_path))

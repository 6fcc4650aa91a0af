"""A custom merge program in place of the default ROOT merge: how it runs, beside its inputs' verification.

The contract: the program is run as ``shlex.split(command) + ["--inputs", LIST, "--output", PATH]`` (a bare
program name is looked up on the PATH, then beside the running Python), where LIST is a text file (UTF-8)
with one local input path per line, in event order, and PATH does not exist yet. Inputs fetched from a remote
store are verified before the program starts; a local object store's own files are given in place and verified
while it runs: the program must only read them (a changed input is found and its range marked corrupted), and
when one fails verification the program is stopped and its result thrown away. Exit code 0 with a file at PATH
is success; any other exit code, or no file at PATH, is a MergeCommandError carrying the exit code and the end
of the program's standard error. Its standard output is passed through. The working directory is the part's
scratch directory. The program runs in its own process group, killed as a whole when it times out, is stopped,
or when the merge itself is stopped. The result's events are then checked (see ``event_service.merge.part``) when
it is a ROOT file with ``events/event_number``.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from event_service.merge.errors import MergeCommandError
from event_service.merge.plan import MergePart
from event_service.merge.stage import (
    Staged,
    in_place_inputs,
    signature_or_none,
    stage_outputs,
)
from event_service.stores import ObjectStore

STDERR_TAIL_BYTES = 4096
CANCEL_POLL_S = 0.05


def _tail(path: Path, limit: int = STDERR_TAIL_BYTES) -> str:
    with open(path, "rb") as stream:
        stream.seek(0, 2)
        size = stream.tell()
        stream.seek(max(0, size - limit))
        return stream.read().decode("utf-8", errors="replace").strip()


def run_merge_command(command: str, inputs: Sequence[Path], output: Path, scratch: Path, part: str,
                      timeout_s: float | None = None, cancel: threading.Event | None = None) -> None:
    """Run the merge command over ``inputs`` (in event order) to write ``output``, per the contract above.
    Setting ``cancel`` stops it (MergeCommandError with ``cancelled`` set): its inputs are being verified while
    it runs, and one failed."""
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
        try:  # its own process group: a time-out or a cancel stops what it started too (hadd under a wrapper)
            process = subprocess.Popen(full, cwd=scratch, stdin=subprocess.DEVNULL, stderr=stderr, process_group=0)
        except (FileNotFoundError, PermissionError) as exc:
            raise MergeCommandError(command, part, f"cannot start {argv[0]!r}: {exc.strerror}") from None
        try:
            returncode, stopped = _wait(process, timeout_s, cancel)
        except BaseException:  # the merge itself is being stopped (a signal, Ctrl-C): so is the program
            _kill_group(process)
            raise
    if stopped is not None:
        raise MergeCommandError(command, part, stopped, stderr_tail=_tail(stderr_path), cancelled=cancel is not None
                                and cancel.is_set())
    if returncode != 0:
        raise MergeCommandError(command, part, f"exited with code {returncode}", returncode, _tail(stderr_path))
    if not output.is_file():
        raise MergeCommandError(command, part, f"exited with code 0 but wrote no file at {output}", 0,
                                _tail(stderr_path))


def _wait(process: subprocess.Popen[bytes], timeout_s: float | None,
          cancel: threading.Event | None) -> tuple[int | None, str | None]:
    """Wait for the program: its exit code, or why it was stopped (its whole process group killed)."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while True:
        step = remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
        if cancel is not None:  # look at the cancel now and then
            step = CANCEL_POLL_S if remaining is None else min(CANCEL_POLL_S, remaining)
        try:
            return process.wait(timeout=step), None
        except subprocess.TimeoutExpired:
            pass
        if cancel is not None and cancel.is_set():
            stopped = "stopped: its inputs failed verification while it ran"
        elif deadline is not None and time.monotonic() >= deadline:
            stopped = f"still running after {timeout_s} s; killed"
        else:
            continue
        _kill_group(process)
        return None, stopped


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def stage_and_run(part: MergePart, stores: Sequence[ObjectStore], stage_dir: Path, stage_threads: int,
                  command: str, produced: Path, scratch: Path, timeout_s: float | None
                  ) -> tuple[list[Staged | None], dict[str, str], MergeCommandError | None]:
    """Stage the inputs in and run the merge command over them: after they are verified or, when every input is
    a local store's own file, while they are (stopped as soon as one fails; an input that changed between the
    program's start and its verification counts as changed while merged). Returns what was staged, why inputs
    failed (the command's result is then worthless), and how the command failed, if it did."""
    label = f"task {part.task!r}, {part.file_name}"
    in_place = in_place_inputs(part.outputs, stores)
    failure: MergeCommandError | None = None
    if in_place is None:
        staged, reasons = stage_outputs(part.outputs, stores, stage_dir, threads=stage_threads)
        if not reasons:
            try:
                run_merge_command(command, [item.path for item in staged if item is not None], produced, scratch,
                                  label, timeout_s)
            except MergeCommandError as exc:
                failure = exc
        return staged, reasons, failure
    before = [signature_or_none(path) for path in in_place]
    cancel = threading.Event()

    def verify() -> tuple[list[Staged | None], dict[str, str]]:
        try:
            verified = stage_outputs(part.outputs, stores, stage_dir, threads=stage_threads)
        except BaseException:
            cancel.set()
            raise
        if verified[1]:
            cancel.set()
        return verified

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="verify") as pool:
        verifying = pool.submit(verify)
        try:
            run_merge_command(command, in_place, produced, scratch, label, timeout_s, cancel)
        except MergeCommandError as exc:
            failure = exc
        staged, reasons = verifying.result()
    for output, item, signature in zip(part.outputs, staged, before, strict=True):
        if item is not None and item.signature != signature:
            reasons.setdefault(output.range_id, f"output changed in the store while it was merged: {item.path}")
    return staged, reasons, None if reasons else failure

"""The payload processes of one runner: started, watched, killed when silent, restarted when they crash."""

from __future__ import annotations

import ctypes
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from event_service import settings
from event_service.messages import ClaimedRange
from event_service.stores.base import symlink_on_the_way
from payload_runner.channel import CHANNEL_ENV, PAYLOAD_ID_ENV

log = logging.getLogger(__name__)


_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child: be killed when the runner dies, even by SIGKILL, so no payload is left orphaned."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


PAYLOAD_FOLDER_GLOB = "payload-*"
LOG_NAME = re.compile(r"payload\.[0-9]+\.log")  # the runner's log of each process a slot had, in its folder


def clear_payload_folders(workdir: Path, keep: set[Path]) -> int:
    """Remove what a previous run's payloads left in their folders, except the outputs in ``keep`` (being
    recovered) and the payloads' logs. An output written but never reported (the runner died first) is not
    in the manifest: its range goes back to the ledger when its lease lapses, and the file would only take
    disk space for ever. Returns how many entries were removed."""
    removed = 0
    for folder in sorted(workdir.glob(PAYLOAD_FOLDER_GLOB)):
        if folder.is_symlink() or not folder.is_dir():
            continue
        for entry in folder.iterdir():
            if LOG_NAME.fullmatch(entry.name):
                continue
            if any(kept == entry or kept.is_relative_to(entry) for kept in keep):
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink(missing_ok=True)
            removed += 1
    if removed:
        log.info("removed %d entries that a previous run's payloads left in %s/%s", removed, workdir,
                 PAYLOAD_FOLDER_GLOB)
    return removed


def _link_in(path: Path, folder: Path) -> bool:
    """Whether a part of ``path`` in ``folder`` is a symbolic link; a part that is a file, not a folder, ends the
    path there (it names nothing)."""
    try:
        return symlink_on_the_way(path, folder)
    except NotADirectoryError:
        return False


@dataclass
class PayloadProcess:
    """One payload process and what it is doing."""

    slot: int
    identity: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    started_at: float
    last_heard: float
    in_flight: ClaimedRange | None = None
    range_started: float = 0.0
    told_no_more: bool = False
    folder: Path = field(init=False)  # its own folder and its log, symbolic links resolved when it started:
    real_log: Path = field(init=False)  # its outputs must stay in the former and not be the latter

    def __post_init__(self) -> None:
        self.folder = self.log_path.parent.resolve()
        self.real_log = self.log_path.resolve()

    @property
    def peer(self) -> bytes:
        return self.identity.encode()

    def own_output(self, reported: str) -> Path | None:
        """The real path of an output the process reported (relative to its folder, or absolute), or None when
        that lies outside its folder or is one of the slot's logs (its own, or an earlier process's).

        The folder is already real, so only it and the parts of the path below it are looked at, one ``lstat``
        each (for a plain file name, two in all, where a full ``realpath`` looks at every directory from ``/``);
        paths with ``..``, paths not under the folder as written, and symbolic links get the full resolution.
        """
        folder = str(self.folder)
        path = os.path.normpath(os.path.join(folder, reported))
        plain = ".." not in reported.split("/") and path.startswith(folder + os.sep)
        if plain and not _link_in(Path(path), self.folder):
            real = Path(path)
        else:
            real = Path(os.path.realpath(path))
            if not real.is_relative_to(self.folder):
                return None
        if real == self.real_log or (real.parent == self.folder and LOG_NAME.fullmatch(real.name)):
            return None
        return real

    def tail(self, lines: int = 5) -> str:
        """The last lines the process wrote, for error messages."""
        try:
            text = self.log_path.read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return " | ".join(text[-lines:])


@dataclass
class PayloadPool:
    """N payload processes fed from one channel; each slot is restarted after a crash, within a budget."""

    command: list[str]
    workers: int
    workdir: Path
    channel: str
    runner_id: str
    max_restarts: int
    processes: dict[bytes, PayloadProcess] = field(default_factory=dict)
    restarts: int = 0
    _generation: int = 0

    def start(self) -> None:
        for slot in range(self.workers):
            self._spawn(slot)

    def _spawn(self, slot: int) -> PayloadProcess:
        self._generation += 1
        identity = f"{self.runner_id}/p{slot}.{self._generation}"
        folder = self.workdir / f"payload-{slot}"
        folder.mkdir(parents=True, exist_ok=True)
        log_path = folder / f"payload.{self._generation}.log"
        # The payload gets the runner's environment but not the task token: it talks to the runner, not the API.
        env = {**{k: v for k, v in os.environ.items() if k != settings.TOKEN.name}, CHANNEL_ENV: self.channel,
               PAYLOAD_ID_ENV: identity}
        with log_path.open("wb") as log_file:
            try:
                popen = subprocess.Popen(self.command, cwd=folder, env=env, stdin=subprocess.DEVNULL,
                                         stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True,
                                         preexec_fn=_die_with_parent)
            except OSError as exc:
                raise OSError(f"cannot start the payload {' '.join(self.command)!r}: {exc.strerror or exc}") from None
        now = time.monotonic()
        process = PayloadProcess(slot, identity, popen, log_path, now, now)
        self.processes[process.peer] = process
        log.info("started payload %s (pid %d): %s", identity, popen.pid, " ".join(self.command))
        return process

    def exited(self) -> list[tuple[PayloadProcess, int]]:
        """Processes that have exited since the last call, with their exit codes; they leave the pool."""
        gone = [(p, code) for p in self.processes.values() if (code := p.popen.poll()) is not None]
        for process, _ in gone:
            del self.processes[process.peer]
        return gone

    def restart(self, process: PayloadProcess) -> PayloadProcess | None:
        """Start a new process in a crashed one's slot, or None once the restart budget is spent."""
        if self.restarts >= self.max_restarts:
            return None
        self.restarts += 1
        return self._spawn(process.slot)

    def kill(self, process: PayloadProcess) -> int:
        """Kill a process (and its children) now; returns its exit code."""
        try:
            os.killpg(process.popen.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        code = process.popen.wait()
        self.processes.pop(process.peer, None)
        return code

    def silent(self, limit_s: float, now: float) -> list[PayloadProcess]:
        """Processes holding a range that have said nothing for longer than ``limit_s``."""
        return [p for p in self.processes.values() if p.in_flight is not None and now - p.last_heard > limit_s]

    def stop(self, grace_s: float) -> None:
        """Wait up to ``grace_s`` for every process to exit, then terminate, then kill what is left."""
        deadline = time.monotonic() + grace_s
        for process in list(self.processes.values()):
            try:
                process.popen.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("payload %s did not exit within the grace period; terminating it", process.identity)
                try:
                    os.killpg(process.popen.pid, signal.SIGTERM)
                    process.popen.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    self.kill(process)
                except ProcessLookupError:
                    process.popen.wait()
        self.processes.clear()

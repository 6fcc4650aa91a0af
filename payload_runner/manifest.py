"""The work directory's manifest: outputs written but not yet reported, for recovery after a crash."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

log = logging.getLogger(__name__)

MANIFEST = "manifest.jsonl"


@dataclass(frozen=True)
class PendingOutput:
    """A payload output the runner accepted but had not reported ``finished`` when it stopped."""

    range_id: str
    attempt: int
    path: str
    cpu_s: float
    wall_s: float


class Manifest:
    """An append-only journal (JSON lines) of outputs produced and of ranges reported.

    Each line is flushed to the operating system before the runner acts on it, so it survives the runner being
    killed (the case the manifest is for: kill -9, an out-of-memory kill, a batch system's SIGKILL). It is not
    fsync'd: that would only guard against the machine itself going down, which takes the payload's output
    files (never fsync'd) with it, and what a lost line leaves behind is a range whose lease lapses and which
    the ledger hands out again. An fsync per range cost the runner's loop a third of its time with short ranges.
    """

    def __init__(self, workdir: Path) -> None:
        self.path = workdir / MANIFEST
        self._stream = self.path.open("a", encoding="utf-8")

    def _append(self, record: dict[str, object]) -> None:
        self._stream.write(json.dumps(record, separators=(",", ":")) + "\n")
        self._stream.flush()

    def output(self, pending: PendingOutput) -> None:
        """A payload finished a range and its output file is complete on disk."""
        self._append({"event": "output", "at": time.time(), **asdict(pending)})

    def reported(self, range_id: str, attempt: int) -> None:
        """The ledger has the range's final word (finished, or refused because another worker had it)."""
        self._append({"event": "reported", "at": time.time(), "range_id": range_id, "attempt": attempt})

    def close(self) -> None:
        self._stream.close()

    @staticmethod
    def pending(workdir: Path) -> list[PendingOutput]:
        """Outputs recorded in a previous run's manifest that were never reported, oldest first."""
        path = workdir / MANIFEST
        if not path.exists():
            return []
        outputs: dict[tuple[str, int], PendingOutput] = {}
        with path.open(encoding="utf-8") as stream:
            for number, line in enumerate(stream, start=1):
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    # The runner died while writing this line: nothing after it was written either.
                    log.warning("%s: line %d is incomplete; ignoring it", path, number)
                    continue
                key = (record["range_id"], record["attempt"])
                if record["event"] == "output":
                    outputs[key] = PendingOutput(record["range_id"], record["attempt"], record["path"],
                                                 record["cpu_s"], record["wall_s"])
                elif record["event"] == "reported":
                    outputs.pop(key, None)
        return list(outputs.values())

    @staticmethod
    def archive(workdir: Path) -> None:
        """Set a previous run's manifest aside (kept while it names unreported outputs, else removed)."""
        path = workdir / MANIFEST
        if not path.exists():
            return
        if Manifest.pending(workdir):
            path.replace(workdir / f"manifest.{int(time.time() * 1000)}.jsonl")
        else:
            path.unlink()

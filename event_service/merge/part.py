"""Merge one part of a task's range outputs into one file: stage in, verify, check events, merge, validate.

``merge_part`` stages in every range output of a ``MergePart`` (see ``event_service.merge.plan`` and
``event_service.merge.stage``), verifying each against the adler32 and size the ledger recorded. A missing
object, a checksum or size mismatch, an unreadable ROOT file, a wrong number of events or an event number seen
twice make that range *corrupted*; every input is checked before ``CorruptedOutputsError`` lists all of them
(the caller marks them in the ledger with ``report_corrupted`` and fails; the next run merges their
re-processed outputs), and no merged file is left behind.

The default merge concatenates the inputs' TTree ``events`` (all branches, jagged ones too) in event order
with uproot, into ``<workdir>/<file name>``, written under a scratch directory and renamed into place, then
read back: its event numbers must be exactly the inputs', each once, in order. Its bytes are deterministic
(see ``event_service.merge.write``): a retried merge gives the same file, the same adler32.

``command`` replaces the default merge; the contract is in ``event_service.merge.command``: the program is
run as ``shlex.split(command) + ["--inputs", LIST, "--output", PATH]`` where LIST is a text file with one
local input path per line in event order (a local store's own files are verified while the program runs, and
it is stopped when one fails; others are fetched and verified first); exit code 0 and a file at PATH mean
success, anything else raises MergeCommandError with the exit code and the end of its stderr (``event-service-hadd``, in
``event_service.merge.hadd``, runs ROOT's ``hadd`` so). A custom merge's events are checked in its result
when that is a ROOT file with ``events/event_number``: the part's number of events, each once, means every
input was right, and no input is parsed (that is most of a small file's merge time). When the result falls
short, or the program fails, every input is read as the default merge reads them, to name the corrupted
ranges; only if none is found does the merge fail with the program's or the validation's error. The merged
file's adler32 and fsync run alongside its read-back.
"""

from __future__ import annotations

import os
import shutil
import threading
import uuid
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from uproot.compression import Compression

from event_service.checksums import adler32_file
from event_service.ledger import Ledger, RangeOutput
from event_service.merge.command import stage_and_run
from event_service.merge.errors import (
    CorruptedOutputsError,
    MergeValidationError,
    MissingStoreError,
    UnreadableOutputError,
    UnsupportedTreeError,
)
from event_service.merge.plan import MergePart, part_file_name, plan_merge
from event_service.merge.read import (
    Fingerprint,
    RangeData,
    TreeLayout,
    event_numbers_of,
    read_back,
    read_range,
)
from event_service.merge.stage import STAGE_THREADS, Staged, stage_outputs
from event_service.merge.write import (
    CHUNK_BYTES,
    KEEP_COMPRESSION,
    MergedTreeWriter,
    frozen_root_clock,
    parse_compression,
)
from event_service.stores import ObjectStore
from event_service.stores.base import fsync_dir

__all__ = [
    "MergePart",
    "MergedFile",
    "merge_part",
    "part_file_name",
    "plan_merge",
    "report_corrupted",
]

SHOWN_EVENTS = 5


@dataclass(frozen=True, slots=True)
class MergedFile:
    """A merged file in the work directory, ready to be registered. ``missing``: ranges planned into its part
    that had no output (registration accepts them only once they are fatal or cancelled)."""

    index: int
    file_name: str
    path: Path
    events: int
    adler32: str
    size: int
    range_ids: tuple[str, ...]
    first_event_number: int | None
    last_event_number: int | None
    missing: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able form (for XCom)."""
        return {"index": self.index, "file_name": self.file_name, "path": str(self.path), "events": self.events,
                "adler32": self.adler32, "size": self.size, "range_ids": list(self.range_ids),
                "first_event_number": self.first_event_number, "last_event_number": self.last_event_number,
                "missing": list(self.missing)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> MergedFile:
        return cls(int(data["index"]), str(data["file_name"]), Path(data["path"]), int(data["events"]),
                   str(data["adler32"]), int(data["size"]), tuple(data["range_ids"]),
                   data["first_event_number"], data["last_event_number"], tuple(data.get("missing", ())))


def report_corrupted(ledger: Ledger, error: CorruptedOutputsError, by: str | None = "merge") -> int:
    """Mark every range the error lists ``corrupted`` with its own reason; returns the ranges changed."""
    return sum(ledger.mark_corrupted(error.task, [range_id], f"merge of {error.file_name}: {reason}", by)
               for range_id, reason in error.reasons.items())


def _stores_for(part: MergePart, stores: Mapping[str | None, ObjectStore]) -> list[ObjectStore]:
    missing: dict[str | None, list[str]] = {}
    for output in part.outputs:
        if output.store not in stores:
            missing.setdefault(output.store, []).append(output.range_id)
    if missing:
        raise MissingStoreError(part.task, missing)
    return [stores[output.store] for output in part.outputs]


# -------------------------------------------------------------------------------- event checks

def _shown(numbers: np.ndarray[Any, Any]) -> str:
    listed = ", ".join(str(int(n)) for n in numbers[:SHOWN_EVENTS])
    return listed + (f" and {len(numbers) - SHOWN_EVENTS} more" if len(numbers) > SHOWN_EVENTS else "")


def _distinct(numbers: np.ndarray[Any, Any]) -> int:
    """How many different values: by sorting (numpy 2's hash-based ``unique`` took 0.7 s for a million)."""
    ordered = np.sort(numbers)
    return int(len(ordered) and 1 + np.count_nonzero(ordered[1:] != ordered[:-1]))


def _range_problem(output: RangeOutput, numbers: np.ndarray[Any, Any]) -> str | None:
    if len(numbers) != output.events:
        return (f"holds {len(numbers)} events, the range has {output.events} "
                f"(entries {output.first_event}-{output.last_event} of {output.lfn})")
    values, counts = np.unique(numbers, return_counts=True)
    if len(values) != len(numbers):
        return f"holds event numbers more than once: {_shown(values[counts > 1])}"
    return None


def _duplicates(outputs: Sequence[RangeOutput], numbers: Sequence[np.ndarray[Any, Any] | None]) -> dict[str, str]:
    """Event numbers held by more than one range of the part: each range involved, and with which ranges."""
    held = [(position, values) for position, values in enumerate(numbers) if values is not None and len(values)]
    if len(held) < 2:
        return {}
    everything = np.concatenate([values for _, values in held])
    owner = np.concatenate([np.full(len(values), position) for position, values in held])
    order = np.argsort(everything, kind="stable")
    ordered = everything[order]
    twice = np.unique(ordered[1:][ordered[1:] == ordered[:-1]])
    if not len(twice):
        return {}
    where = np.isin(everything, twice)
    by_range: dict[int, dict[int, list[int]]] = {}
    for value in twice:
        positions = sorted(set(owner[where & (everything == value)].tolist()))
        for position in positions:
            others = by_range.setdefault(position, {})
            for other in positions:
                if other != position:
                    others.setdefault(other, []).append(int(value))
    return {outputs[position].range_id: "; ".join(
        f"event numbers also in range {outputs[other].range_id}: {_shown(np.asarray(values))}"
        for other, values in sorted(others.items())) for position, others in sorted(by_range.items())}


# -------------------------------------------------------------------------------- the merge

def _clear_stale_scratch(workdir: Path, file_name: str) -> None:
    for stale in workdir.glob(f".{file_name}.*.merging"):
        shutil.rmtree(stale)


@dataclass
class _InputScan:
    """What reading a part's inputs has found so far: the first good layout (and its range), the writer."""

    layouts: dict[Fingerprint, TreeLayout] = field(default_factory=dict)
    layout: TreeLayout | None = None
    reference: str = ""
    writer: MergedTreeWriter | None = None


def _check_input(output: RangeOutput, item: Staged, scan: _InputScan, full: bool
                 ) -> tuple[np.ndarray[Any, Any] | None, RangeData | None, str | None]:
    """One staged input read (``full``: all its branches) and checked: its event numbers (None when it holds
    none to check), its data, and why it is corrupted (None when it is not)."""
    data: RangeData | None = None
    try:
        if full:
            data = read_range(item.path, scan.layouts)
            values = data.event_numbers
        else:
            values = event_numbers_of(item.path)
    except UnreadableOutputError as exc:
        return None, None, f"unreadable: {exc.reason}"
    except UnsupportedTreeError as exc:
        if scan.layout is None:
            raise
        return None, None, f"branches differ from those of range {scan.reference}: {exc}"
    if item.in_store and not item.unchanged():
        return None, None, f"output changed in the store while it was merged: {item.path}"
    if values is None:
        return None, None, None  # a custom merge's input that is not a ROOT file with events/event_number
    problem = _range_problem(output, values)
    if problem is None and data is not None:
        if scan.layout is None:
            scan.layout, scan.reference = data.layout, output.range_id
        elif data.layout != scan.layout:
            problem = (f"branches ({data.layout.describe()}) differ from those of range {scan.reference} "
                       f"({scan.layout.describe()})")
    return values, data, problem


def _write_input(scan: _InputScan, data: RangeData, writer_at: Path, compression: Compression | None | str,
                 uuid_seed: str, chunk_bytes: int) -> None:
    """Add one checked input to the default merge's output, opening it with the first."""
    if scan.writer is None:
        assert scan.layout is not None
        scan.writer = MergedTreeWriter(writer_at, scan.layout, data.compression if compression == KEEP_COMPRESSION
                                       else compression, uuid_seed, chunk_bytes)
    scan.writer.add(data.arrays)


def _check_inputs(part: MergePart, staged: Sequence[Staged | None], reasons: dict[str, str],
                  writer_at: Path | None = None, compression: Compression | None | str = KEEP_COMPRESSION,
                  uuid_seed: str = "", chunk_bytes: int = CHUNK_BYTES
                  ) -> tuple[list[np.ndarray[Any, Any] | None], TreeLayout | None, MergedTreeWriter | None]:
    """Read every staged input once, checking its events; with ``writer_at`` also write the default merge
    while no input has failed. Returns the event numbers per range (None where unknown)."""
    numbers: list[np.ndarray[Any, Any] | None] = [None] * len(part.outputs)
    scan = _InputScan()
    try:
        for position, (output, item) in enumerate(zip(part.outputs, staged, strict=True)):
            if item is None:
                continue
            values, data, problem = _check_input(output, item, scan, writer_at is not None)
            if problem is not None:
                reasons[output.range_id] = problem
                continue
            if values is None:
                continue
            numbers[position] = values
            if data is not None and not reasons and writer_at is not None:
                _write_input(scan, data, writer_at, compression, uuid_seed, chunk_bytes)
    except BaseException:
        if scan.writer is not None:
            scan.writer.abort()
        raise
    return numbers, scan.layout, scan.writer


def _read_back(part: MergePart, path: Path, layout: TreeLayout | None) -> np.ndarray[Any, Any] | None:
    """The merged file's event numbers (None for a custom merge's output that is not a ROOT events file)."""
    try:
        if layout is None:
            return event_numbers_of(path)
        found_layout, found = read_back(path)
    except (UnreadableOutputError, UnsupportedTreeError) as exc:
        raise MergeValidationError(part.task, part.file_name, f"cannot read it back: {exc}") from None
    if found_layout != layout:
        raise MergeValidationError(part.task, part.file_name, f"branches are ({found_layout.describe()}), "
                                                              f"the inputs' are ({layout.describe()})")
    return found


def _validate(part: MergePart, path: Path, layout: TreeLayout | None,
              expected: np.ndarray[Any, Any] | None) -> int:
    """Read the merged file back and check its events; returns how many it holds."""
    found = _read_back(part, path, layout)
    if found is None:
        return part.events
    distinct = _distinct(found)
    if expected is None:
        if len(found) != part.events or distinct != len(found):
            raise MergeValidationError(part.task, part.file_name, f"{len(found)} events ({distinct} distinct) "
                                                                  f"read back, expected {part.events}, each once")
        return len(found)
    if len(found) == len(expected) and np.array_equal(found, expected):
        return len(found)
    missing = np.setdiff1d(expected, found)
    extra = np.setdiff1d(found, expected)
    repeated = len(found) - distinct
    if not len(missing) and not len(extra) and not repeated:
        reason = f"the {len(found)} events are all there, each once, but not in the inputs' order"
    else:
        reason = (f"{len(found)} events read back, {len(expected)} expected; missing: {_shown(missing) or 'none'}; "
                  f"unexpected: {_shown(extra) or 'none'}; {repeated} repeated")
    raise MergeValidationError(part.task, part.file_name, reason)


def _raise_corrupted(part: MergePart, reasons: Mapping[str, str]) -> None:
    if reasons:
        ordered = {o.range_id: reasons[o.range_id] for o in part.outputs if o.range_id in reasons}
        raise CorruptedOutputsError(part.task, part.file_name, ordered)


def _expected_events(numbers: Sequence[np.ndarray[Any, Any] | None]) -> np.ndarray[Any, Any] | None:
    known = [values for values in numbers if values is not None]
    return np.concatenate(known) if known and len(known) == len(numbers) else None


def _merge_by_default(part: MergePart, staged: Sequence[Staged | None], reasons: dict[str, str], produced: Path,
                      setting: Compression | None | str, chunk_bytes: int
                      ) -> tuple[np.ndarray[Any, Any] | None, TreeLayout | None]:
    """The default merge: one pass over the inputs checks their events and writes the merged tree."""
    uuid_seed = "\n".join((part.task, part.file_name, *part.range_ids))
    with frozen_root_clock():
        numbers, layout, writer = _check_inputs(part, staged, reasons, produced, setting, uuid_seed, chunk_bytes)
        try:
            duplicated = _duplicates(part.outputs, numbers)
        except BaseException:
            if writer is not None:
                writer.abort()
            raise
        reasons.update((k, v) for k, v in duplicated.items() if k not in reasons)
        if writer is not None:
            writer.abort() if reasons else writer.close()
    _raise_corrupted(part, reasons)
    if writer is None:
        raise MergeValidationError(part.task, part.file_name, "no input was written")
    return _expected_events(numbers), layout


def _merged_events_hold(part: MergePart, produced: Path) -> np.ndarray[Any, Any] | None:
    """The merged file's event numbers when they show every input was right: the part's number of events, each
    once. None when they do not, or when the file is not a ROOT file with ``events/event_number``."""
    try:
        found = event_numbers_of(produced)
    except (UnreadableOutputError, UnsupportedTreeError):
        return None
    if found is None or len(found) != part.events or _distinct(found) != len(found):
        return None
    return found


def _merge_by_command(part: MergePart, stores: Sequence[ObjectStore], stage_dir: Path, stage_threads: int,
                      command: str, produced: Path, scratch: Path, timeout_s: float | None,
                      sealing: Callable[[], object]) -> tuple[np.ndarray[Any, Any] | None, int | None]:
    """A custom merge program over the verified inputs. The events are checked in the merged file: when it holds
    the part's number of events, each once, every input was right and none is read. Otherwise (or when the
    program fails) every input is read to name the corrupted ranges. ``sealing`` is called once the merged file
    is there. Returns the event numbers (None where unknown) and, when the merged file was already validated,
    its number of events."""
    staged, reasons, failure = stage_and_run(part, stores, stage_dir, stage_threads, command, produced, scratch,
                                             timeout_s)
    if not reasons and failure is None and all(item is not None and (not item.in_store or item.unchanged())
                                               for item in staged):
        sealing()
        found = _merged_events_hold(part, produced)
        if found is not None:
            return found, len(found)
    numbers, _, _ = _check_inputs(part, staged, reasons)
    reasons.update((k, v) for k, v in _duplicates(part.outputs, numbers).items() if k not in reasons)
    try:
        _raise_corrupted(part, reasons)
    except CorruptedOutputsError as exc:
        raise exc from failure
    if failure is not None:
        raise failure
    return _expected_events(numbers), None


class _Seal:
    """The merged file's adler32 and its fsync, in background threads while its events are read back; before
    that, while the file is being written, its pages are written back to disk every quarter second, so the final
    fsync waits for the last of them only (the disk works while the merge computes)."""

    WRITE_BEHIND_S = 0.25

    def __init__(self, path: Path) -> None:
        self.path = path
        self._pool = ThreadPoolExecutor(max_workers=3, thread_name_prefix="seal")
        self._written = threading.Event()
        self._pool.submit(self._write_back_while_written)
        self._checksum: Future[tuple[str, int]] | None = None
        self._synced: Future[None] | None = None

    def _write_back_while_written(self) -> None:
        fd: int | None = None
        try:
            while not self._written.wait(self.WRITE_BEHIND_S):
                if fd is None:
                    try:
                        fd = os.open(self.path, os.O_RDONLY)
                    except FileNotFoundError:
                        continue  # not written yet
                os.fdatasync(fd)
        finally:
            if fd is not None:
                os.close(fd)

    def start(self) -> None:
        """The file is complete: checksum it and make it durable."""
        if self._checksum is None:
            self._written.set()
            self._checksum = self._pool.submit(adler32_file, self.path)
            self._synced = self._pool.submit(_fsync_file, self.path)

    def result(self) -> tuple[str, int]:
        """The adler32 and size, once the file is durable."""
        self.start()
        assert self._checksum is not None and self._synced is not None
        self._synced.result()
        return self._checksum.result()

    def close(self) -> None:
        self._written.set()
        self._pool.shutdown(wait=True, cancel_futures=True)


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as stream:
        os.fsync(stream.fileno())


def merge_part(part: MergePart, stores: Mapping[str | None, ObjectStore], workdir: Path,
               command: str | None = None, *, command_timeout_s: float | None = None,
               compression: str = KEEP_COMPRESSION, stage_threads: int = STAGE_THREADS,
               chunk_bytes: int = CHUNK_BYTES) -> MergedFile:
    """Merge one part into ``<workdir>/<part.file_name>`` and return what it holds (see the module docstring).

    ``stores`` maps each output's store URL (None for the task's own object store) to an open store. Raises
    CorruptedOutputsError (nothing is written), MergeValidationError, MergeCommandError, MissingStoreError,
    or the store's error when a store cannot be reached. Re-running gives the same file.
    """
    if not part.outputs:
        raise ValueError(f"task {part.task!r}: part {part.file_name} holds no range output to merge "
                         f"(planned ranges without output: {', '.join(part.missing) or 'none'})")
    input_stores = _stores_for(part, stores)
    setting = parse_compression(compression)
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    _clear_stale_scratch(workdir, part.file_name)
    scratch = workdir / f".{part.file_name}.{uuid.uuid4().hex}.merging"
    scratch.mkdir()
    produced = scratch / part.file_name
    seal = _Seal(produced)
    try:
        expected: np.ndarray[Any, Any] | None
        validated: int | None = None
        if command is not None:
            expected, validated = _merge_by_command(part, input_stores, scratch / "inputs", stage_threads, command,
                                                    produced, scratch, command_timeout_s, seal.start)
            layout = None
        else:
            staged, reasons = stage_outputs(part.outputs, input_stores, scratch / "inputs", threads=stage_threads)
            expected, layout = _merge_by_default(part, staged, reasons, produced, setting, chunk_bytes)
            seal.start()
        events = validated if validated is not None else _validate(part, produced, layout, expected)
        adler32, size = seal.result()
        final = workdir / part.file_name
        os.replace(produced, final)
        fsync_dir(workdir)
    finally:
        seal.close()
        shutil.rmtree(scratch, ignore_errors=False)
    first = int(expected[0]) if expected is not None and len(expected) else None
    last = int(expected[-1]) if expected is not None and len(expected) else None
    return MergedFile(part.index, part.file_name, final, events, adler32, size, part.range_ids, first, last,
                      part.missing)

"""Is a task complete? Every range final, few enough fatal, and every output present with its checksum."""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Literal

from event_service.ledger import Ledger, RangeOutput
from event_service.statuses import OPEN, RangeStatus, TaskState
from event_service.stores import ChecksumMismatchError, ObjectNotFoundError, ObjectStore

log = logging.getLogger(__name__)

S = RangeStatus
ObjectId = tuple[str | None, str, str, int]


@dataclass(frozen=True)
class Completion:
    """The verdict on a task: still ``waiting``, ``complete`` (and verified), or ``failed`` (and why)."""

    state: Literal["waiting", "complete", "failed"]
    message: str
    open_ranges: int = 0
    live_workers: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    corrupted: list[str] = field(default_factory=list)


def _verify(output: RangeOutput, stores: Mapping[str | None, ObjectStore]) -> str | None:
    """Why the output cannot be used, or None when its object is there with its recorded size and adler32."""
    store = stores.get(output.store)
    if store is None:
        return f"its output is in {output.store}, which the task does not name"
    stored = store.head(output.key)
    if stored is None and output.member is not None:
        # An archive a PanDA pilot uploaded has none of the store's metadata: check its bytes once, record it.
        try:
            stored = store.adopt(output.key, adler32=output.adler32, size=output.size)
        except ObjectNotFoundError:
            stored = None
        except ChecksumMismatchError as exc:
            return f"archive {output.key} in {store.url} is not what the pilot reported: {exc}"
    if stored is None:
        return f"object {output.key} is missing from {store.url}"
    if (stored.adler32, stored.size) != (output.adler32, output.size):
        return (f"object {output.key} in {store.url} has adler32 {stored.adler32} and {stored.size} bytes; "
                f"the ledger recorded {output.adler32} and {output.size}")
    return None


def _verify_all(objects: Mapping[ObjectId, RangeOutput], stores: Mapping[str | None, ObjectStore],
                threads: int) -> dict[ObjectId, str | None]:
    """Each object's verdict: those in remote stores from ``threads`` threads, local ones in this thread."""
    remote = {k: o for k, o in objects.items() if (store := stores.get(o.store)) is None or store.remote}
    verdicts = {k: _verify(o, stores) for k, o in objects.items() if k not in remote}
    if remote:
        with ThreadPoolExecutor(max_workers=threads) as pool:
            verdicts.update(zip(remote, pool.map(lambda o: _verify(o, stores), remote.values()), strict=True))
    return verdicts


def check_completion(ledger: Ledger, task: str, stores: Mapping[str | None, ObjectStore], *,
                     verify_objects: bool = True, threads: int = 8) -> Completion:
    """Judge a task; outputs that fail verification are marked corrupted (so they are re-dispatched)."""
    spec = ledger.task_spec(task)
    status = ledger.status(task)
    counts = {str(k): v for k, v in status.counts.items() if v}
    open_ranges = sum(status.counts[s] for s in OPEN)
    if status.state == TaskState.CANCELLED:
        return Completion("failed", f"task {task!r} was cancelled", open_ranges, status.live_workers, counts)
    fatal = status.counts[S.FATAL]
    if fatal > spec.max_fatal_ranges:
        shown = "; ".join(f"{r.range_id} ({r.error_code}: {r.error})" for r in
                          ledger.ranges_with_status(task, S.FATAL, limit=5))
        return Completion("failed", f"task {task!r} is incomplete: {fatal} ranges are fatal and the task tolerates "
                                    f"{spec.max_fatal_ranges} (max_fatal_ranges): {shown}",
                          open_ranges, status.live_workers, counts)
    if open_ranges:
        held = status.counts[S.SENT] + status.counts[S.RUNNING]
        return Completion("waiting", f"task {task!r}: {open_ranges} ranges open ({status.counts[S.READY]} ready, "
                                     f"{held} with workers); {status.live_workers} live workers",
                          open_ranges, status.live_workers, counts)
    outputs = [o for o in ledger.outputs(task) if o.status == S.FINISHED]
    if verify_objects and outputs:
        # Ranges that share an archive share its object: each object is checked once.
        objects = {(o.store, o.key, o.adler32, o.size): o for o in outputs}
        verdicts = _verify_all(objects, stores, threads)
        problems = {o.range_id: why for o in outputs if (why := verdicts[(o.store, o.key, o.adler32, o.size)])}
        if problems:
            by_reason: dict[str, list[str]] = defaultdict(list)
            for range_id, why in problems.items():
                by_reason[why].append(range_id)
            for why, ids in by_reason.items():
                ledger.mark_corrupted(task, ids, why, by="verification")
            shown = "; ".join(f"{r}: {why}" for r, why in list(problems.items())[:5])
            return Completion("failed", f"task {task!r}: {len(problems)} outputs failed verification and were sent "
                                        f"back to ready; run the DAG again to redo them: {shown}",
                              open_ranges, status.live_workers, counts, sorted(problems))
    return Completion("complete", f"task {task!r}: all {status.ranges} ranges are final ({len(outputs)} finished "
                                  f"outputs verified, {fatal} fatal of {spec.max_fatal_ranges} tolerated)",
                      0, status.live_workers, counts)

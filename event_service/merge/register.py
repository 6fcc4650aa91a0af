"""Registration of merged files: written to normal storage, recorded in the file catalog, ranges ``merged``.

Every step is idempotent, so a retried or restarted registration finishes what an earlier one began: a file
already in storage with the same adler32 and size is kept (a different one is never overwritten), an identical
catalog row is kept, and ranges already ``merged`` stay so. A file is refused when its ranges are already in
another catalog file of the task: the data record never holds an event twice.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, insert, select
from sqlalchemy.exc import IntegrityError

from event_service.checksums import adler32_file
from event_service.ledger import Ledger
from event_service.ledger.schema import catalog, ranges, tasks
from event_service.merge.errors import (
    CatalogConflictError,
    IncompletePartError,
    MergedStateError,
    MissingStoreError,
    StorageWriteError,
    StoredFileExistsError,
)
from event_service.merge.part import MergedFile
from event_service.statuses import RangeStatus
from event_service.stores import ChecksumMismatchError, ObjectStore

log = logging.getLogger(__name__)

RETRIES = 3
BACKOFF_S = 2.0
FINAL_WITHOUT_OUTPUT = frozenset({RangeStatus.FATAL, RangeStatus.CANCELLED})


@dataclass(frozen=True, slots=True)
class CatalogEntry:
    """One merged file in the catalog: where it is, what it holds, and when it was registered (Unix s)."""

    dataset: str
    file_name: str
    task: str
    events: int
    size: int
    adler32: str
    location: str
    first_range: str
    last_range: str
    registered_at: float
    certification: str | None = None  # "certified" or "suspect" against the task's reference; None: not compared
    validation: str | None = None  # URL of the validation histograms (JSON; a PNG of each lies beside it)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able form (for XCom and Asset event extras)."""
        return {"dataset": self.dataset, "file_name": self.file_name, "task": self.task, "events": self.events,
                "size": self.size, "adler32": self.adler32, "location": self.location,
                "first_range": self.first_range, "last_range": self.last_range,
                "registered_at": self.registered_at, "certification": self.certification,
                "validation": self.validation}


def location_of(storage: ObjectStore, file_name: str) -> str:
    """The URL of a file in normal storage: the storage URL joined with the file name."""
    return f"{storage.url.rstrip('/')}/{file_name}"


def _same(found: Any, expected: tuple[str, int]) -> bool:
    return found is not None and (found.adler32, found.size) == expected


def _write(merged: MergedFile, storage: ObjectStore, retries: int, backoff_s: float) -> None:
    """Put the file unless the same file is there, then read its checksum back; refuse a different file;
    retry what fails (a store error, or a read-back that finds nothing: a concurrent put of the same file)."""
    expected = (merged.adler32, merged.size)
    location = location_of(storage, merged.file_name)
    for attempt in range(1, retries + 2):
        try:
            existing = storage.head(merged.file_name)
            if existing is None:
                storage.put(merged.file_name, merged.path, adler32=merged.adler32, size=merged.size)
                existing = storage.head(merged.file_name)
                if existing is None:
                    raise ChecksumMismatchError(storage.url, merged.file_name, "adler32 and size",
                                                f"{merged.adler32}/{merged.size}", "nothing",
                                                "when read back after the write")
            else:
                log.info("%s is already in storage with adler32 %s", location, existing.adler32)
            if not _same(existing, expected):
                raise StoredFileExistsError(location, expected, (existing.adler32, existing.size))
            return
        except StoredFileExistsError:
            raise
        except OSError as exc:  # the stores' errors, and a local disk's
            if attempt > retries:
                raise StorageWriteError(f"cannot write {merged.path} to {location} after {attempt} attempts: "
                                        f"{exc}") from exc
            delay = backoff_s * 2 ** (attempt - 1)
            log.warning("writing %s to %s failed (attempt %d of %d): %s; retrying in %.1f s", merged.file_name,
                        storage.url, attempt, retries + 1, exc, delay)
            time.sleep(delay)


def _write_derived(path: Path, storage: ObjectStore, retries: int, backoff_s: float) -> None:
    """Put a file made from the merged file (its validation histograms) beside it, replacing an older one."""
    for attempt in range(1, retries + 2):
        try:
            storage.put(path.name, path)
            return
        except OSError as exc:
            if attempt > retries:
                raise StorageWriteError(f"cannot write {path} to {location_of(storage, path.name)} after "
                                        f"{attempt} attempts: {exc}") from exc
            time.sleep(backoff_s * 2 ** (attempt - 1))


def _positions(conn: Connection, task_id: int, range_ids: set[str]) -> dict[str, tuple[int, int]]:
    rows = conn.execute(select(ranges.c.range_id, ranges.c.file_number, ranges.c.first_event)
                        .where(ranges.c.task_id == task_id, ranges.c.range_id.in_(sorted(range_ids)))).all()
    return {row.range_id: (row.file_number, row.first_event) for row in rows}


def _check_overlap(conn: Connection, task: str, task_id: int, entry: CatalogEntry) -> None:
    """Refuse a file whose ranges lie within another catalog file of the task (parts are contiguous)."""
    others = [row for row in conn.execute(select(catalog).where(catalog.c.task_id == task_id)).all()
              if (row.dataset, row.file_name) != (entry.dataset, entry.file_name)]
    wanted = {entry.first_range, entry.last_range, *(r.first_range for r in others), *(r.last_range for r in others)}
    where = _positions(conn, task_id, wanted)
    unknown = sorted({entry.first_range, entry.last_range} - set(where))
    if unknown:
        raise CatalogConflictError(f"task {task!r}: ranges {', '.join(unknown)} of {entry.file_name} are not in "
                                   "the ledger")
    first, last = where[entry.first_range], where[entry.last_range]
    for row in others:
        if where[row.first_range] <= last and first <= where[row.last_range]:
            raise CatalogConflictError(
                f"task {task!r}: {entry.file_name} (ranges {entry.first_range} to {entry.last_range}) overlaps "
                f"{row.file_name} of dataset {row.dataset} (ranges {row.first_range} to {row.last_range}), "
                "already in the catalog; registering it would duplicate events")


def _record(ledger: Ledger, task: str, entry: CatalogEntry) -> CatalogEntry:
    """Insert the catalog row, or accept an identical one; returns the row as stored."""
    task_id = ledger.task(task).id
    facts = ("events", "size", "adler32", "location", "first_range", "last_range")

    def existing(conn: Connection) -> CatalogEntry | None:
        row = conn.execute(select(catalog).where(catalog.c.dataset == entry.dataset,
                                                 catalog.c.file_name == entry.file_name)).first()
        if row is None:
            return None
        owner = conn.execute(select(tasks.c.name).where(tasks.c.id == row.task_id)).scalar_one()
        stored = CatalogEntry(row.dataset, row.file_name, owner, row.events, row.size, row.adler32, row.location,
                              row.first_range, row.last_range, row.registered_at, row.certification, row.validation)
        if owner != task or any(getattr(stored, name) != getattr(entry, name) for name in facts):
            raise CatalogConflictError(
                f"the catalog already holds {entry.dataset}/{entry.file_name} as {_describe(stored)}; "
                f"this registration has {_describe(entry)}")
        return stored

    for attempt in (1, 2):
        try:
            with ledger.engine.begin() as conn:
                # Registrations of one task take turns (PostgreSQL; SQLite's BEGIN IMMEDIATE already does):
                # the overlap check below must see every file registered before it.
                conn.execute(select(tasks.c.id).where(tasks.c.id == task_id).with_for_update())
                found = existing(conn)
                if found is not None:
                    return found
                _check_overlap(conn, task, task_id, entry)
                conn.execute(insert(catalog).values(
                    dataset=entry.dataset, file_name=entry.file_name, task_id=task_id, events=entry.events,
                    size=entry.size, adler32=entry.adler32, location=entry.location, first_range=entry.first_range,
                    last_range=entry.last_range, registered_at=entry.registered_at,
                    certification=entry.certification, validation=entry.validation))
                return entry
        except IntegrityError:
            # Another registration inserted the same (dataset, file name) meanwhile: compare with it.
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


def _describe(entry: CatalogEntry) -> str:
    return (f"task {entry.task}, {entry.events} events, {entry.size} bytes, adler32 {entry.adler32}, "
            f"at {entry.location}, ranges {entry.first_range} to {entry.last_range}")


def _statuses(ledger: Ledger, task: str, range_ids: Sequence[str]) -> dict[str, str]:
    task_id = ledger.task(task).id
    with ledger.engine.connect() as conn:
        rows = conn.execute(select(ranges.c.range_id, ranges.c.status).where(
            ranges.c.task_id == task_id, ranges.c.range_id.in_(list(range_ids)))).all()
    return {row.range_id: row.status for row in rows}


def register_output(ledger: Ledger, task: str, merged: MergedFile, storage: ObjectStore, dataset: str, *,
                    retries: int = RETRIES, backoff_s: float = BACKOFF_S, by: str | None = "register_output",
                    validation: Sequence[Path] = (), certification: str | None = None) -> CatalogEntry:
    """Write a merged file to normal storage, check it there, catalog it, and mark its ranges ``merged``.

    Ranges of the part without output (``merged.missing``) must be fatal or cancelled, else
    IncompletePartError. The file goes to ``storage`` under its file name: if the same file (adler32 and size)
    is there already it is kept; a different one raises StoredFileExistsError and is left alone. Store errors
    are retried ``retries`` times with exponential backoff (``backoff_s``, doubling), then StorageWriteError.
    The stored object's checksum is read back and compared. The catalog row is inserted or found identical
    (CatalogConflictError otherwise, or when its ranges are already in another file of the task). Safe to
    call again after any failure or crash.

    ``validation`` files (the merged file's validation histograms as JSON, then PNG) are written beside it,
    replacing any earlier ones; the catalog row records the JSON's URL and the ``certification``.
    """
    if not merged.range_ids:
        raise ValueError(f"task {task!r}: {merged.file_name} holds no ranges")
    if merged.missing:
        open_ranges = {range_id: status for range_id, status in _statuses(ledger, task, merged.missing).items()
                       if status not in FINAL_WITHOUT_OUTPUT}
        if open_ranges:
            raise IncompletePartError(
                f"task {task!r}: {merged.file_name} was merged without ranges that are not final: "
                + ", ".join(f"{r} is {s}" for r, s in sorted(open_ranges.items()))
                + "; merge it again once they are finished (or fatal)")
    found = adler32_file(merged.path)
    if found != (merged.adler32, merged.size):
        raise ChecksumMismatchError(str(merged.path.parent), merged.file_name, "adler32 and size",
                                    f"{merged.adler32}/{merged.size}", f"{found[0]}/{found[1]}",
                                    "in the work directory since the merge")
    _write(merged, storage, retries, backoff_s)
    for path in validation:
        _write_derived(path, storage, retries, backoff_s)
    entry = _record(ledger, task, CatalogEntry(
        dataset, merged.file_name, task, merged.events, merged.size, merged.adler32,
        location_of(storage, merged.file_name), merged.range_ids[0], merged.range_ids[-1], time.time(),
        certification, location_of(storage, validation[0].name) if validation else None))
    ledger.mark_merged(task, list(merged.range_ids), by)
    statuses = _statuses(ledger, task, merged.range_ids)
    stray = {range_id: statuses.get(range_id, "absent") for range_id in merged.range_ids
             if statuses.get(range_id) != RangeStatus.MERGED}
    if stray:
        raise MergedStateError(f"task {task!r}: {merged.file_name} is registered, but ranges of it are not merged: "
                               + ", ".join(f"{r} is {s}" for r, s in stray.items()))
    log.info("registered %s (%d events, adler32 %s) in dataset %s at %s", merged.file_name, merged.events,
             merged.adler32, dataset, entry.location)
    return entry


def catalog_entries(ledger: Ledger, task: str | None = None, dataset: str | None = None) -> list[CatalogEntry]:
    """Catalog rows, optionally of one task and/or one dataset, ordered by dataset and file name."""
    query = (select(catalog, tasks.c.name.label("task_name"))
             .select_from(catalog.join(tasks, tasks.c.id == catalog.c.task_id))
             .order_by(catalog.c.dataset, catalog.c.file_name))
    if task is not None:
        query = query.where(catalog.c.task_id == ledger.task(task).id)
    if dataset is not None:
        query = query.where(catalog.c.dataset == dataset)
    return ledger.transaction(lambda conn: [  # the ledger's retries; an outage is LedgerUnavailableError
        CatalogEntry(r.dataset, r.file_name, r.task_name, r.events, r.size, r.adler32, r.location, r.first_range,
                     r.last_range, r.registered_at, r.certification, r.validation)
        for r in conn.execute(query).all()])


def cleanup_range_outputs(ledger: Ledger, task: str, stores: Mapping[str | None, ObjectStore]) -> int:
    """Delete the per-range objects of the task's ``merged`` ranges; returns how many objects were deleted.

    Only ranges whose output is in a registered merged file are touched: their recorded outputs, and every
    other object under ``<task>/<range_id>/`` in the same stores, which no merge will ever read: the uploads of
    earlier attempts (a runner killed after its upload, before its report; an output found corrupted) and any
    other file uploaded under the range. Running it again deletes nothing.
    """
    merged = [output for output in ledger.outputs(task) if output.status == RangeStatus.MERGED]
    missing: dict[str | None, list[str]] = {}
    for output in merged:
        if output.store not in stores:
            missing.setdefault(output.store, []).append(output.range_id)
    if missing:
        raise MissingStoreError(task, missing)
    deleted = 0
    for output in merged:
        store = stores[output.store]
        if store.head(output.key) is not None:
            store.delete(output.key)
            deleted += 1
    merged_ids = {output.range_id for output in merged}
    left = 0
    for store in {id(stores[o.store]): stores[o.store] for o in merged}.values():
        # one listing of the task's prefix, not one per range: S3 lists 1,000 keys per call
        for found in list(store.list(f"{task}/")):
            parts = found.key.split("/")
            if len(parts) > 2 and parts[1] in merged_ids:
                store.delete(found.key)
                left += 1
    log.info("task %s: deleted %d range outputs of merged ranges and %d other objects under those ranges", task,
             deleted, left)
    return deleted + left

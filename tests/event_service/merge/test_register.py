"""Registration of merged files: normal storage, the catalog table, ranges merged, idempotence, cleanup."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest

from event_service.api.server import free_port
from event_service.ledger import Ledger
from event_service.merge.errors import (
    CatalogConflictError,
    IncompletePartError,
    MissingStoreError,
    StorageWriteError,
    StoredFileExistsError,
)
from event_service.merge.part import MergedFile, merge_part
from event_service.merge.plan import plan_merge
from event_service.merge.register import CatalogEntry, catalog_entries, cleanup_range_outputs, register_output
from event_service.messages import RangeUpdate
from event_service.spec import InputFile
from event_service.statuses import RangeStatus
from event_service.stores import LocalStore, S3Store
from tests.event_service.merge.conftest import Task, make_task
from tests.event_service.stores.conftest import s3_store
from tests.servers import S3Server


@pytest.fixture
def storage(tmp_path: Path) -> LocalStore:
    """Normal storage: a local directory."""
    return LocalStore(tmp_path / "results")


def merge(task: Task, index: int, workdir: Path, max_events: int | None = None) -> MergedFile:
    return merge_part(task.plan(max_events)[index], {None: task.store}, workdir)


def statuses(task: Task) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for output in task.outputs():
        found.setdefault(output.status.value, []).append(output.range_id)
    return found


def test_registering_writes_the_file_catalogs_it_and_marks_its_ranges(ledger: Ledger, tmp_path: Path,
                                                                       evnt: list[InputFile],  # noqa: F811
                                                                       storage: LocalStore) -> None:
    task = make_task(ledger, tmp_path, evnt)
    merged = merge(task, 0, tmp_path / "work")
    before = time.time()
    entry = register_output(ledger, task.name, merged, storage, task.spec.dataset)

    assert entry == CatalogEntry("mt.merged", "mt.merged._000001.root", "mt", 50, merged.size, merged.adler32,
                                 f"{storage.url}/mt.merged._000001.root", "mt.1.0-9", "mt.1.40-49",
                                 entry.registered_at)
    assert before <= entry.registered_at <= time.time()
    stored = storage.head(merged.file_name)
    assert stored is not None and (stored.adler32, stored.size) == (merged.adler32, merged.size)
    assert (tmp_path / "results" / merged.file_name).read_bytes() == merged.path.read_bytes()
    assert statuses(task) == {"merged": list(merged.range_ids), "finished": [
        o.range_id for o in task.outputs() if o.range_id not in merged.range_ids]}
    assert catalog_entries(ledger) == [entry]
    assert entry.to_dict()["location"] == entry.location

    # a retry or a restart after any step: nothing new, no error
    assert register_output(ledger, task.name, merged, storage, task.spec.dataset) == entry
    again = merge(task, 0, tmp_path / "work-2")  # the merge re-run from scratch gives the same file
    assert register_output(ledger, task.name, again, storage, task.spec.dataset) == entry
    assert catalog_entries(ledger) == [entry]
    assert [t["to_status"] for t in ledger.transitions(task.name, "mt.1.0-9")] == ["sent", "finished", "merged"]


def test_every_part_registered_makes_the_whole_task(task: Task, tmp_path: Path, storage: LocalStore) -> None:
    planned = [part.range_ids for part in task.plan()]
    entries = [register_output(task.ledger, task.name, merge(task, index, tmp_path / "work"), storage, "data.v1")
               for index in range(len(task.plan()))]
    assert [(e.file_name, e.events, e.first_range, e.last_range) for e in entries] == [
        ("mt.merged._000001.root", 50, "mt.1.0-9", "mt.1.40-49"),
        ("mt.merged._000002.root", 50, "mt.1.50-59", "mt.2.30-39"),
        ("mt.merged._000003.root", 20, "mt.2.40-49", "mt.2.50-59")]
    assert statuses(task) == {"merged": [o.range_id for o in task.outputs()]}
    assert catalog_entries(task.ledger, task="mt") == entries
    assert catalog_entries(task.ledger, dataset="data.v1") == entries
    assert catalog_entries(task.ledger, dataset="other") == []
    assert [part.range_ids for part in task.plan()] == planned  # merged ranges still count in the plan


def test_a_different_file_of_the_same_name_is_never_overwritten(task: Task, tmp_path: Path,
                                                                 storage: LocalStore) -> None:
    merged = merge(task, 0, tmp_path / "work")
    (tmp_path / "someone-else.root").write_bytes(b"another file entirely")
    theirs = storage.put(merged.file_name, tmp_path / "someone-else.root")
    with pytest.raises(StoredFileExistsError) as caught:
        register_output(task.ledger, task.name, merged, storage, task.spec.dataset, backoff_s=0)
    assert isinstance(caught.value, FileExistsError)
    assert theirs.adler32 in str(caught.value) and merged.adler32 in str(caught.value)
    assert f"{storage.url}/{merged.file_name} already exists" in str(caught.value)
    assert (tmp_path / "results" / merged.file_name).read_bytes() == b"another file entirely"
    assert catalog_entries(task.ledger) == []
    assert "merged" not in statuses(task)


def test_the_same_file_registered_elsewhere_conflicts_in_the_catalog(task: Task, tmp_path: Path,
                                                                     storage: LocalStore) -> None:
    merged = merge(task, 0, tmp_path / "work")
    first = register_output(task.ledger, task.name, merged, storage, task.spec.dataset)
    other = LocalStore(tmp_path / "other-storage")
    with pytest.raises(CatalogConflictError) as caught:
        register_output(task.ledger, task.name, merged, other, task.spec.dataset)
    assert first.location in str(caught.value) and f"{other.url}/{merged.file_name}" in str(caught.value)
    assert catalog_entries(task.ledger) == [first]


def test_a_file_whose_ranges_are_already_in_another_is_refused(task: Task, tmp_path: Path,
                                                               storage: LocalStore) -> None:
    register_output(task.ledger, task.name, merge(task, 0, tmp_path / "work", 30), storage, "d")  # ranges 1-3
    shifted = merge_part(plan_merge(task.outputs(), task.name, 20)[1], {None: task.store}, tmp_path / "work")
    assert shifted.range_ids == ("mt.1.20-29", "mt.1.30-39")
    with pytest.raises(CatalogConflictError, match="overlaps mt.merged._000001.root of dataset d .* would "
                                                   "duplicate events"):
        register_output(task.ledger, task.name, shifted, storage, "d")
    assert [e.file_name for e in catalog_entries(task.ledger)] == ["mt.merged._000001.root"]
    assert task.status("mt.1.30-39") == RangeStatus.FINISHED


def test_a_part_merged_without_a_range_waits_until_that_range_is_fatal(task: Task, tmp_path: Path,
                                                                      storage: LocalStore) -> None:
    lost = "mt.2.10-19"  # one of the second part's
    task.ledger.mark_corrupted(task.name, [lost], "found corrupted by another merge")
    merged = merge(task, 1, tmp_path / "work")
    assert merged.missing == (lost,) and merged.events == 40 and lost not in merged.range_ids
    with pytest.raises(IncompletePartError, match=f"without ranges that are not final: {lost} is ready"):
        register_output(task.ledger, task.name, merged, storage, task.spec.dataset)
    assert storage.head(merged.file_name) is None and catalog_entries(task.ledger) == []

    claimed = task.ledger.claim(task.name, "w9", 1).ranges
    assert [c.range_id for c in claimed] == [lost]
    task.ledger.update(task.name, "w9", [RangeUpdate(range_id=lost, status="fatal", error_code="ERR_BAD_EVENT")])
    entry = register_output(task.ledger, task.name, merged, storage, task.spec.dataset)
    assert entry.events == 40 and task.status(lost) == RangeStatus.FATAL


def test_concurrent_registrations_of_one_file_make_one_row(ledger: Ledger, tmp_path: Path,
                                                           evnt: list[InputFile],  # noqa: F811
                                                           storage: LocalStore) -> None:
    task = make_task(ledger, tmp_path, evnt)
    merged = merge(task, 1, tmp_path / "work")
    results: list[Any] = []

    def register() -> None:
        try:
            results.append(register_output(ledger, task.name, merged, storage, task.spec.dataset, backoff_s=0.05))
        except Exception as exc:  # collected and asserted on below
            results.append(exc)

    threads = [threading.Thread(target=register) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(isinstance(r, CatalogEntry) for r in results), results
    assert len({r.registered_at for r in results}) == 1
    assert len(catalog_entries(ledger)) == 1


def test_storage_errors_are_retried_with_backoff_then_reported(task: Task, tmp_path: Path) -> None:
    merged = merge(task, 0, tmp_path / "work")
    dead = S3Store("nowhere", endpoint_url=f"http://127.0.0.1:{free_port()}", access_key="k", secret_key="s",
                   region="us-east-1", max_attempts=1, connect_timeout_s=1)
    start = time.monotonic()
    with pytest.raises(StorageWriteError, match=r"after 3 attempts: .*cannot reach"):
        register_output(task.ledger, task.name, merged, dead, task.spec.dataset, retries=2, backoff_s=0.2)
    assert time.monotonic() - start >= 0.2 + 0.4
    assert catalog_entries(task.ledger) == [] and "merged" not in statuses(task)


def test_a_merged_file_changed_since_the_merge_is_refused(task: Task, tmp_path: Path, storage: LocalStore) -> None:
    merged = merge(task, 0, tmp_path / "work")
    with open(merged.path, "r+b") as stream:
        stream.seek(500)
        stream.write(b"\0\0\0\0")
    with pytest.raises(OSError, match="adler32 and size mismatch in the work directory since the merge"):
        register_output(task.ledger, task.name, merged, storage, task.spec.dataset)
    assert storage.head(merged.file_name) is None


def test_cleanup_deletes_only_the_objects_of_merged_ranges(task: Task, tmp_path: Path, storage: LocalStore) -> None:
    register_output(task.ledger, task.name, merge(task, 1, tmp_path / "work"), storage, task.spec.dataset)
    merged = {o.range_id: o.key for o in task.outputs() if o.status == RangeStatus.MERGED}
    kept = {o.range_id: o.key for o in task.outputs() if o.status == RangeStatus.FINISHED}
    assert len(merged) == 5 and len(kept) == 7
    assert cleanup_range_outputs(task.ledger, task.name, {None: task.store}) == 5
    assert all(task.store.head(key) is None for key in merged.values())
    assert all(task.store.head(key) is not None for key in kept.values())
    assert storage.head("mt.merged._000002.root") is not None
    assert cleanup_range_outputs(task.ledger, task.name, {None: task.store}) == 0
    with pytest.raises(MissingStoreError):
        cleanup_range_outputs(task.ledger, task.name, {"s3://elsewhere": task.store})


def test_cleanup_also_deletes_what_else_was_uploaded_under_a_merged_range(task: Task, tmp_path: Path,
                                                                          storage: LocalStore) -> None:
    merged_id, other_id = task.plan()[1].range_ids[0], task.plan()[0].range_ids[0]  # part 1 gets merged
    payload = tmp_path / "payload.root"
    payload.write_bytes(b"an earlier attempt's upload, never reported")
    strays = [f"{task.name}/{merged_id}/7/HITS.{merged_id}.root", f"{task.name}/{merged_id}/1/another.root"]
    kept = [f"{task.name}/{other_id}/7/HITS.{other_id}.root", f"{task.name}x/{merged_id}/1/HITS.root",
            f"other/{merged_id}/1/HITS.root"]
    for key in [*strays, *kept]:
        task.store.put(key, payload)
    register_output(task.ledger, task.name, merge(task, 1, tmp_path / "work"), storage, task.spec.dataset)
    assert cleanup_range_outputs(task.ledger, task.name, {None: task.store}) == 5 + len(strays)
    assert all(task.store.head(key) is None for key in strays)
    assert all(task.store.head(key) is not None for key in kept)
    assert cleanup_range_outputs(task.ledger, task.name, {None: task.store}) == 0


@pytest.mark.s3
def test_register_to_s3_normal_storage(task: Task, tmp_path: Path, s3_server: S3Server, s3_bucket: str) -> None:
    merged = merge(task, 2, tmp_path / "work")
    with s3_store(s3_server, s3_bucket, "datasets/mt") as storage:
        entry = register_output(task.ledger, task.name, merged, storage, task.spec.dataset)
        assert entry.location == f"s3://{s3_bucket}/datasets/mt/mt.merged._000003.root"
        stored = storage.head(merged.file_name)
        assert stored is not None and (stored.adler32, stored.size) == (merged.adler32, merged.size)
        assert register_output(task.ledger, task.name, merged, storage, task.spec.dataset) == entry
        storage.get(merged.file_name, tmp_path / "back.root")
    assert (tmp_path / "back.root").read_bytes() == merged.path.read_bytes()

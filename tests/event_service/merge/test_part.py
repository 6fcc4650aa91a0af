"""The merge: plans, a real merge of toysim outputs, bad outputs, restarts (custom commands: test_merge_command)."""

from __future__ import annotations

import dataclasses
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import awkward as ak
import numpy as np
import pytest
import uproot

from event_service.api.app import create_app
from event_service.api.client import AdminClient
from event_service.api.server import ServerThread, free_port
from event_service.checksums import adler32_file
from event_service.ledger import Ledger, RangeOutput
from event_service.merge.errors import CorruptedOutputsError, MissingStoreError
from event_service.merge.part import MergedFile, merge_part, report_corrupted
from event_service.merge.plan import MergePart, part_file_name, plan_merge
from event_service.spec import InputFile, TaskSpec
from event_service.statuses import RangeStatus
from event_service.stores import LocalStore, S3Store, StoreUnavailableError
from payload_runner.payloads.toysim import OUTPUT_TYPES, simulate, write_output
from tests.event_service.merge.conftest import (
    BRANCHES,
    Task,
    input_events,
    leftovers,
    make_task,
    merged_numbers,
    task_spec,
    toysim_output,
    tree_arrays,
)
from tests.event_service.stores.conftest import s3_store
from tests.servers import S3Server

RUNNER = Path(sys.executable).with_name("payload-runner")


# -------------------------------------------------------------------------------- the plan

def fake_output(range_id: str, file_number: int, first: int, last: int,
                status: RangeStatus = RangeStatus.FINISHED) -> RangeOutput:
    return RangeOutput(range_id, file_number, f"EVNT._{file_number:06d}.root", first, last, status, 1,
                       f"t/{range_id}/1/HITS.root", None, "00000001", 10)


def sized(*events: int) -> list[RangeOutput]:
    outputs, first = [], 0
    for count in events:
        outputs.append(fake_output(f"t.1.{first}-{first + count - 1}", 1, first, first + count - 1))
        first += count
    return outputs


def shape(parts: list[MergePart]) -> list[list[int]]:
    return [[o.events for o in part.outputs] for part in parts]


def test_plan_packs_ranges_in_event_order_without_splitting_one() -> None:
    assert shape(plan_merge(sized(10, 10, 10, 10, 10), "t", 30)) == [[10, 10, 10], [10, 10]]
    assert shape(plan_merge(sized(10, 20, 5, 25), "t", 30)) == [[10, 20], [5, 25]]  # exactly full stays one part
    assert shape(plan_merge(sized(10, 45, 10, 10), "t", 30)) == [[10], [45], [10, 10]]  # too big: a part alone
    assert shape(plan_merge(sized(45), "t", 30)) == [[45]]
    assert shape(plan_merge(sized(1, 1, 1), "t", 1)) == [[1], [1], [1]]
    assert plan_merge([], "t", 30) == []


def test_plan_names_and_indexes_its_parts() -> None:
    parts = plan_merge(sized(10, 10, 10), "mytask", 10)
    assert [(p.index, p.file_name) for p in parts] == [
        (0, "mytask.merged._000001.root"), (1, "mytask.merged._000002.root"), (2, "mytask.merged._000003.root")]
    assert part_file_name("mytask", 41) == "mytask.merged._000042.root"
    assert parts[1].range_ids == ("t.1.10-19",) and parts[1].events == 10 and parts[1].task == "mytask"


def test_plan_is_the_same_whatever_the_order_it_is_given() -> None:
    outputs = [fake_output(f"t.{f}.{e}-{e + 9}", f, e, e + 9) for f in (1, 2, 3) for e in range(0, 50, 10)]
    expected = plan_merge(outputs, "t", 35)
    for seed in range(5):
        shuffled = outputs[:]
        random.Random(seed).shuffle(shuffled)
        assert plan_merge(shuffled, "t", 35) == expected
    assert [o.range_id for p in expected for o in p.outputs] == [o.range_id for o in outputs]
    assert shape(expected)[0] == [10, 10, 10]


def test_plan_refuses_bad_input() -> None:
    with pytest.raises(ValueError, match="max_events_per_file"):
        plan_merge(sized(10), "t", 0)
    with pytest.raises(ValueError, match="overlap"):
        plan_merge([fake_output("a", 1, 0, 9), fake_output("b", 1, 5, 14)], "t", 100)
    with pytest.raises(ValueError, match="appears twice"):
        plan_merge([fake_output("a", 1, 0, 9), fake_output("a", 1, 0, 9)], "t", 100)
    with pytest.raises(ValueError, match="'b' is ready"):
        plan_merge([fake_output("b", 1, 0, 9, RangeStatus.READY)], "t", 100)


def test_plan_over_the_full_range_list_keeps_its_parts_when_an_output_is_lost(task: Task) -> None:
    full = task.plan(30)
    assert shape(full) == [[10, 10, 10], [10, 10, 10], [10, 10, 10], [10, 10, 10]]
    lost = full[1].outputs[0].range_id
    without = plan_merge([o for o in task.outputs() if o.range_id != lost], task.name, 30,
                         ranges=task.spec.event_ranges())
    assert [p.file_name for p in without] == [p.file_name for p in full]
    assert without[0] == full[0] and without[2:] == full[2:]
    assert without[1].missing == (lost,) and without[1].range_ids == full[1].range_ids[1:]
    # packed over the outputs alone, the later parts would shift
    assert shape(plan_merge([o for o in task.outputs() if o.range_id != lost], task.name, 30))[1] == [10, 10, 10]


# -------------------------------------------------------------------------------- a real merge

def run_real_runner(ledger: Ledger, tmp: Path, inputs: list[InputFile], name: str) -> TaskSpec:
    """Create a task through the dispatch API and run the real payload runner with toysim to its end."""
    spec = task_spec(name, inputs, tmp, max_events=50)
    with ServerThread(create_app(ledger, "admin")) as server:
        with AdminClient(server.url, "admin") as admin:
            token = admin.create_task(spec).token
        done = subprocess.run([str(RUNNER), "--server", server.url, "--task", name, "--token", token,
                               "--workdir", str(tmp / "runner"), "--workers", "2"],
                              capture_output=True, text=True, timeout=180, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return spec


def test_real_runner_outputs_merge_in_event_order_with_every_branch(ledger: Ledger, tmp_path: Path,
                                                                    evnt: list[InputFile]) -> None:
    spec = run_real_runner(ledger, tmp_path, evnt, "real")
    store = LocalStore(tmp_path / "objects")
    outputs = ledger.outputs("real")
    assert len(outputs) == 12
    parts = plan_merge(outputs, "real", spec.merge.max_events_per_file, ranges=spec.event_ranges())
    assert [p.events for p in parts] == [50, 50, 20]
    merged = [merge_part(part, {None: store}, tmp_path / "work") for part in parts]

    assert [m.file_name for m in merged] == ["real.merged._000001.root", "real.merged._000002.root",
                                             "real.merged._000003.root"]
    assert [merged_numbers(m) for m in merged] == [list(range(1, 51)), list(range(51, 101)), list(range(101, 121))]
    assert [(m.first_event_number, m.last_event_number, m.events) for m in merged] == [
        (1, 50, 50), (51, 100, 50), (101, 120, 20)]
    for m, part in zip(merged, parts, strict=True):
        assert m.range_ids == part.range_ids and m.index == part.index
        assert (m.adler32, m.size) == adler32_file(m.path)
        inputs = [tree_arrays(store.path(o.key)) for o in part.outputs]
        expected = ak.concatenate(inputs)
        found = tree_arrays(m.path)
        assert found.fields == BRANCHES == inputs[0].fields
        for branch in BRANCHES:
            assert ak.array_equal(found[branch], expected[branch]), branch
            assert str(ak.type(found[branch])) == str(ak.type(expected[branch])), branch
        with uproot.open(m.path) as opened, uproot.open(store.path(part.outputs[0].key)) as first:
            assert opened["events"].title == first["events"].title
            assert [b.typename for b in opened["events"].branches] == [b.typename for b in first["events"].branches]
            assert opened.file.compression == first.file.compression
    assert leftovers(tmp_path / "work") == [m.file_name for m in merged]


def other_layout(path: Path, item: InputFile, first: int, last: int) -> Path:
    """Fixed-size arrays, booleans, a jagged branch of doubles, several baskets per file."""
    numbers = input_events(item, first, last)["event_number"].to_numpy()
    with uproot.recreate(path) as output:
        output.mktree("events", {"event_number": np.int64, "position": np.dtype(("<f4", (3,))), "good": np.bool_,
                                 "energies": ak.types.ListType(ak.types.NumpyType("float64"))},
                      title="another payload", counter_name=lambda name: "n_energies")
        for start in range(0, len(numbers), 4):
            chunk = numbers[start:start + 4]
            output["events"].extend({
                "event_number": chunk, "position": np.repeat(chunk[:, None], 3, axis=1).astype(np.float32),
                "good": chunk % 3 == 0, "energies": ak.Array([[n * 0.5] * int(n % 4) for n in chunk])})
    return path


def test_other_numeric_layouts_merge_too(sqlite_ledger: Ledger, tmp_path: Path, evnt: list[InputFile]) -> None:
    task = make_task(sqlite_ledger, tmp_path, evnt, write=other_layout)
    part = task.plan()[1]
    merged = merge_part(part, {None: task.store}, tmp_path / "work")
    found = tree_arrays(merged.path)
    expected = ak.concatenate([tree_arrays(task.store.path(o.key)) for o in part.outputs])
    assert found.fields == ["event_number", "position", "good", "n_energies", "energies"]
    for branch in found.fields:
        assert ak.array_equal(found[branch], expected[branch]), branch
    assert list(found["event_number"]) == list(range(51, 101))
    with uproot.open(merged.path) as opened:
        assert opened["events"].title == "another payload"
        assert opened["events"]["position"].typename == "float[3]"


def test_merging_again_gives_the_same_bytes_and_events(task: Task, tmp_path: Path) -> None:
    part = task.plan()[0]
    first = merge_part(part, {None: task.store}, tmp_path / "work")
    # a crashed earlier run left its scratch directory behind; a second second starts (time stamps)
    stale = tmp_path / "work" / f".{part.file_name}.0123abcd.merging"
    (stale / "inputs").mkdir(parents=True)
    (stale / part.file_name).write_bytes(b"half a merge")
    time.sleep(1.05 - time.time() % 1)
    again = merge_part(part, {None: task.store}, tmp_path / "work")
    assert again == first
    assert merged_numbers(again) == list(range(1, 51))
    assert leftovers(tmp_path / "work") == [part.file_name]
    elsewhere = merge_part(part, {None: task.store}, tmp_path / "other")
    assert (elsewhere.adler32, elsewhere.size) == (first.adler32, first.size)


def test_merged_file_as_a_dict_round_trips(task: Task, tmp_path: Path) -> None:
    merged = merge_part(task.plan()[2], {None: task.store}, tmp_path / "work")
    assert MergedFile.from_dict(merged.to_dict()) == merged
    assert merged.to_dict()["path"] == str(tmp_path / "work" / "mt.merged._000003.root")


def test_merge_can_change_the_compression(task: Task, tmp_path: Path) -> None:
    merged = merge_part(task.plan()[0], {None: task.store}, tmp_path / "work", compression="zstd:1")
    with uproot.open(merged.path) as opened:
        assert opened.file.compression == uproot.ZSTD(1)
    assert merged_numbers(merged) == list(range(1, 51))
    with pytest.raises(ValueError, match="compression 'brotli:3'"):
        merge_part(task.plan()[0], {None: task.store}, tmp_path / "work", compression="brotli:3")


# -------------------------------------------------------------------------------- bad outputs

def overwrite_in_place(path: Path, position: int, data: bytes) -> None:
    """Change bytes of a stored file behind the store's back (its checksum metadata stays as it was)."""
    with open(path, "r+b") as stream:
        stream.seek(position)
        stream.write(data)


def test_missing_damaged_and_duplicated_outputs_are_each_reported_by_range(task: Task, tmp_path: Path) -> None:
    part = task.plan()[0]
    missing, damaged, impostor, original, good = part.range_ids
    task.store.delete(task.output(missing).key)
    overwrite_in_place(task.object_path(damaged), 1000, b"\xde\xad\xbe\xef" * 8)
    # a payload wrote the events of another range as the impostor's output, and reported it with its checksum
    source = task.output(original)
    task.redo([impostor], lambda path, item, first, last: toysim_output(path, item, source.first_event,
                                                                         source.last_event))
    part = task.plan()[0]
    work = tmp_path / "work"

    with pytest.raises(CorruptedOutputsError) as caught:
        merge_part(part, {None: task.store}, work)
    error = caught.value
    assert error.range_ids == [missing, damaged, impostor, original]
    assert error.reasons[missing].startswith("output missing")
    assert error.reasons[damaged].startswith("output damaged in the store") and "adler32" in error.reasons[damaged]
    assert error.reasons[impostor] == f"event numbers also in range {original}: 31, 32, 33, 34, 35 and 5 more"
    assert error.reasons[original] == f"event numbers also in range {impostor}: 31, 32, 33, 34, 35 and 5 more"
    assert good not in error.reasons
    assert f"task 'mt', merged file {part.file_name}: 4 range output(s) corrupted" in str(error)
    assert leftovers(work) == []  # no merged file, no scratch

    assert report_corrupted(task.ledger, error) == 4
    assert [task.status(r) for r in part.range_ids] == [RangeStatus.READY] * 4 + [RangeStatus.FINISHED]
    history = task.ledger.transitions(task.name, damaged)
    assert [h["to_status"] for h in history][-2:] == ["corrupted", "ready"]
    assert "output damaged in the store" in history[-2]["error"]

    # the next run re-processes them and the same part merges
    task.finish("w2")
    merged = merge_part(task.plan()[0], {None: task.store}, work)
    assert merged_numbers(merged) == list(range(1, 51))


def test_wrong_event_counts_and_unreadable_files_are_corrupted(task: Task, tmp_path: Path) -> None:
    part = task.plan()[1]
    short, garbage, repeated = part.range_ids[:3]

    def short_by_one(path: Path, item: InputFile, first: int, last: int) -> Path:
        return toysim_output(path, item, first, last - 1)

    def not_root(path: Path, item: InputFile, first: int, last: int) -> Path:
        path.write_bytes(b"root" + os.urandom(5000))
        return path

    def first_half_twice(path: Path, item: InputFile, first: int, last: int) -> Path:
        events = input_events(item, first, last)
        write_output(simulate(ak.concatenate([events[:5], events[:5]])), path)
        return path

    writers = {short: short_by_one, garbage: not_root, repeated: first_half_twice}
    for range_id, writer in writers.items():
        task.redo([range_id], writer)

    with pytest.raises(CorruptedOutputsError) as caught:
        merge_part(task.plan()[1], {None: task.store}, tmp_path / "work")
    reasons = caught.value.reasons
    assert list(reasons) == [short, garbage, repeated]
    assert reasons[short].startswith("holds 9 events, the range has 10 (entries 50-59 of EVNT.toy11._000001.root)")
    assert reasons[garbage].startswith("unreadable: not a readable ROOT file")
    assert reasons[repeated].startswith("holds event numbers more than once: 71, 72, 73, 74, 75")
    assert leftovers(tmp_path / "work") == []


def test_an_object_replaced_after_it_was_reported_is_corrupted(task: Task, tmp_path: Path) -> None:
    part = task.plan()[2]
    replaced = part.range_ids[0]
    other = task.output(part.range_ids[1])
    shutil.copyfile(task.store.path(other.key), tmp_path / "other.root")
    task.store.put(task.output(replaced).key, tmp_path / "other.root")  # a complete object, not the reported one
    with pytest.raises(CorruptedOutputsError) as caught:
        merge_part(part, {None: task.store}, tmp_path / "work")
    assert list(caught.value.reasons) == [replaced]
    assert "the ledger recorded" in caught.value.reasons[replaced]
    assert "(the object was replaced)" in caught.value.reasons[replaced]


def test_an_output_with_other_branches_is_corrupted(task: Task, tmp_path: Path) -> None:
    part = task.plan()[0]
    odd = part.range_ids[3]

    def with_extra_branch(path: Path, item: InputFile, first: int, last: int) -> Path:
        columns = {**simulate(input_events(item, first, last)), "extra": np.zeros(last - first + 1, dtype=np.float32)}
        with uproot.recreate(path) as output:
            output.mktree("events", {**OUTPUT_TYPES, "extra": np.float32}, counter_name=lambda name: "nhits")
            output["events"].extend(columns)
        return path

    task.ledger.mark_corrupted(task.name, [odd], "to be re-made with another layout")
    task.finish("w2", write=with_extra_branch)
    with pytest.raises(CorruptedOutputsError) as caught:
        merge_part(task.plan()[0], {None: task.store}, tmp_path / "work")
    assert list(caught.value.reasons) == [odd]
    assert caught.value.reasons[odd].startswith("branches (") and f"those of range {part.range_ids[0]}" in \
        caught.value.reasons[odd]


def test_an_unreachable_store_fails_the_merge_without_blaming_ranges(task: Task, tmp_path: Path) -> None:
    dead = S3Store("nowhere", endpoint_url=f"http://127.0.0.1:{free_port()}", access_key="k", secret_key="s",
                   region="us-east-1", max_attempts=1, connect_timeout_s=1)
    part = task.plan()[0]
    on_dead = dataclasses.replace(part, outputs=tuple(dataclasses.replace(o, store=dead.url) for o in part.outputs))
    with pytest.raises(StoreUnavailableError):
        merge_part(on_dead, {None: task.store, dead.url: dead}, tmp_path / "work")
    assert leftovers(tmp_path / "work") == []
    with pytest.raises(MissingStoreError, match="no store given for s3://nowhere"):
        merge_part(on_dead, {None: task.store}, tmp_path / "work")


@pytest.mark.s3
def test_outputs_in_s3_are_staged_in_verified(sqlite_ledger: Ledger, tmp_path: Path, evnt: list[InputFile],
                                              s3_server: S3Server, s3_bucket: str, s3_client: Any) -> None:
    with s3_store(s3_server, s3_bucket, "objects") as store:
        task = make_task(sqlite_ledger, tmp_path, evnt, "s3t", store=store)
        part = task.plan()[0]
        merged = merge_part(part, {None: store}, tmp_path / "work")
        assert merged_numbers(merged) == list(range(1, 51))
        key = f"objects/{task.output(part.range_ids[2]).key}"
        metadata = s3_client.head_object(Bucket=s3_bucket, Key=key)["Metadata"]
        body = s3_client.get_object(Bucket=s3_bucket, Key=key)["Body"].read()
        s3_client.put_object(Bucket=s3_bucket, Key=key, Body=body[:-100] + b"\0" * 100, Metadata=metadata)
        with pytest.raises(CorruptedOutputsError) as caught:
            merge_part(part, {None: store}, tmp_path / "work")
        assert list(caught.value.reasons) == [part.range_ids[2]]
        assert "adler32 mismatch after download" in caught.value.reasons[part.range_ids[2]]

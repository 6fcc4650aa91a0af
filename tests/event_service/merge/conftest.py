"""Fixtures and helpers of the merge tests: a real ledger whose task holds toysim outputs in a local store."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import awkward as ak
import pytest
import uproot

from event_service.inputs.generate import make_inputs
from event_service.ledger import Ledger, RangeOutput
from event_service.merge.part import (
    MergedFile,
)
from event_service.merge.plan import MergePart, plan_merge
from event_service.messages import OutputRef, RangeUpdate
from event_service.spec import InputFile, TaskSpec
from event_service.statuses import RangeStatus
from event_service.stores import LocalStore, ObjectStore, object_key
from payload_runner.payloads.toysim import simulate, write_output

BRANCHES = ["event_number", "nparticles", "edep_sum", "nhits", "hit_edep", "hit_layer", "hit_x", "hit_y", "hit_z"]


@pytest.fixture(scope="session")
def evnt(tmp_path_factory: pytest.TempPathFactory) -> list[InputFile]:
    """Two generator files of 60 events each (event numbers 1-120)."""
    return make_inputs(tmp_path_factory.mktemp("evnt"), events=120, files=2, seed=11)


def input_events(item: InputFile, first: int, last: int) -> ak.Array:
    with uproot.open(item.url.removeprefix("file://")) as opened:
        return opened["events"].arrays(entry_start=first, entry_stop=last + 1)


def toysim_output(path: Path, item: InputFile, first: int, last: int) -> Path:
    """The output toysim writes for entries first..last of an input file (same code as the payload)."""
    write_output(simulate(input_events(item, first, last)), path)
    return path


@dataclasses.dataclass
class Task:
    """A task in a real ledger whose ranges hold toysim outputs in a local object store."""

    name: str
    spec: TaskSpec
    ledger: Ledger
    store: ObjectStore
    inputs: list[InputFile]
    tmp: Path

    def outputs(self) -> list[RangeOutput]:
        return self.ledger.outputs(self.name)

    def plan(self, max_events: int | None = None) -> list[MergePart]:
        return plan_merge(self.outputs(), self.name, max_events or self.spec.merge.max_events_per_file,
                          ranges=self.spec.event_ranges())

    def output(self, range_id: str) -> RangeOutput:
        return next(o for o in self.outputs() if o.range_id == range_id)

    def object_path(self, range_id: str) -> Path:
        assert isinstance(self.store, LocalStore)
        return self.store.path(self.output(range_id).key)

    def status(self, range_id: str) -> RangeStatus:
        return self.ledger.range_info(self.name, range_id).status

    def finish(self, worker: str = "w1", write: Any = None) -> None:
        """Claim every ready range and report it finished with a toysim output (or what ``write`` makes)."""
        claimed = self.ledger.claim(self.name, worker, 1000).ranges
        updates = []
        for rng in claimed:
            item = next(i for i in self.inputs if i.lfn == rng.lfn)
            path = self.tmp / "payload" / f"HITS.{rng.range_id}.{rng.attempt}.root"
            path.parent.mkdir(parents=True, exist_ok=True)
            (write or toysim_output)(path, item, rng.first_event, rng.last_event)
            stored = self.store.put(object_key(self.name, rng.range_id, rng.attempt, "HITS.root"), path)
            updates.append(RangeUpdate(range_id=rng.range_id, status="finished",
                                       output=OutputRef(key=stored.key, adler32=stored.adler32, size=stored.size)))
        assert all(r.result == "accepted" for r in self.ledger.update(self.name, worker, updates))

    def redo(self, range_ids: list[str], write: Any) -> None:
        """Send finished ranges back (as a failed verification would) and report new outputs made by ``write``."""
        self.ledger.mark_corrupted(self.name, range_ids, "re-made by the test")
        self.finish("redo", write)


def task_spec(name: str, inputs: list[InputFile], tmp: Path, *, per_range: int = 10, max_events: int = 50,
              object_store: dict[str, Any] | None = None) -> TaskSpec:
    return TaskSpec.parse({
        "name": name, "inputs": [i.model_dump() for i in inputs], "events_per_range": per_range,
        "payload": {"command": "toysim"}, "max_attempts": 3,
        "object_store": object_store or {"url": (tmp / "objects").as_uri()},
        "merge": {"output_url": (tmp / "results").as_uri(), "max_events_per_file": max_events},
    })


def make_task(ledger: Ledger, tmp: Path, inputs: list[InputFile], name: str = "mt", *, per_range: int = 10,
              max_events: int = 50, store: ObjectStore | None = None, write: Any = None) -> Task:
    """A task of 12 ranges (10 events each, over two files) whose outputs are all finished."""
    spec = task_spec(name, inputs, tmp, per_range=per_range, max_events=max_events,
                     object_store={"url": store.url} if store is not None else None)
    ledger.create_task(spec)
    task = Task(name, spec, ledger, store or LocalStore(tmp / "objects"), inputs, tmp)
    task.finish(write=write)
    return task


@pytest.fixture
def sqlite_ledger(tmp_path: Path) -> Iterator[Ledger]:
    with Ledger(f"sqlite:///{tmp_path}/l.sqlite") as opened:
        yield opened


@pytest.fixture
def task(sqlite_ledger: Ledger, tmp_path: Path, evnt: list[InputFile]) -> Task:
    return make_task(sqlite_ledger, tmp_path, evnt)


def tree_arrays(path: Path) -> ak.Array:
    with uproot.open(path) as opened:
        return opened["events"].arrays(library="ak")


def merged_numbers(merged: MergedFile) -> list[int]:
    return list(tree_arrays(merged.path)["event_number"].to_numpy())


def leftovers(workdir: Path) -> list[str]:
    return sorted(p.name for p in workdir.iterdir()) if workdir.exists() else []

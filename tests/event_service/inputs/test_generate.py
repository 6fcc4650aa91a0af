"""make-input: generator-like input files, seeded, event numbers unique over the data set, even split."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import uproot
import yaml

from event_service.cli.main import main
from event_service.inputs.generate import INPUTS_FILE, make_inputs, split_events
from event_service.spec import InputFile, TaskSpec
from tests.event_service.conftest import spec_data

BRANCHES = ("event_number", "nparticles", "px", "py", "pz", "e", "pdg")


def read_all(inputs: list[InputFile]) -> dict[str, np.ndarray]:
    """Every branch of every file, concatenated in file order (jagged branches as arrays of arrays)."""
    parts: dict[str, list[np.ndarray]] = {name: [] for name in BRANCHES}
    for item in inputs:
        with uproot.open(item.url.removeprefix("file://")) as file:
            tree = file["events"]
            assert tree.num_entries == item.events
            arrays = tree.arrays(list(BRANCHES), library="np")
        for name in BRANCHES:
            parts[name].append(arrays[name])
    return {name: np.concatenate(values) for name, values in parts.items()}


def same_arrays(one: dict[str, np.ndarray], other: dict[str, np.ndarray]) -> bool:
    return all(len(one[name]) == len(other[name])
               and all(np.array_equal(a, b) for a, b in zip(one[name], other[name], strict=True))
               for name in BRANCHES)


def test_files_hold_unique_complete_event_numbers_and_particles(tmp_path: Path) -> None:
    inputs = make_inputs(tmp_path / "evnt", events=2503, files=3, seed=11)
    assert [item.events for item in inputs] == [835, 834, 834]
    assert [item.lfn for item in inputs] == [f"EVNT.toy11._00000{n}.root" for n in (1, 2, 3)]
    assert all(item.url == (tmp_path / "evnt" / item.lfn).as_uri() for item in inputs)
    data = read_all(inputs)
    assert data["event_number"].tolist() == list(range(1, 2504))
    assert data["event_number"].dtype == np.int64
    counts = [len(particles) for particles in data["px"]]
    assert counts == data["nparticles"].tolist() and min(counts) >= 1 and len(set(counts)) > 5
    assert data["px"][0].dtype == np.float64 and data["pdg"][0].dtype == np.int32
    energy, momentum2 = np.concatenate(data["e"]), sum(np.concatenate(data[c]) ** 2 for c in ("px", "py", "pz"))
    assert np.all(energy**2 >= momentum2 * (1 - 1e-9))  # physical four-vectors: E >= |p|
    assert {211, -211, 22}.issubset(set(np.concatenate(data["pdg"]).tolist()))


def test_the_same_arguments_give_the_same_events_and_list(tmp_path: Path) -> None:
    one = make_inputs(tmp_path / "a", events=1200, files=2, seed=5)
    other = make_inputs(tmp_path / "b", events=1200, files=2, seed=5)
    assert same_arrays(read_all(one), read_all(other))
    assert [(i.lfn, i.guid, i.events) for i in one] == [(i.lfn, i.guid, i.events) for i in other]
    assert not same_arrays(read_all(one), read_all(make_inputs(tmp_path / "c", events=1200, files=2, seed=6)))


def test_an_events_content_does_not_depend_on_the_split(tmp_path: Path) -> None:
    whole = make_inputs(tmp_path / "one", events=2100, files=1)
    split = make_inputs(tmp_path / "three", events=2100, files=3)
    assert same_arrays(read_all(whole), read_all(split))
    assert len({item.guid for item in whole + split}) == 4


def test_inputs_yaml_is_the_inputs_section_of_a_task_spec(tmp_path: Path) -> None:
    inputs = make_inputs(tmp_path, events=10, files=2)
    listed = yaml.safe_load((tmp_path / INPUTS_FILE).read_text())["inputs"]
    spec = TaskSpec.parse(spec_data(inputs=listed, per_range=3))
    assert list(spec.inputs) == inputs
    assert spec.total_events == 10 and spec.total_ranges == 4


@pytest.mark.parametrize(("events", "files", "split"), [(10, 3, [4, 3, 3]), (9, 3, [3, 3, 3]), (1, 1, [1]),
                                                        (7, 7, [1] * 7), (1_000_001, 2, [500_001, 500_000])])
def test_split_is_as_even_as_possible(events: int, files: int, split: list[int]) -> None:
    assert split_events(events, files) == split


@pytest.mark.parametrize(("events", "files", "message"), [
    (0, 1, "number of events must be a positive integer, got 0"),
    (-5, 1, "got -5"),
    (10, 0, "number of files must be a positive integer, got 0"),
    (3, 4, "cannot spread 3 events over 4 files"),
])
def test_bad_counts_are_refused(tmp_path: Path, events: int, files: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make_inputs(tmp_path / "out", events=events, files=files)
    assert not (tmp_path / "out").exists()


def test_a_non_empty_folder_needs_force(tmp_path: Path) -> None:
    (tmp_path / "keep.txt").write_text("mine")
    with pytest.raises(ValueError, match="is not empty.*--force"):
        make_inputs(tmp_path, events=4, files=1)
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]
    inputs = make_inputs(tmp_path, events=4, files=1, force=True)
    assert (tmp_path / "keep.txt").read_text() == "mine" and inputs[0].events == 4
    with pytest.raises(ValueError, match="not a folder"):
        make_inputs(tmp_path / "keep.txt", events=4, files=1, force=True)
    with pytest.raises(ValueError, match="seed must be an integer >= 0"):
        make_inputs(tmp_path / "new", events=4, files=1, seed=-1)


def test_the_make_input_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "evnt"
    assert main(["make-input", "--events", "25", "--files", "2", "--out", str(out), "--seed", "3"]) == 0
    printed = capsys.readouterr()
    assert yaml.safe_load(printed.out) == yaml.safe_load((out / INPUTS_FILE).read_text())
    assert [item["events"] for item in yaml.safe_load(printed.out)["inputs"]] == [13, 12]
    assert "25 events in 2 files" in printed.err
    assert main(["make-input", "--events", "25", "--files", "2", "--out", str(out)]) == 1
    assert "is not empty" in capsys.readouterr().err
    assert main(["make-input", "--events", "2", "--files", "5", "--out", str(tmp_path / "x")]) == 1
    assert "event-service make-input: cannot spread 2 events over 5 files" in capsys.readouterr().err

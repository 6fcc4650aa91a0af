"""Task specs: valid specs load from YAML and JSON; every kind of bad input names its field."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from event_service.errors import SpecError
from event_service.spec import TaskSpec
from tests.event_service.conftest import make_spec, spec_data


def test_yaml_and_json_give_the_same_spec(tmp_path: Path) -> None:
    data = spec_data()
    data["inputs"][0]["guid"] = "6b1f0c2e-4a57-4f3e-9d0a-1c2b3d4e5f60"
    (tmp_path / "demo.yaml").write_text(yaml.safe_dump(data))
    (tmp_path / "demo.json").write_text(json.dumps(data))
    from_yaml = TaskSpec.from_file(tmp_path / "demo.yaml")
    assert from_yaml == TaskSpec.from_file(tmp_path / "demo.json")
    assert from_yaml.inputs[0].guid == "6B1F0C2E-4A57-4F3E-9D0A-1C2B3D4E5F60"


def test_the_issue_example_loads() -> None:
    text = """
name: demo
inputs:
  - lfn: EVNT.demo._000001.root
    url: file:///abs/path/EVNT.demo._000001.root
    events: 500
events_per_range: 10
max_attempts: 3
lease_seconds: 60
payload: {command: "toysim --cost-ms 5"}
workers: 4
object_store: {url: "file:///var/tmp/es-objects"}
merge: {output_url: "file:///var/tmp/es-results", max_events_per_file: 100000}
"""
    spec = TaskSpec.from_text(text)
    assert (spec.total_events, spec.total_ranges) == (500, 50)


def test_missing_guid_is_generated_and_kept() -> None:
    spec = make_spec()
    guid = spec.inputs[0].guid
    assert len(guid) == 36 and guid == guid.upper()
    again = TaskSpec.parse(json.loads(spec.to_json()))
    assert again.inputs[0].guid == guid


def test_ranges_cover_every_event_once() -> None:
    spec = make_spec(events=(25, 7), per_range=10)
    ranges = list(spec.event_ranges())
    assert [(r.range_id, r.first_event, r.last_event) for r in ranges] == [
        ("demo.1.0-9", 0, 9), ("demo.1.10-19", 10, 19), ("demo.1.20-24", 20, 24), ("demo.2.0-6", 0, 6)]
    assert sum(r.events for r in ranges) == spec.total_events == 32
    assert spec.total_ranges == len(ranges)
    assert len({r.range_id for r in ranges}) == len(ranges)


@pytest.mark.parametrize(("change", "field"), [
    ({"name": "Demo Task"}, "name"),
    ({"name": "x" * 65}, "name"),
    ({"colour": "blue"}, "colour: unknown field"),
    ({"events_per_range": 0}, "events_per_range"),
    ({"max_attempts": -1}, "max_attempts"),
    ({"lease_seconds": 0}, "lease_seconds"),
    ({"workers": 0}, "workers"),
    ({"inputs": []}, "inputs"),
    ({"payload": {"command": ""}}, "payload.command"),
    ({"payload": {"command": "x", "shell": True}}, "payload.shell: unknown field"),
    ({"object_store": {"url": "ftp://host/x"}}, "object_store.url"),
    ({"object_store": {"url": "file://relative/path"}}, "object_store.url"),
    ({"object_store": {"url": "s3://Bad_Bucket/x"}}, "object_store.url"),
    ({"object_store": {"url": "file:///data/../etc"}}, "object_store.url"),
    ({"merge": {"output_url": "root://host/no-double-slash"}}, "merge.output_url"),
    ({"merge": {"output_url": "file:///r", "max_events_per_file": 0}}, "merge.max_events_per_file"),
    ({"max_fatal_ranges": -1}, "max_fatal_ranges"),
    ({"lease_seconds": -5}, "lease_seconds"),
    ({"events_per_range": "ten"}, "events_per_range"),
    ({"panda": {"queues": ["Q"], "cores": 0}}, "panda.cores"),
    ({"panda": {"queues": []}}, "panda.queues"),
    ({"inputs": [{"lfn": "EVNT.1.root", "url": "file:///d/EVNT.1.root", "events": 10**12}], "events_per_range": 1},
     "make 1000000000000 ranges; at most 10000000"),
])
def test_bad_fields_are_refused_by_name(change: dict[str, object], field: str) -> None:
    data = spec_data()
    data.update(change)
    with pytest.raises(SpecError) as caught:
        TaskSpec.parse(data, "tasks/demo.yaml")
    assert str(caught.value).startswith("tasks/demo.yaml: ")
    assert field in str(caught.value)


@pytest.mark.parametrize(("entry", "field"), [
    ({"events": 0}, "inputs.0.events"),
    ({"events": "many"}, "inputs.0.events"),
    ({"lfn": "../etc/passwd"}, "inputs.0.lfn"),
    ({"url": "not a url"}, "inputs.0.url"),
    ({"url": "s3:///no-bucket"}, "inputs.0.url"),
    ({"guid": "not-a-guid"}, "inputs.0.guid"),
    ({"size": 3}, "inputs.0.size: unknown field"),
])
def test_bad_inputs_are_refused_by_name(entry: dict[str, object], field: str) -> None:
    data = spec_data()
    data["inputs"][0].update(entry)
    with pytest.raises(SpecError, match=field.replace(".", r"\.")):
        TaskSpec.parse(data)


def test_duplicate_lfns_are_refused() -> None:
    data = spec_data(events=(5, 5))
    data["inputs"][1]["lfn"] = data["inputs"][0]["lfn"]
    with pytest.raises(SpecError, match=r"inputs\.1\.lfn: .* already names inputs\.0"):
        TaskSpec.parse(data)


def test_input_urls_of_every_supported_kind() -> None:
    data = spec_data(events=(1, 1, 1, 1))
    for entry, url in zip(data["inputs"], ["file:///d/a.root", "s3://bucket-1/evnt/a.root",
                                           "root://eos.example.org//eos/a.root", "https://host/a.root"],
                          strict=True):
        entry["url"] = url
    assert len(TaskSpec.parse(data).inputs) == 4


def test_bad_yaml_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("name: demo\ninputs: [\n  - lfn: x\n")
    with pytest.raises(SpecError, match=r"broken\.yaml: not valid YAML or JSON at line \d+"):
        TaskSpec.from_file(path)


def test_not_a_mapping_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="a task spec is a mapping"):
        TaskSpec.from_text("- just\n- a list\n", "list.yaml")
    with pytest.raises(SpecError, match="cannot read the task spec"):
        TaskSpec.from_file(tmp_path / "absent.yaml")


def test_missing_required_fields_are_named() -> None:
    with pytest.raises(SpecError) as caught:
        TaskSpec.parse({"name": "demo"})
    for field in ("inputs", "events_per_range", "payload", "object_store", "merge"):
        assert f"{field}: Field required" in str(caught.value)

"""The input check: every input opened where it lives, its tree holding the events the spec declares."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from event_service.inputs.check import check_input, check_inputs, require_readable_inputs
from event_service.inputs.errors import InputCheckError
from event_service.inputs.generate import make_inputs
from event_service.spec import InputFile
from tests.servers import XRootDServer, free_ports


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> list[InputFile]:
    return make_inputs(tmp_path_factory.mktemp("evnt"), events=40, files=2, seed=3)


def test_readable_inputs_pass(inputs: list[InputFile]) -> None:
    assert check_inputs(inputs).problems == {}
    fewer = inputs[0].model_copy(update={"events": inputs[0].events - 1})  # a spec may use fewer events
    assert check_input(fewer) is None


def test_each_kind_of_problem_is_named(inputs: list[InputFile], tmp_path: Path) -> None:
    not_root = tmp_path / "notes.root"
    not_root.write_text("not a ROOT file")
    port = free_ports(1)[0]
    bad = [
        inputs[0].model_copy(update={"url": (tmp_path / "absent.root").as_uri()}),
        inputs[0].model_copy(update={"url": tmp_path.as_uri()}),
        inputs[0].model_copy(update={"url": not_root.as_uri()}),
        inputs[0].model_copy(update={"events": inputs[0].events + 1}),
        inputs[0].model_copy(update={"url": f"http://127.0.0.1:{port}/EVNT.root"}),
    ]
    found = check_inputs(bad, timeout_s=5)
    assert list(found.problems) == [f"inputs.{n} ({inputs[0].lfn})" for n in range(5)]
    reasons = list(found.problems.values())
    assert reasons[0] == f"{bad[0].url}: no such file"
    assert reasons[1] == f"{bad[1].url}: not a regular file"
    assert reasons[2].startswith(f"{bad[2].url}: cannot be read: ")
    assert reasons[3] == f"{inputs[0].url}: its tree 'events' holds {inputs[0].events} events, the spec says " \
                         f"{inputs[0].events + 1}"
    assert reasons[4].startswith(f"http://127.0.0.1:{port}/EVNT.root: cannot be read: ")


def test_s3_inputs_are_listed_as_unchecked(inputs: list[InputFile]) -> None:
    remote = inputs[0].model_copy(update={"url": "s3://bucket/EVNT.root"})
    found = check_inputs([inputs[1], remote])
    assert (found.problems, found.unchecked) == ({}, [f"inputs.1 ({inputs[0].lfn})"])


def test_the_error_lists_every_problem(inputs: list[InputFile], tmp_path: Path) -> None:
    gone = inputs[1].model_copy(update={"url": (tmp_path / "gone.root").as_uri()})
    with pytest.raises(InputCheckError) as caught:
        require_readable_inputs("demo", [inputs[0], gone])
    assert str(caught.value) == (f"task 'demo': 1 of 2 inputs cannot be used:\n"
                                 f"  inputs.1 ({inputs[1].lfn}): {gone.url}: no such file")


def test_inputs_on_an_xrootd_server(inputs: list[InputFile], xrootd_server: XRootDServer) -> None:
    source = Path(inputs[0].url.removeprefix("file://"))
    target = xrootd_server.local_path(f"inputs/{source.name}")
    target.parent.mkdir(exist_ok=True)
    target.write_bytes(source.read_bytes())
    os.chown(target.parent, *xrootd_server.owner)
    os.chown(target, *xrootd_server.owner)
    remote = inputs[0].model_copy(update={"url": xrootd_server.url(f"inputs/{source.name}")})
    assert check_input(remote, timeout_s=10) is None
    absent = remote.model_copy(update={"url": xrootd_server.url("inputs/absent.root")})
    assert check_input(absent, timeout_s=10).startswith(f"{absent.url}: cannot be read: ")  # type: ignore[union-attr]
    closed = remote.model_copy(update={"url": f"root://127.0.0.1:{free_ports(1)[0]}//data/EVNT.root"})
    assert check_input(closed, timeout_s=5).startswith(f"{closed.url}: cannot be read: ")  # type: ignore[union-attr]

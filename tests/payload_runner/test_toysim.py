"""The ``toysim`` payload as a real process, driven over a real ZeroMQ channel with ranges from make-input."""

from __future__ import annotations

import http.server
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import uproot

from event_service.inputs.generate import make_inputs
from event_service.spec import InputFile
from payload_runner.channel import CHANNEL_ENV, RunnerChannel, channel_address
from payload_runner.protocol import (
    ErrorReport,
    EventRangeMessage,
    OutputReport,
    PayloadMessage,
    ReadyForEvents,
    parse_payload_message,
)

TOYSIM = Path(sys.executable).with_name("toysim")
ANSWER_S = 60


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> list[InputFile]:
    """Two generator files of 1,500 events each (two baskets per branch in each)."""
    return make_inputs(tmp_path_factory.mktemp("evnt"), events=3000, files=2, seed=7)


def claimed(item: InputFile, first: int, last: int, pfn: str | None = None) -> EventRangeMessage:
    range_id = f"{item.lfn.removesuffix('.root')}.{first}-{last}"
    return EventRangeMessage.from_claimed(range_id, item.lfn, item.guid, first, last, item.url if pfn is None else pfn)


class Payload:
    """One toysim process connected to a runner channel of the test."""

    def __init__(self, workdir: Path, *options: str) -> None:
        address = channel_address(workdir)
        self.channel = RunnerChannel(address)
        self.outdir = workdir / "out"
        self.process = subprocess.Popen([str(TOYSIM), "--outdir", str(self.outdir), *options],
                                        env={**os.environ, CHANNEL_ENV: address}, stderr=subprocess.PIPE,
                                        text=True)

    def next_message(self, timeout_s: float = ANSWER_S) -> tuple[bytes, PayloadMessage] | None:
        """The payload's next message; None after ``timeout_s`` or once the process has exited."""
        deadline = time.monotonic() + timeout_s
        while (received := self.channel.recv(min(0.1, timeout_s))) is None:
            if self.process.poll() is not None:
                received = self.channel.recv(0.1)
                break
            if time.monotonic() > deadline:
                break
        if received is None:
            return None
        return received[0], parse_payload_message(received[1])

    def feed(self, ranges: list[EventRangeMessage], finish: bool = True) -> list[PayloadMessage]:
        """Answer each ``Ready for events`` with the next range, then ``No more events``; collect reports."""
        reports: list[PayloadMessage] = []
        pending = list(ranges)
        while True:
            received = self.next_message()
            if received is None and self.process.poll() is not None:
                return reports
            assert received is not None, f"toysim went silent; stderr: {self.stop()}"
            peer, message = received
            if not isinstance(message, ReadyForEvents):
                reports.append(message)
                continue
            if pending:
                self.channel.send(peer, pending.pop(0).dump())
            elif finish:
                self.channel.send(peer, "No more events")
                return reports
            else:
                return reports

    def wait(self) -> tuple[int, str]:
        _, stderr = self.process.communicate(timeout=ANSWER_S)
        self.channel.close()
        return self.process.returncode, stderr

    def stop(self) -> str:
        if self.process.poll() is None:
            self.process.kill()
        _, stderr = self.process.communicate(timeout=ANSWER_S)
        self.channel.close()
        return stderr


@pytest.fixture
def payload_factory(tmp_path: Path) -> Iterator[type[Payload]]:
    started: list[Payload] = []

    class Started(Payload):
        def __init__(self, *options: str, workdir: Path | None = None) -> None:
            folder = workdir or tmp_path / f"run{len(started)}"
            folder.mkdir(exist_ok=True)
            super().__init__(folder, *options)
            started.append(self)

    yield Started
    for item in started:
        item.stop()


def read_output(path: str | Path) -> dict[str, np.ndarray]:
    with uproot.open(path) as file:
        return file["events"].arrays(library="np")


def input_event_numbers(item: InputFile, first: int, last: int) -> np.ndarray:
    with uproot.open(item.url.removeprefix("file://")) as file:
        return file["events"]["event_number"].array(library="np", entry_start=first, entry_stop=last + 1)


def test_outputs_hold_exactly_each_ranges_events(inputs: list[InputFile], payload_factory: type[Payload]) -> None:
    first, second = inputs
    ranges = [claimed(first, 0, 9), claimed(first, 995, 1004), claimed(second, 0, 0), claimed(second, 1499, 1499)]
    payload = payload_factory("--cost-ms", "1")
    reports = payload.feed(ranges)
    assert payload.wait()[0] == 0
    assert [type(r) for r in reports] == [OutputReport] * 4
    for event_range, report in zip(ranges, reports, strict=True):
        assert isinstance(report, OutputReport) and report.range_id == event_range.range_id
        assert Path(report.path).parent == payload.outdir.resolve()
        assert report.cpu_s >= 0.001 * event_range.events and report.wall_s > 0
        output = read_output(report.path)
        expected = input_event_numbers(first if event_range.lfn == first.lfn else second,
                                       event_range.first_entry, event_range.last_entry)
        assert output["event_number"].tolist() == expected.tolist()
        assert [len(hits) for hits in output["hit_edep"]] == output["nhits"].tolist()
        assert np.allclose([hits.sum() for hits in output["hit_edep"]], output["edep_sum"], rtol=1e-4)
    # event numbers run over the whole data set: the second file starts after the first
    assert read_output(reports[2].path)["event_number"].tolist() == [1501]  # type: ignore[union-attr]
    assert sorted(p.name for p in payload.outdir.iterdir()) == sorted(Path(r.path).name for r in reports
                                                                      if isinstance(r, OutputReport))


def test_two_runs_give_the_same_physics_whatever_the_cut(inputs: list[InputFile],
                                                         payload_factory: type[Payload]) -> None:
    item = inputs[0]
    runs = []
    for cut in ([(990, 1009)], [(990, 999), (1000, 1009)]):
        payload = payload_factory()
        reports = payload.feed([claimed(item, first, last) for first, last in cut])
        assert payload.wait()[0] == 0
        columns = [read_output(r.path) for r in reports if isinstance(r, OutputReport)]
        runs.append({name: np.concatenate([c[name] for c in columns]) for name in columns[0]})
    one, other = runs
    assert one["event_number"].tolist() == list(range(991, 1011))
    for name in ("event_number", "nparticles", "nhits", "edep_sum"):
        assert np.array_equal(one[name], other[name]), name
    for name in ("hit_edep", "hit_layer", "hit_x", "hit_y", "hit_z"):
        assert all(np.array_equal(a, b) for a, b in zip(one[name], other[name], strict=True)), name
    assert len(set(one["edep_sum"].tolist())) == 20  # events differ from one another


def test_error_reports_and_going_on(inputs: list[InputFile], payload_factory: type[Payload]) -> None:
    item = inputs[0]
    injected, good, beyond = claimed(item, 0, 4), claimed(item, 5, 9), claimed(item, 1495, 1504)
    payload = payload_factory("--fail-range-ids", f"{injected.range_id},other")
    reports = payload.feed([injected, beyond, good])
    assert payload.wait()[0] == 0
    assert reports[0] == ErrorReport("ERR_TOYSIM_INJECTED", injected.range_id,
                                     "failure asked for by --fail-range-ids")
    assert isinstance(reports[1], ErrorReport) and reports[1].code == "ERR_TOYSIM_RANGE"
    assert reports[1].range_id == beyond.range_id and "beyond the 1500 events" in reports[1].message
    assert isinstance(reports[2], OutputReport) and reports[2].range_id == good.range_id


def test_an_output_that_cannot_be_written_is_reported(inputs: list[InputFile],
                                                      payload_factory: type[Payload]) -> None:
    blocked, good = claimed(inputs[0], 0, 4), claimed(inputs[0], 5, 9)
    payload = payload_factory()
    (payload.outdir / f"HITS.{blocked.range_id}.root").mkdir(parents=True)  # a folder where the file should go
    reports = payload.feed([blocked, good])
    assert payload.wait()[0] == 0
    assert isinstance(reports[0], ErrorReport) and reports[0].code == "ERR_TOYSIM_OUTPUT"
    assert f"HITS.{blocked.range_id}.root" in reports[0].message
    assert isinstance(reports[1], OutputReport)
    assert sorted(p.name for p in payload.outdir.iterdir()) == [f"HITS.{blocked.range_id}.root",
                                                                f"HITS.{good.range_id}.root"]


def test_no_more_events_at_once_exits_zero_with_no_output(payload_factory: type[Payload]) -> None:
    payload = payload_factory()
    assert payload.feed([]) == []
    assert payload.wait() == (0, "")
    assert list(payload.outdir.iterdir()) == []


def test_crash_at_range_exits_3_without_answering(inputs: list[InputFile], payload_factory: type[Payload]) -> None:
    payload = payload_factory("--crash-at-range", "2")
    reports = payload.feed([claimed(inputs[0], 0, 4), claimed(inputs[0], 5, 9)], finish=False)
    assert [type(r) for r in reports] == [OutputReport]
    code, stderr = payload.wait()
    assert code == 3 and "crashing at range 2" in stderr
    assert payload.channel.closed


def test_hang_at_range_goes_silent(inputs: list[InputFile], payload_factory: type[Payload]) -> None:
    payload = payload_factory("--hang-at-range", "1")
    received = payload.next_message()
    assert received is not None and isinstance(received[1], ReadyForEvents)
    payload.channel.send(received[0], claimed(inputs[0], 0, 4).dump())
    assert payload.next_message(timeout_s=0.5) is None
    assert payload.process.poll() is None
    assert "hanging at range 1" in payload.stop()


def test_unreadable_input_reports_and_exits_2(tmp_path: Path, inputs: list[InputFile],
                                               payload_factory: type[Payload]) -> None:
    missing = claimed(inputs[0], 0, 4, pfn=(tmp_path / "gone.root").as_uri())
    payload = payload_factory()
    reports = payload.feed([missing], finish=False)
    assert len(reports) == 1 and isinstance(reports[0], ErrorReport)
    assert reports[0].code == "ERR_TOYSIM_INPUT" and "gone.root" in reports[0].message
    code, stderr = payload.wait()
    assert code == 2 and stderr.count("\n") == 1 and "gone.root" in stderr


def test_s3_pfn_is_refused_with_a_hint(inputs: list[InputFile], payload_factory: type[Payload]) -> None:
    payload = payload_factory()
    reports = payload.feed([claimed(inputs[0], 0, 4, pfn="s3://bucket/EVNT.root")], finish=False)
    assert isinstance(reports[0], ErrorReport) and "pre-signed" in reports[0].message
    assert payload.wait()[0] == 2


def test_without_a_channel_toysim_exits_2_with_one_line() -> None:
    env = {k: v for k, v in os.environ.items() if k != CHANNEL_ENV}
    done = subprocess.run([str(TOYSIM)], env=env, capture_output=True, text=True, timeout=ANSWER_S)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and CHANNEL_ENV in done.stderr


def test_a_silent_runner_makes_toysim_give_up(tmp_path: Path) -> None:
    address = channel_address(tmp_path)
    with RunnerChannel(address) as channel:
        done = subprocess.run([str(TOYSIM), "--runner-timeout", "0.3"], env={**os.environ, CHANNEL_ENV: address},
                              capture_output=True, text=True, timeout=ANSWER_S, cwd=tmp_path)
        assert channel.recv(1) is not None  # it did ask
    assert done.returncode == 4 and "no answer from the runner" in done.stderr


class _RangeRequestHandler(http.server.BaseHTTPRequestHandler):
    """Serves one folder with single byte ranges (as object stores do), counting the bytes sent."""

    folder: Path
    sent: list[int]

    def _file(self) -> Path | None:
        path = self.folder / self.path.lstrip("/")
        return path if path.is_file() else None

    def do_HEAD(self) -> None:  # noqa: N802 (the handler API's name)
        path = self._file()
        if path is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(path.stat().st_size))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()

    def do_GET(self) -> None:  # noqa: N802 (the handler API's name)
        path = self._file()
        match = re.match(r"bytes=(\d+)-(\d+)", self.headers.get("Range", ""))
        if path is None or match is None:
            self.send_error(404 if path is None else 416)
            return
        data = path.read_bytes()
        start, stop = int(match.group(1)), min(int(match.group(2)), len(data) - 1)
        body = data[start:stop + 1]  # only the first range of a multi-range request: uproot falls back
        self.send_response(206)
        self.send_header("Content-Range", f"bytes {start}-{stop}/{len(data)}")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        self.sent.append(len(body))

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (the handler API's name)
        return


def test_http_input_reads_only_what_the_range_needs(inputs: list[InputFile], payload_factory: type[Payload]) -> None:
    item = inputs[0]
    local = Path(item.url.removeprefix("file://"))
    handler = type("Handler", (_RangeRequestHandler,), {"folder": local.parent, "sent": []})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/{local.name}"
        payload = payload_factory()
        reports = payload.feed([claimed(item, 1100, 1109, pfn=url)])
        assert payload.wait()[0] == 0
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
    assert isinstance(reports[0], OutputReport)
    assert read_output(reports[0].path)["event_number"].tolist() == list(range(1101, 1111))
    assert 0 < sum(handler.sent) < 0.75 * local.stat().st_size

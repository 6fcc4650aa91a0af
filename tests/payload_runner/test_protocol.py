"""Golden tests of the payload protocol: the exact strings of seed 001, round trips, malformed messages."""

from __future__ import annotations

import json

import pytest

from payload_runner.errors import ProtocolError
from payload_runner.protocol import (
    ErrorReport,
    EventRangeMessage,
    NoMoreEvents,
    OutputReport,
    ReadyForEvents,
    parse_payload_message,
    parse_runner_message,
)

# Seed 001 ("Pilot-AthenaMP Communications"), the range as the pilot printed it (a Python repr) ...
SEED_RANGE_REPR = ("[{u'eventRangeID': u'4017466-2244492272-56108538-1001-3', u'LFN': "
                   "u'EVNT.01461041._000001.pool.root.1', u'lastEvent': 1001, u'startEvent': 1001, "
                   "u'GUID': u'BABC9918-743B-C742-9049-FC3DCC8DD774'}]")
# ... and the same dict as it travels on the wire: JSON, keys in the seed's order.
SEED_RANGE_JSON = ('[{"eventRangeID": "4017466-2244492272-56108538-1001-3", "LFN": '
                   '"EVNT.01461041._000001.pool.root.1", "lastEvent": 1001, "startEvent": 1001, '
                   '"GUID": "BABC9918-743B-C742-9049-FC3DCC8DD774"}]')
SEED_OUTPUT_PATH = ("/tmp/Panda_Pilot_29177_1408268256/PandaJob_2244492272_1408268264/"
                    "athenaMP-workers-AtlasG4Tf-sim/worker_3/panda.jeditest.HITS."
                    "ad4aeafe-8d4e-4d5b-b7bc-6525549d86bd.000001.HITS.pool.root."
                    "1.4017466-2244492272-56108538-1001-3")
SEED_OUTPUT = f"{SEED_OUTPUT_PATH},4017466-2244492272-56108538-1001-3,CPU:599,WALL:600"


def test_seed_range_parses_with_athenamp_numbering() -> None:
    message = parse_runner_message(SEED_RANGE_JSON)
    assert message == EventRangeMessage(range_id="4017466-2244492272-56108538-1001-3",
                                        lfn="EVNT.01461041._000001.pool.root.1",
                                        guid="BABC9918-743B-C742-9049-FC3DCC8DD774",
                                        start_event=1001, last_event=1001, pfn=None, scope=None)
    assert isinstance(message, EventRangeMessage)
    assert (message.first_entry, message.last_entry, message.events) == (1000, 1000, 1)
    # dump writes every key, in AthenaMP's spelling, whatever the producer left out
    assert json.loads(message.dump()) == [{
        "eventRangeID": "4017466-2244492272-56108538-1001-3", "LFN": "EVNT.01461041._000001.pool.root.1",
        "GUID": "BABC9918-743B-C742-9049-FC3DCC8DD774", "startEvent": 1001, "lastEvent": 1001,
        "PFN": None, "scope": None}]


def test_seed_range_as_python_repr_is_refused_and_quoted() -> None:
    with pytest.raises(ProtocolError) as caught:
        parse_runner_message(SEED_RANGE_REPR)
    assert "JSON list" in str(caught.value)
    assert "[{u'eventRangeID': u'4017466" in str(caught.value)
    assert caught.value.message == SEED_RANGE_REPR


def test_seed_output_report_in_the_old_form() -> None:
    report = parse_payload_message(SEED_OUTPUT)
    assert report == OutputReport(path=SEED_OUTPUT_PATH, range_id="4017466-2244492272-56108538-1001-3",
                                  cpu_s=599, wall_s=600)
    assert isinstance(report, OutputReport) and report.legacy
    assert isinstance(report.cpu_s, int) and isinstance(report.wall_s, int)
    assert report.dump() == f"{SEED_OUTPUT_PATH},ID:4017466-2244492272-56108538-1001-3,CPU:599,WALL:600"
    new = OutputReport.parse(report.dump())
    assert new == report and not new.legacy


def test_ready_and_no_more_events_are_exact() -> None:
    assert parse_payload_message("Ready for events") == ReadyForEvents()
    assert ReadyForEvents().dump() == "Ready for events"
    assert parse_runner_message("No more events") == NoMoreEvents()
    assert NoMoreEvents().dump() == "No more events"


def test_from_claimed_converts_ledger_entries_to_athenamp_events() -> None:
    message = EventRangeMessage.from_claimed("demo.1.0-9", "EVNT.demo._000001.root",
                                             "BABC9918-743B-C742-9049-FC3DCC8DD774", 0, 9,
                                             "file:///data/EVNT.demo._000001.root", "mc23")
    assert (message.start_event, message.last_event) == (1, 10)
    assert (message.first_entry, message.last_entry, message.events) == (0, 9, 10)
    assert message.dump() == (
        '[{"eventRangeID": "demo.1.0-9", "LFN": "EVNT.demo._000001.root", '
        '"GUID": "BABC9918-743B-C742-9049-FC3DCC8DD774", "startEvent": 1, "lastEvent": 10, '
        '"PFN": "file:///data/EVNT.demo._000001.root", "scope": "mc23"}]')


@pytest.mark.parametrize(("first", "last"), [(-1, 5), (3, 2), (True, 4)])
def test_from_claimed_refuses_bad_entries(first: int, last: int) -> None:
    with pytest.raises(ValueError, match="r1"):
        EventRangeMessage.from_claimed("r1", "f", "g", first, last, None)


CANONICAL_RUNNER = [
    "No more events",
    '[{"eventRangeID": "demo.1.0-9", "LFN": "EVNT.demo._000001.root", "GUID": "G", "startEvent": 1, '
    '"lastEvent": 10, "PFN": "/data/EVNT.demo._000001.root", "scope": null}]',
    '[{"eventRangeID": "4017466-2244492272-56108538-1001-3", "LFN": "EVNT.01461041._000001.pool.root.1", '
    '"GUID": "BABC9918-743B-C742-9049-FC3DCC8DD774", "startEvent": 1001, "lastEvent": 1001, '
    '"PFN": "https://host:8443/data/EVNT.01461041._000001.pool.root.1?X-Amz-Signature=ab", "scope": "mc15"}]',
]
CANONICAL_PAYLOAD = [
    "Ready for events",
    f"{SEED_OUTPUT_PATH},ID:4017466-2244492272-56108538-1001-3,CPU:599,WALL:600",
    "/work/out/HITS.demo.1.0-9.root,ID:demo.1.0-9,CPU:0.25,WALL:1.5",
    "/work/out with space/HITS.root,ID:r+1,CPU:0,WALL:1e-05",
    "ERR_ATHENAMP_PROCESS 4017466-2244492272-56108538-1001-3: Failed to process event range",
    "ERR_TOYSIM_INPUT demo.1.0-9: cannot open file:///x: No such file: really",
    "ERR_TE_FATAL demo.1.0-9: ",
    "ERR_X r: two\nlines",
]


@pytest.mark.parametrize("text", CANONICAL_RUNNER)
def test_runner_messages_round_trip(text: str) -> None:
    assert parse_runner_message(text).dump() == text


@pytest.mark.parametrize("text", CANONICAL_PAYLOAD)
def test_payload_messages_round_trip(text: str) -> None:
    assert parse_payload_message(text).dump() == text


def test_error_report_fields() -> None:
    report = parse_payload_message("ERR_ATHENAMP_PROCESS 4017466-2244492272-56108538-1001-3: a: b: c")
    assert report == ErrorReport(code="ERR_ATHENAMP_PROCESS", range_id="4017466-2244492272-56108538-1001-3",
                                 message="a: b: c")
    assert ErrorReport.parse("ERR_X r1:") == ErrorReport("ERR_X", "r1", "")
    assert ErrorReport.parse("ERR_X r1:no space") == ErrorReport("ERR_X", "r1", "no space")


def test_output_report_numbers_keep_their_kind() -> None:
    report = OutputReport.parse("/o/f.root,ID:r1,CPU:12,WALL:12.75")
    assert (report.cpu_s, report.wall_s) == (12, 12.75)
    assert isinstance(report.cpu_s, int) and isinstance(report.wall_s, float)
    assert OutputReport("/o/f.root", "r1", 0.1 + 0.2, 3).dump() == "/o/f.root,ID:r1,CPU:0.30000000000000004,WALL:3"


MALFORMED_PAYLOAD = [
    ("", "a payload message is"),
    ("ready for events", "a payload message is"),
    ("Ready for events\n", "a payload message is"),
    ("relative/out.root,ID:r1,CPU:1,WALL:1", "a payload message is"),
    ("/out,1.root,ID:r1,CPU:1,WALL:1", "4 comma-separated fields, got 5"),
    ("/out.root,ID:r1,CPU:1", "got 3"),
    ("/out.root,ID:r1,WALL:1,CPU:1", "'CPU:<s>'"),
    ("/out.root,ID:r1,CPU:1,Wall:1", "'WALL:<s>'"),
    ("/out.root,ID:r1,CPU:-1,WALL:1", "non-negative number"),
    ("/out.root,ID:r1,CPU:nan,WALL:1", "non-negative number"),
    ("/out.root,ID:r1,CPU:1,WALL:", "non-negative number"),
    ("/out.root,ID:r1,CPU:1e999,WALL:1", "finite"),
    ("/out.root,ID:,CPU:1,WALL:1", "event range id ''"),
    ("/out.root,r 1,CPU:1,WALL:1", "event range id 'r 1'"),
    ("/out.root,ID:ID:r1,CPU:1,WALL:1", "event range id 'ID:r1'"),
    ("ERR_ r1: x", "error code 'ERR_'"),
    ("ERR_lower r1: x", "error code 'ERR_lower'"),
    ("ERR_X r1 x", "an error report is"),
    ("ERR_X: x", "an error report is"),
    ("ERR_X  r1: x", "an error report is"),
]


@pytest.mark.parametrize(("text", "reason"), MALFORMED_PAYLOAD)
def test_malformed_payload_messages_are_refused_and_quoted(text: str, reason: str) -> None:
    with pytest.raises(ProtocolError) as caught:
        parse_payload_message(text)
    assert reason in caught.value.reason
    assert repr(text) in str(caught.value)


def _range(**changes: object) -> str:
    item: dict[str, object] = {"eventRangeID": "r1", "LFN": "f.root", "GUID": "G", "startEvent": 1,
                               "lastEvent": 2, "PFN": "/f.root", "scope": None}
    item.update(changes)
    return json.dumps([{k: v for k, v in item.items() if v is not ...}])


MALFORMED_RUNNER = [
    ("", "'No more events' or a JSON list"),
    ("no more events", "'No more events' or a JSON list"),
    ('{"eventRangeID": "r1"}', "'No more events' or a JSON list"),
    ("[", "JSON list holding one range (Expecting value"),
    ("[]", "exactly one range object"),
    (f"[{_range()[1:-1]}, {_range()[1:-1]}]", "exactly one range object"),
    ('["r1"]', "exactly one range object"),
    (_range(GUID=...), "lacks GUID"),
    (_range(startEvent=..., lastEvent=...), "lacks startEvent, lastEvent"),
    (_range(extra=1), "unknown keys extra"),
    (_range(startEvent=0), "startEvent must be an integer >= 1"),
    (_range(startEvent="1"), "startEvent must be an integer >= 1"),
    (_range(lastEvent=2.0), "lastEvent must be an integer >= 1"),
    (_range(lastEvent=True), "lastEvent must be an integer >= 1"),
    (_range(startEvent=3, lastEvent=2), "lastEvent 2 is before startEvent 3"),
    (_range(eventRangeID="a,b"), "event range id 'a,b'"),
    (_range(eventRangeID=7), "event range id 7"),
    (_range(LFN=""), "LFN must be a non-empty string"),
    (_range(PFN=3), "PFN must be a non-empty string or absent"),
    ('[{"eventRangeID": "r1", "LFN": "f", "GUID": "G", "startEvent": NaN, "lastEvent": 2}]', "NaN is not"),
    ("[" * 100_000, "JSON list holding one range"),
]


@pytest.mark.parametrize(("text", "reason"), MALFORMED_RUNNER)
def test_malformed_runner_messages_are_refused_and_quoted(text: str, reason: str) -> None:
    with pytest.raises(ProtocolError) as caught:
        parse_runner_message(text)
    assert reason in caught.value.reason
    assert caught.value.message == text
    assert repr(text[:200]) in str(caught.value)


def test_a_huge_message_is_quoted_shortened() -> None:
    text = "/x," + "y" * 10_000
    with pytest.raises(ProtocolError) as caught:
        parse_payload_message(text)
    shown = str(caught.value)
    assert len(shown) < 400 and "(10003 characters)" in shown


def test_constructors_refuse_what_could_not_be_parsed_back() -> None:
    with pytest.raises(ProtocolError, match="holds a comma"):
        OutputReport("/a,b.root", "r1", 1, 1)
    with pytest.raises(ProtocolError, match="must be finite and non-negative"):
        OutputReport("/a.root", "r1", -1, 1)
    with pytest.raises(ProtocolError, match="event range id 'r:1'"):
        ErrorReport("ERR_X", "r:1", "m")
    with pytest.raises(ProtocolError, match="lastEvent 1 is before startEvent 2"):
        EventRangeMessage("r1", "f", "g", 2, 1)


def test_parsers_want_text() -> None:
    with pytest.raises(TypeError, match="bytes"):
        parse_payload_message(b"Ready for events")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="bytes"):
        parse_runner_message(b"No more events")  # type: ignore[arg-type]

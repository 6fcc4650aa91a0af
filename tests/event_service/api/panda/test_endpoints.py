"""The PanDA-compatible endpoints: every method's request and reply forms, and malformed calls refused whole."""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode

import pytest
from fastapi.testclient import TestClient

from event_service.api.app import create_app
from event_service.api.errors import PandaRequestError
from event_service.api.panda.ids import PandaRangeId
from event_service.api.panda.jobs import jobs_of_task
from event_service.api.panda.site import store_id
from event_service.ledger import Ledger
from event_service.spec import TaskSpec
from event_service.statuses import RangeStatus

S = RangeStatus
PANDA = "/server/panda"
TOKEN = "panda-secret"
JSON = {"Accept": "application/json", "Authorization": f"Bearer {TOKEN}"}
STORE = "s3://esbucket/ranges"
FAILOVER = "s3://esbackup/ranges"


def spec(name: str = "pt", queues: tuple[str, ...] = ("ES_TEST",), store: str = STORE) -> TaskSpec:
    return TaskSpec.parse({
        "name": name, "events_per_range": 4, "payload": {"command": "toysim --cost-ms 1"}, "max_attempts": 2,
        "inputs": [{"lfn": "EVNT.1.root", "url": "file:///data/EVNT.1.root", "events": 10},
                   {"lfn": "EVNT.2.root", "url": "file:///data/EVNT.2.root", "events": 8}],
        "object_store": {"url": store, "endpoint_url": "http://127.0.0.1:9000",
                         "failover": {"url": FAILOVER, "endpoint_url": "http://127.0.0.1:9001"}},
        "merge": {"output_url": "file:///results"}, "panda": {"queues": list(queues), "zip_time_gap": 30},
    })


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[Ledger]:
    with Ledger(f"sqlite:///{tmp_path}/ledger.sqlite") as opened:
        opened.create_task(spec())
        yield opened


@pytest.fixture
def client(ledger: Ledger) -> Iterator[TestClient]:
    with TestClient(create_app(ledger, "admin-secret", panda_token=TOKEN)) as opened:
        yield opened


def call(client: TestClient, method: str, fields: dict[str, Any], **headers: str) -> dict[str, Any]:
    """A form-encoded POST, as the pilot sends it; the JSON reply."""
    reply = client.post(f"{PANDA}/{method}", content=urlencode(fields),
                        headers={**JSON, "Content-Type": "application/x-www-form-urlencoded", **headers})
    body: dict[str, Any] = reply.json()
    return body


def get_job(client: TestClient, queue: str = "ES_TEST") -> dict[str, Any]:
    return call(client, "getJob", {"siteName": queue, "computingElement": queue, "prodSourceLabel": "managed",
                                   "node": "wn01", "diskSpace": "20000"})


def ranges_of(client: TestClient, job: dict[str, Any], n: int) -> list[dict[str, Any]]:
    reply = call(client, "getEventRanges", {"pandaID": job["PandaID"], "jobsetID": job["jobsetID"],
                                             "taskID": job["taskID"], "nRanges": n})
    assert reply["StatusCode"] == 0
    ranges: list[dict[str, Any]] = reply["eventRanges"]
    return ranges


def statuses(ledger: Ledger) -> dict[str, int]:
    return {str(k): v for k, v in ledger.status("pt").counts.items() if v}


def test_get_job_hands_out_an_event_service_consumer_job(client: TestClient, ledger: Ledger) -> None:
    job = get_job(client)
    task_id = ledger.task("pt").id
    assert job["StatusCode"] == 0 and job["eventService"] == "True"
    assert (job["jobsetID"], job["taskID"], job["prodSourceLabel"]) == (task_id, task_id, "managed")
    assert job["transformation"].endswith("/eventservice-payload")
    assert job["jobPars"] == "toysim --cost-ms 1 PILOT_EVENTRANGECHANNEL"
    assert job["inFiles"] == "" and job["logFile"] == "" and job["ddmEndPointOut"] == f"ES_OS_{store_id(STORE)}"
    second = get_job(client)
    assert second["PandaID"] == job["PandaID"] + 1
    [first, _] = jobs_of_task(ledger, task_id)
    assert (first.queue, first.node, first.state) == ("ES_TEST", "wn01", "sent")


def test_get_job_says_20_when_the_queue_has_nothing(client: TestClient, ledger: Ledger) -> None:
    reply = get_job(client, "OTHER_QUEUE")
    assert reply["StatusCode"] == 20 and "no jobs for queue 'OTHER_QUEUE'" in reply["errorDialog"]
    ledger.cancel("pt")
    assert get_job(client)["StatusCode"] == 20


def test_a_task_on_a_local_store_is_not_handed_to_pilots_and_says_why(ledger: Ledger, client: TestClient) -> None:
    ledger.create_task(spec("local", ("LOCAL_Q",), store="file:///objects"))
    reply = get_job(client, "LOCAL_Q")
    assert reply["StatusCode"] == 20 and "local directory" in reply["errorDialog"]


def test_replies_are_url_encoded_without_accept_json_and_json_bodies_and_gzip_are_read(client: TestClient) -> None:
    fields = {"siteName": "ES_TEST", "computingElement": "ES_TEST", "node": "wn02"}
    auth = {"Authorization": f"Bearer {TOKEN}"}
    reply = client.post(f"{PANDA}/getJob", content=urlencode(fields), headers=auth)
    form = dict(parse_qsl(reply.text))
    assert reply.headers["content-type"].startswith("application/x-www-form-urlencoded")
    assert form["StatusCode"] == "0" and form["eventService"] == "True"
    as_json = client.post(f"{PANDA}/getJob", content=json.dumps(fields),
                          headers={**JSON, "Content-Type": "application/json"}).json()
    assert as_json["PandaID"] == int(form["PandaID"]) + 1
    zipped = client.post(f"{PANDA}/getJob", content=gzip.compress(urlencode(fields).encode()),
                         headers={**JSON, "Content-Encoding": "gzip"}).json()
    assert zipped["PandaID"] == as_json["PandaID"] + 1


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic x"}])
def test_calls_without_the_panda_or_admin_token_are_refused(client: TestClient, ledger: Ledger,
                                                            headers: dict[str, str]) -> None:
    reply = client.post(f"{PANDA}/getJob", content="siteName=ES_TEST", headers={"Accept": "application/json",
                                                                                 **headers})
    assert reply.status_code == 401 and reply.json()["StatusCode"] == 30
    assert jobs_of_task(ledger, ledger.task("pt").id) == []
    admin = call(client, "getJob", {"siteName": "ES_TEST"}, Authorization="Bearer admin-secret")
    assert admin["StatusCode"] == 0


def test_event_ranges_carry_panda_ids_and_map_back_to_the_ledger(client: TestClient, ledger: Ledger) -> None:
    job = get_job(client)
    got = ranges_of(client, job, 3)
    task_id = ledger.task("pt").id
    assert [r["eventRangeID"] for r in got] == [f"{task_id}-{job['PandaID']}-1-{first}-1" for first in (1, 5, 9)]
    assert got[2] == {"eventRangeID": f"{task_id}-{job['PandaID']}-1-9-1", "LFN": "EVNT.1.root",
                      "GUID": ledger.task_spec("pt").inputs[0].guid, "scope": "events", "startEvent": 9,
                      "lastEvent": 10, "PFN": "file:///data/EVNT.1.root"}
    assert ledger.range_info("pt", "pt.1.8-9").worker == f"panda-{job['PandaID']}"
    assert len(ranges_of(client, job, 100)) == 2  # what is left
    assert ranges_of(client, job, 5) == []


def archive(lfn: str, ids: list[str], objstore: int | None = None) -> dict[str, Any]:
    return {"zipFile": {"lfn": lfn, "objstoreID": objstore or store_id(STORE), "fsize": 10240,
                        "adler32": "0a0b0c0d", "numEvents": len(ids), "pathConvention": 1000},
            "eventRanges": [{"eventRangeID": i, "eventStatus": "finished"} for i in ids]}


def update(client: TestClient, version: int, reports: list[Any]) -> dict[str, Any]:
    return call(client, "updateEventRanges", {"version": version, "eventRanges": json.dumps(reports)})


def test_version_1_reports_record_the_archive_and_each_range_member(client: TestClient, ledger: Ledger) -> None:
    job = get_job(client)
    ids = [r["eventRangeID"] for r in ranges_of(client, job, 3)]
    reply = update(client, 1, [archive("EventService_premerge_a.tar", ids[:2]),
                               archive("EventService_premerge_b.tar", ids[2:], store_id(FAILOVER))])
    assert reply == {"StatusCode": 0, "Returns": [True, True, True], "Command": {str(job["PandaID"]): None}}
    first = ledger.range_info("pt", "pt.1.0-3").output
    assert first is not None
    assert (first.key, first.member, first.store, first.size) == (
        "ES_TEST/EventService_premerge_a.tar", ids[0], None, 10240)
    third = ledger.range_info("pt", "pt.1.8-9").output
    assert third is not None and third.store == FAILOVER
    # the same report again is a duplicate, still true; the pilot may resend after a lost reply
    assert update(client, 1, [archive("EventService_premerge_a.tar", ids[:2])])["Returns"] == [True, True]


def test_version_0_reports_failures_and_encodes_returns_as_json_text(client: TestClient, ledger: Ledger) -> None:
    job = get_job(client)
    ids = [r["eventRangeID"] for r in ranges_of(client, job, 2)]
    reply = update(client, 0, [{"eventRangeID": ids[0], "eventStatus": "failed", "errorCode": 1220,
                                "errorDiag": "payload crashed"},
                               {"eventRangeID": ids[1], "eventStatus": "running"}])
    assert json.loads(reply["Returns"]) == [True, True]
    assert json.loads(reply["Command"]) == {str(job["PandaID"]): None}
    history = ledger.transitions("pt", "pt.1.0-3")
    assert (history[-1]["to_status"], history[-2]["error_code"], history[-2]["error"]) == (
        "ready", "1220", "payload crashed")
    assert ledger.range_info("pt", "pt.1.4-7").status == S.RUNNING
    finished_without_output = update(client, 0, [{"eventRangeID": ids[1], "eventStatus": "finished"}])
    assert json.loads(finished_without_output["Returns"]) == [False]
    assert "needs its output" in finished_without_output["errorDialog"]


def test_bad_reports_are_refused_each_and_change_nothing(client: TestClient, ledger: Ledger) -> None:
    job = get_job(client)
    ids = [r["eventRangeID"] for r in ranges_of(client, job, 2)]
    other = get_job(client)
    before = statuses(ledger)
    task_id = ledger.task("pt").id
    bad = [
        "not an object",
        {"eventRangeID": "pt.1.0-3", "eventStatus": "finished"},  # a ledger id, not PanDA's
        {"eventRangeID": ids[0], "eventStatus": "exploded"},
        {"eventRangeID": f"{task_id}-{job['PandaID']}-1-2-1", "eventStatus": "failed"},  # no range starts at 2
        {"eventRangeID": f"{task_id}-{job['PandaID']}-7-1-1", "eventStatus": "failed"},  # no file 7
        {"eventRangeID": f"{task_id}-{other['PandaID']}-1-1-1", "eventStatus": "failed"},  # held by the first job
        {"eventRangeID": f"{task_id}-999999-1-1-1", "eventStatus": "failed"},  # no such job
        {"eventRangeID": f"{task_id}-{job['PandaID']}-1-1-7", "eventStatus": "failed"},  # a stale attempt
    ]
    reply = update(client, 0, bad)
    assert json.loads(reply["Returns"]) == [False] * len(bad)
    for words in ("a range report is an object", "is not <task>-<PandaID>", "eventStatus 'exploded'",
                  "no range of task 'pt' starts at event 2", "has 2 input files, not 7", "not with 'panda-",
                  "no consumer job with PandaID 999999"):
        assert words in reply["errorDialog"], words
    wrong_store = update(client, 1, [archive("x.tar", ids[:1], objstore=12345)])
    assert wrong_store["Returns"] == [False] and "objstoreID 12345 is not a store of task 'pt'" in \
        wrong_store["errorDialog"]
    bad_checksum = update(client, 1, [{**archive("x.tar", ids[:1]), "zipFile": {
        **archive("x.tar", ids[:1])["zipFile"], "adler32": "nothex"}}])
    assert bad_checksum["Returns"] == [False]
    assert statuses(ledger) == before


@pytest.mark.parametrize(("fields", "message"), [
    ({"version": 0}, "field 'eventRanges' is required"),
    ({"version": 0, "eventRanges": "[{"}, "field 'eventRanges' is not valid JSON"),
    ({"version": 0, "eventRanges": '{"a": 1}'}, "must be a JSON list"),
    ({"version": 2, "eventRanges": "[]"}, "field 'version' must be between 0 and 1"),
    ({"version": 1, "eventRanges": '[{"zipFile": {}}]'}, "a version 1 report is an object with a list"),
    ({"version": 0, "eventRanges": json.dumps([{}] * 1001)}, "at most 1000 a call"),
])
def test_malformed_update_calls_fail_whole_with_status_30(client: TestClient, ledger: Ledger,
                                                          fields: dict[str, Any], message: str) -> None:
    before = statuses(ledger)
    reply = call(client, "updateEventRanges", fields)
    assert reply["StatusCode"] == 30 and message in reply["errorDialog"]
    assert statuses(ledger) == before


@pytest.mark.parametrize(("method", "fields", "message"), [
    ("getJob", {}, "field 'siteName' is required"),
    ("getJob", {"siteName": "x" * 300}, "longer than 255"),
    ("updateJob", {"jobId": "abc", "state": "running"}, "field 'jobId' must be an integer"),
    ("updateJob", {"jobId": 1, "state": "exploded"}, "state 'exploded' is not one of"),
    ("updateJob", {"jobId": 999, "state": "running"}, "no consumer job with PandaID 999"),
    ("getEventRanges", {"pandaID": 1, "taskID": 99, "nRanges": 1}, "taskID 99 does not match PandaID 1"),
    ("getEventRanges", {"pandaID": 1, "nRanges": 0}, "field 'nRanges' must be between 1 and 1000"),
    ("getEventRanges", {"jobsetID": 1}, "field 'pandaID' is required"),
])
def test_malformed_calls_name_the_field(client: TestClient, ledger: Ledger, method: str, fields: dict[str, Any],
                                        message: str) -> None:
    get_job(client)
    before = statuses(ledger)
    reply = call(client, method, fields)
    assert reply["StatusCode"] == 30 and message in reply["errorDialog"], reply
    assert statuses(ledger) == before


def test_undecodable_bodies_and_unknown_methods_are_refused(client: TestClient) -> None:
    assert client.post(f"{PANDA}/getJob", content=b"\x1f\x8b\x08garbage", headers=JSON).json()["StatusCode"] == 30
    assert "not UTF-8" in client.post(f"{PANDA}/getJob", content=b"\xff\xfe", headers=JSON).json()["errorDialog"]
    assert "must be an object" in client.post(f"{PANDA}/getJob", content=b"[1]", headers={
        **JSON, "Content-Type": "application/json"}).json()["errorDialog"]
    unknown = client.post(f"{PANDA}/getSecrets", headers=JSON)
    assert unknown.status_code == 404 and "unknown PanDA method 'getSecrets'" in unknown.json()["errorDialog"]


def test_update_job_heartbeats_and_a_final_state_releases_what_the_job_holds(client: TestClient,
                                                                             ledger: Ledger) -> None:
    job = get_job(client)
    ranges_of(client, job, 2)
    lease = ledger.transaction(lambda conn: conn.exec_driver_sql(
        "SELECT max(lease_expires) FROM es_ranges").scalar())
    beat = call(client, "updateJob", {"jobId": job["PandaID"], "state": "running", "node": "wn01"})
    assert beat == {"StatusCode": 0, "command": "NULL"}
    assert ledger.transaction(lambda conn: conn.exec_driver_sql(
        "SELECT min(lease_expires) FROM es_ranges WHERE worker IS NOT NULL").scalar()) >= lease
    final = call(client, "updateJob", {"jobId": job["PandaID"], "state": "failed", "pilotErrorCode": "1144",
                                       "pilotErrorDiag": "killed"})
    assert final["StatusCode"] == 0
    assert statuses(ledger) == {"ready": 5}
    [row] = jobs_of_task(ledger, ledger.task("pt").id)
    assert (row.state, row.error_code, row.error) == ("failed", "1144", "killed")
    assert ranges_of(client, job, 2) == []  # an ended job gets nothing more
    again = call(client, "updateJob", {"jobId": job["PandaID"], "state": "finished"})
    assert again["StatusCode"] == 30 and "already ended failed" in again["errorDialog"]


def test_a_cancelled_task_tells_its_jobs_tobekilled(client: TestClient, ledger: Ledger) -> None:
    job = get_job(client)
    ids = [r["eventRangeID"] for r in ranges_of(client, job, 1)]
    ledger.cancel("pt")
    assert call(client, "updateJob", {"jobId": job["PandaID"], "state": "running"})["command"] == "tobekilled"
    reply = update(client, 1, [archive("a.tar", ids)])
    assert reply["Returns"] == [False] and reply["Command"] == {str(job["PandaID"]): "tobekilled"}


def test_check_events_availability_counts_ready_ranges(client: TestClient, ledger: Ledger) -> None:
    job = get_job(client)
    ranges_of(client, job, 2)
    reply = call(client, "checkEventsAvailability", {"pandaID": job["PandaID"], "jobsetID": job["jobsetID"],
                                                     "taskID": job["taskID"]})
    assert reply == {"StatusCode": 0, "nEventRanges": 3}


def test_queue_and_storage_descriptions_point_es_events_at_the_task_store(client: TestClient) -> None:
    queue = client.get(f"{PANDA}/queuedata/ES_TEST").json()
    name, backup = f"ES_OS_{store_id(STORE)}", f"ES_OS_{store_id(FAILOVER)}"
    assert (queue["nickname"], queue["state"], queue["zip_time_gap"]) == ("ES_TEST", "ACTIVE", 30)
    assert queue["astorages"]["es_events"] == [name] and queue["astorages"]["es_failover"] == [backup]
    assert queue["acopytools"]["es_events"] == ["s3"] and queue["acopytools_schemas"]["es_events"] == ["http"]
    storage = client.get(f"{PANDA}/storagedata").json()
    assert set(storage) == {name, backup}
    assert storage[name]["id"] == store_id(STORE) and storage[name]["is_deterministic"] is False
    assert storage[name]["arprotocols"]["write_lan"][0] | {} == {
        "endpoint": "http://127.0.0.1:9000", "path": "/esbucket/ranges", "flavour": "S3", "id": store_id(STORE)}
    assert set(client.get(f"{PANDA}/schedconfig").json()) == {"ES_TEST"}
    assert client.get(f"{PANDA}/queuedata/NOBODY").json()["astorages"] == {}
    assert client.get(f"{PANDA}/queuedata/bad%20name").status_code == 404


def test_panda_range_ids_round_trip_and_refuse_garbage() -> None:
    ident = PandaRangeId.parse("12-345-2-41-3")
    assert (ident.task_id, ident.panda_id, ident.file_number, ident.start_event, ident.attempt) == (12, 345, 2, 41, 3)
    assert str(ident) == "12-345-2-41-3"
    assert PandaRangeId.from_ledger(12, 345, "pt.2.40-49", 3) == ident
    for garbage in ("12-345-2-41", "a-b-c-d-e", "12-345-0-41-3", "12-345-2-0-3", 7, None, "1-2-3-4-5-6"):
        with pytest.raises(PandaRequestError):
            PandaRangeId.parse(garbage)

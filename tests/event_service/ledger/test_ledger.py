"""The event ledger's state machine, on SQLite and on PostgreSQL."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from sqlalchemy import text

from event_service.ledger import Ledger
from event_service.ledger.errors import LedgerSchemaError, RangeNotFoundError, TaskExistsError, TaskNotFoundError
from event_service.messages import OutputRef, RangeUpdate
from event_service.spec import TaskSpec
from event_service.statuses import RangeStatus, TaskState
from tests.event_service.conftest import make_spec

S = RangeStatus
LATER = 10_000.0  # seconds: far enough ahead that every lease has lapsed


def out(key: str, adler32: str = "0a0b0c0d", size: int = 100) -> OutputRef:
    return OutputRef(key=key, adler32=adler32, size=size)


def finished(range_id: str, key: str | None = None, **kw: object) -> RangeUpdate:
    return RangeUpdate(range_id=range_id, status="finished", output=out(key or f"demo/{range_id}"),
                       cpu_s=1.5, wall_s=2.0, **kw)  # type: ignore[arg-type]


def failed(range_id: str, code: str = "ERR_PAYLOAD") -> RangeUpdate:
    return RangeUpdate(range_id=range_id, status="failed", error_code=code, error="segfault", cpu_s=0.5, wall_s=1.0)


def statuses(ledger: Ledger, task: str = "demo") -> dict[str, int]:
    return {str(k): v for k, v in ledger.status(task).counts.items() if v}


def snapshot(ledger: Ledger) -> list[tuple[object, ...]]:
    with ledger.engine.connect() as conn:
        rows = conn.execute(text("SELECT * FROM es_ranges ORDER BY id")).all()
        moves = conn.execute(text("SELECT count(*) FROM es_transitions")).scalar_one()
    return [tuple(r) for r in rows] + [(moves,)]


@pytest.fixture
def demo(ledger: Ledger) -> Iterator[Ledger]:
    ledger.create_task(make_spec(events=(25, 10), per_range=10, max_attempts=2))
    yield ledger


def test_create_task_makes_every_range_ready(demo: Ledger) -> None:
    status = demo.status("demo")
    assert (status.ranges, status.events_total, status.events_done) == (4, 35, 0)
    assert statuses(demo) == {"ready": 4}
    assert status.state == TaskState.RUNNING
    assert demo.task_spec("demo").inputs[0].lfn == "EVNT.demo._000001.root"


def test_create_task_is_atomic(ledger: Ledger, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = make_spec(name="big", events=(10_000,), per_range=1)
    original = TaskSpec.event_ranges

    def broken(self: TaskSpec) -> Iterator[object]:
        for n, plan in enumerate(original(self)):
            if n == 7_500:
                raise OSError("disk full while cutting ranges")
            yield plan

    monkeypatch.setattr(TaskSpec, "event_ranges", broken)
    with pytest.raises(OSError, match="disk full"):
        ledger.create_task(spec)
    with pytest.raises(TaskNotFoundError):
        ledger.task("big")
    assert snapshot(ledger) == [(0,)]
    monkeypatch.setattr(TaskSpec, "event_ranges", original)
    record, _ = ledger.create_task(spec)
    assert ledger.status("big").counts[S.READY] == record.n_ranges == 10_000


def test_duplicate_task_name_changes_nothing(demo: Ledger) -> None:
    before = snapshot(demo)
    with pytest.raises(TaskExistsError, match="'demo' already exists"):
        demo.create_task(make_spec(events=(99,)))
    assert snapshot(demo) == before


def test_claim_hands_out_ranges_in_order_with_a_lease(demo: Ledger) -> None:
    reply = demo.claim("demo", "w1", 3, host="node1")
    assert [r.range_id for r in reply.ranges] == ["demo.1.0-9", "demo.1.10-19", "demo.1.20-24"]
    assert [r.attempt for r in reply.ranges] == [1, 1, 1]
    assert reply.lease_seconds == 60 and reply.state == TaskState.RUNNING
    assert [r.range_id for r in demo.claim("demo", "w2", 10).ranges] == ["demo.2.0-9"]
    empty = demo.claim("demo", "w3", 10)
    assert empty.ranges == [] and empty.state == TaskState.RUNNING  # ranges are out, not done
    assert statuses(demo) == {"sent": 4}
    assert demo.status("demo").live_workers == 3


def test_finished_needs_the_holder_and_is_idempotent(demo: Ledger) -> None:
    demo.claim("demo", "w1", 2)
    first = demo.update("demo", "w1", [finished("demo.1.0-9"), RangeUpdate(range_id="demo.1.10-19",
                                                                            status="running")])
    assert [(r.result, r.status) for r in first] == [("accepted", S.FINISHED), ("accepted", S.RUNNING)]
    again = demo.update("demo", "w1", [finished("demo.1.0-9"), RangeUpdate(range_id="demo.1.10-19",
                                                                            status="running")])
    assert [r.result for r in again] == ["duplicate", "duplicate"]
    other = demo.update("demo", "w1", [finished("demo.1.0-9", key="demo/another-object")])[0]
    assert other.result == "rejected" and "not replaced" in (other.reason or "")
    stranger = demo.update("demo", "w9", [finished("demo.1.10-19")])[0]
    assert stranger.result == "rejected" and "never held" in (stranger.reason or "")
    row = {r.range_id: r for r in demo.finished_ranges("demo")}["demo.1.0-9"]
    assert (row.output_key, row.adler32, row.size, row.cpu_s, row.wall_s) == ("demo/demo.1.0-9", "0a0b0c0d",
                                                                               100, 1.5, 2.0)
    assert demo.status("demo").events_done == 10


def test_failed_goes_back_to_ready_then_fatal(demo: Ledger) -> None:
    demo.claim("demo", "w1", 1)
    assert demo.update("demo", "w1", [failed("demo.1.0-9")])[0].status == S.READY
    assert demo.update("demo", "w1", [failed("demo.1.0-9")])[0].result == "duplicate"
    # The failed range goes to the back of the queue, after the ranges never tried.
    assert [r.range_id for r in demo.claim("demo", "w2", 4).ranges] == [
        "demo.1.10-19", "demo.1.20-24", "demo.2.0-9", "demo.1.0-9"]
    last = demo.update("demo", "w2", [failed("demo.1.0-9", code="ERR_AGAIN")])[0]
    assert (last.result, last.status) == ("accepted", S.FATAL)  # max_attempts is 2
    moves = [(t["from_status"], t["to_status"], t["worker"], t["attempt"], t["error_code"])
             for t in demo.transitions("demo", "demo.1.0-9")]
    assert moves == [("ready", "sent", "w1", 1, None), ("sent", "failed", "w1", 1, "ERR_PAYLOAD"),
                     ("failed", "ready", None, 1, "ERR_PAYLOAD"), ("ready", "sent", "w2", 2, None),
                     ("sent", "failed", "w2", 2, "ERR_AGAIN"), ("failed", "fatal", None, 2, "ERR_AGAIN")]
    assert demo.transitions("demo", "demo.1.0-9")[1]["cpu_s"] == 0.5


def test_lapsed_lease_redispatches_and_counts_the_attempt(demo: Ledger) -> None:
    demo.claim("demo", "w1", 2)
    demo.heartbeat("demo", "w1")
    assert demo.expire_leases("demo", now=time.time() + 30) == 0  # within the lease
    assert demo.expire_leases("demo", now=time.time() + LATER) == 2
    again = demo.claim("demo", "w2", 4).ranges
    assert [(r.range_id, r.attempt) for r in again if r.range_id.startswith("demo.1.0") or
            r.range_id == "demo.1.10-19"] == [("demo.1.0-9", 2), ("demo.1.10-19", 2)]
    assert demo.expire_leases("demo", now=time.time() + LATER) == 4
    assert statuses(demo) == {"ready": 2, "fatal": 2}  # two ranges used both attempts
    fatal = demo.transitions("demo", "demo.1.0-9")[-1]
    assert (fatal["to_status"], fatal["error_code"]) == ("fatal", "lease_expired")


def test_late_finished_report_is_kept_without_duplicating(demo: Ledger) -> None:
    demo.claim("demo", "w1", 1)
    demo.expire_leases("demo", now=time.time() + LATER)
    demo.claim("demo", "w2", 4)  # w2 now holds demo.1.0-9 (attempt 2)
    late = demo.update("demo", "w1", [finished("demo.1.0-9", key="demo/from-w1")])[0]
    assert late.result == "accepted" and "late" in (late.reason or "")
    second = demo.update("demo", "w2", [finished("demo.1.0-9", key="demo/from-w2")])[0]
    assert second.result == "rejected" and "from-w1" in (second.reason or "")
    assert demo.update("demo", "w2", [failed("demo.1.0-9")])[0].result == "rejected"
    assert [r.output_key for r in demo.finished_ranges("demo")] == ["demo/from-w1"]


def test_late_failure_report_cannot_touch_a_redispatched_range(demo: Ledger) -> None:
    demo.claim("demo", "w1", 1)
    demo.expire_leases("demo", now=time.time() + LATER)
    demo.claim("demo", "w2", 4)
    stale = demo.update("demo", "w1", [failed("demo.1.0-9")])[0]
    assert stale.result == "rejected" and "'w2'" in (stale.reason or "")
    stale_attempt = RangeUpdate(range_id="demo.1.0-9", status="running", attempt=1)
    assert demo.update("demo", "w2", [stale_attempt])[0].result == "rejected"
    assert demo.update("demo", "w2", [RangeUpdate(range_id="demo.1.0-9", status="running", attempt=2)])[0].result \
        == "accepted"


def test_giving_back_an_unstarted_range_costs_no_attempt(demo: Ledger) -> None:
    demo.claim("demo", "w1", 2)
    demo.update("demo", "w1", [RangeUpdate(range_id="demo.1.10-19", status="running")])
    results = demo.update("demo", "w1", [RangeUpdate(range_id="demo.1.0-9", status="ready"),
                                          RangeUpdate(range_id="demo.1.10-19", status="ready")])
    assert [(r.result, r.status) for r in results] == [("accepted", S.READY), ("rejected", S.RUNNING)]
    back = [r for r in demo.claim("demo", "w2", 4).ranges if r.range_id == "demo.1.0-9"]
    assert back[0].attempt == 1


def test_payload_fatal_ends_the_range(demo: Ledger) -> None:
    demo.claim("demo", "w1", 1)
    fatal = RangeUpdate(range_id="demo.1.0-9", status="fatal", error_code="ERR_CORRUPT_INPUT", error="bad event")
    assert demo.update("demo", "w1", [fatal])[0].status == S.FATAL
    assert demo.update("demo", "w1", [fatal])[0].result == "duplicate"
    assert demo.update("demo", "w1", [finished("demo.1.0-9")])[0].result == "rejected"


def test_a_batch_with_an_unknown_range_changes_nothing(demo: Ledger) -> None:
    demo.claim("demo", "w1", 2)
    before = snapshot(demo)
    with pytest.raises(RangeNotFoundError, match="no event range 'demo.9.0-9'"):
        demo.update("demo", "w1", [finished("demo.1.0-9"), finished("demo.9.0-9")])
    assert snapshot(demo) == before
    with pytest.raises(TaskNotFoundError):
        demo.claim("nosuchtask", "w1", 1)


def test_task_ends_when_every_range_is_final(demo: Ledger) -> None:
    ranges = demo.claim("demo", "w1", 10).ranges
    demo.update("demo", "w1", [finished(r.range_id) for r in ranges[:-1]] +
                [RangeUpdate(range_id=ranges[-1].range_id, status="fatal", error_code="ERR_X")])
    # One fatal range where the spec tolerates none: final, but events are missing (max_fatal_ranges is 0).
    assert demo.claim("demo", "w1", 1).state == TaskState.INCOMPLETE
    status = demo.status("demo")
    assert (status.state, status.events_done) == (TaskState.INCOMPLETE, 25)


def test_cancel_stops_workers_and_keeps_outputs(demo: Ledger) -> None:
    demo.claim("demo", "w1", 2)
    demo.update("demo", "w1", [finished("demo.1.0-9")])
    assert demo.cancel("demo", by="admin") == 3
    assert statuses(demo) == {"finished": 1, "cancelled": 3}
    assert demo.claim("demo", "w2", 5).state == TaskState.CANCELLED
    beat = demo.heartbeat("demo", "w1")
    assert (beat.command, beat.renewed) == ("stop", 0)
    assert demo.update("demo", "w1", [finished("demo.1.10-19")])[0].result == "rejected"
    assert demo.status("demo").state == TaskState.CANCELLED


def test_corrupted_output_is_redispatched_and_merged_outputs_recorded(demo: Ledger) -> None:
    ranges = demo.claim("demo", "w1", 3).ranges
    demo.update("demo", "w1", [finished(r.range_id) for r in ranges])
    assert demo.mark_corrupted("demo", ["demo.1.0-9"], "adler32 mismatch: 0a0b0c0d stored, 00000001 read") == 1
    assert demo.mark_merged("demo", ["demo.1.10-19", "demo.1.20-24"], by="merge") == 2
    assert statuses(demo) == {"ready": 2, "merged": 2}
    moves = [(t["from_status"], t["to_status"]) for t in demo.transitions("demo", "demo.1.0-9")]
    assert moves[-2:] == [("finished", "corrupted"), ("corrupted", "ready")]
    again = [r for r in demo.claim("demo", "w2", 5).ranges if r.range_id == "demo.1.0-9"]
    assert again[0].attempt == 2


def test_schema_version_mismatch_is_refused(ledger_url: str) -> None:
    with Ledger(ledger_url) as ledger, ledger.engine.begin() as conn:
        conn.execute(text("UPDATE es_meta SET value = '999' WHERE key = 'schema_version'"))
    with pytest.raises(LedgerSchemaError, match="schema version 999"):
        Ledger(ledger_url)


def test_a_version_1_ledger_is_upgraded_and_keeps_its_ranges(ledger_url: str) -> None:
    with Ledger(ledger_url) as ledger:
        ledger.create_task(make_spec())
        ledger.claim("demo", "w1", 1)
        ledger.update("demo", "w1", [finished("demo.1.0-9")])
        with ledger.engine.begin() as conn:  # make it what version 1 created
            conn.execute(text("ALTER TABLE es_ranges DROP COLUMN output_member"))
            conn.execute(text("ALTER TABLE es_catalog DROP COLUMN certification"))
            conn.execute(text("ALTER TABLE es_catalog DROP COLUMN validation"))
            conn.execute(text("ALTER TABLE es_workers DROP COLUMN last_claim_id"))
            conn.execute(text("ALTER TABLE es_workers DROP COLUMN last_claim_at"))
            conn.execute(text("UPDATE es_meta SET value = '1' WHERE key = 'schema_version'"))
    with Ledger(ledger_url) as ledger:
        assert ledger.range_info("demo", "demo.1.0-9").output == out("demo/demo.1.0-9")
        with ledger.engine.begin() as conn:
            assert conn.execute(text("SELECT value FROM es_meta WHERE key = 'schema_version'")).scalar() == "3"
            assert conn.execute(text("SELECT count(certification) + count(validation) FROM es_catalog")).scalar() == 0
        ledger.claim("demo", "w1", 1)
        archived = OutputRef(key="demo/outputs.tar", adler32="01020304", size=10, member="demo.1.10-19")
        ledger.update("demo", "w1", [RangeUpdate(range_id="demo.1.10-19", status="finished", output=archived)])
        assert ledger.range_info("demo", "demo.1.10-19").output == archived


@pytest.mark.parametrize("url", ["mysql://localhost/db", "nonsense", "sqlite:////no/such/folder/ledger.sqlite"])
def test_bad_database_urls_are_refused(url: str) -> None:
    with pytest.raises(ValueError):
        Ledger(url)


def test_a_restarted_worker_gives_back_what_it_held(demo: Ledger) -> None:
    demo.claim("demo", "w1", 2)
    demo.update("demo", "w1", [finished("demo.1.0-9")])
    beat = demo.heartbeat("demo", "w1", restarted=True)
    assert (beat.released, beat.renewed) == (1, 0)
    assert statuses(demo) == {"finished": 1, "ready": 3}
    moved = demo.transitions("demo", "demo.1.10-19")[-1]
    assert (moved["to_status"], moved["error_code"]) == ("ready", "worker_restarted")
    # The restarted worker may still report what it had finished before (a late report).
    assert demo.update("demo", "w1", [finished("demo.1.10-19")])[0].result == "accepted"


def test_deleting_a_task_removes_everything_of_it(demo: Ledger) -> None:
    demo.create_task(make_spec(name="other", events=(5,)))
    demo.claim("demo", "w1", 2)
    demo.update("demo", "w1", [finished("demo.1.0-9")])
    demo.delete_task("demo")
    with pytest.raises(TaskNotFoundError):
        demo.status("demo")
    assert demo.task_names() == ["other"]
    with demo.engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM es_transitions")).scalar_one() == 0
        assert conn.execute(text("SELECT count(*) FROM es_ranges")).scalar_one() == 1


def test_a_repeated_claim_id_gets_the_same_ranges_not_new_ones(demo: Ledger) -> None:
    first = demo.claim("demo", "w1", 2, claim_id="claim-0001")
    assert [r.range_id for r in first.ranges] == ["demo.1.0-9", "demo.1.10-19"]
    # The reply was lost; the worker asks again with the same id: the same ranges, nothing more handed out.
    again = demo.claim("demo", "w1", 2, claim_id="claim-0001")
    assert again.ranges == first.ranges
    assert statuses(demo) == {"sent": 2, "ready": 2}
    # A range the worker has reported meanwhile is not handed out again; a new id claims new ranges.
    demo.update("demo", "w1", [finished("demo.1.0-9")])
    assert [r.range_id for r in demo.claim("demo", "w1", 2, claim_id="claim-0001").ranges] == ["demo.1.10-19"]
    assert [r.range_id for r in demo.claim("demo", "w1", 1, claim_id="claim-0002").ranges] == ["demo.1.20-24"]
    # Another worker's claim ids are its own.
    [last] = demo.claim("demo", "w2", 1, claim_id="claim-0001").ranges
    assert last.range_id not in {"demo.1.0-9", "demo.1.10-19", "demo.1.20-24"}
    sent = [t for t in demo.transitions("demo") if t["to_status"] == "sent"]
    assert len(sent) == 4 == len({t["range_id"] for t in sent})  # every range sent once


def test_concurrent_tries_of_one_claim_get_the_same_ranges(ledger: Ledger) -> None:
    """A client that times out and sends its claim again while the first try still runs: one claim, not two."""
    ledger.create_task(make_spec(events=(200,)))
    tries = 6
    barrier = threading.Barrier(tries)

    def attempt() -> list[str]:
        barrier.wait()
        return [r.range_id for r in ledger.claim("demo", "w1", 3, claim_id="one-claim-id").ranges]

    with ThreadPoolExecutor(tries) as pool:
        answers = list(pool.map(lambda _: attempt(), range(tries)))
    assert all(answer == answers[0] for answer in answers) and len(answers[0]) == 3
    assert statuses(ledger)["sent"] == 3


def test_a_failover_output_is_recorded_under_the_specs_url(ledger: Ledger, tmp_path: Path) -> None:
    failover = f"{(tmp_path / 'failover').as_uri()}/"  # the spec's spelling, with a trailing '/'
    ledger.create_task(make_spec(object_store={"url": (tmp_path / "objects").as_uri(), "failover": {"url": failover}}))
    [claimed] = ledger.claim("demo", "w1", 1).ranges
    reported = OutputRef(key=f"demo/{claimed.range_id}/1/out.root", adler32="00000001", size=1,
                         store=(tmp_path / "failover").as_uri())  # as the store names itself
    [result] = ledger.update("demo", "w1", [RangeUpdate(range_id=claimed.range_id, status="finished",
                                                        output=reported)])
    assert result.result == "accepted"
    assert ledger.range_info("demo", claimed.range_id).output == reported.model_copy(update={"store": failover})

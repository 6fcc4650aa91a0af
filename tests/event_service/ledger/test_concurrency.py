"""Concurrent claims on PostgreSQL: eight workers never get the same range, nothing is left behind."""

from __future__ import annotations

import threading
from collections import Counter

import pytest

from event_service.ledger import Ledger
from event_service.messages import RangeUpdate
from tests.event_service.conftest import make_spec
from tests.event_service.ledger.test_ledger import finished

pytestmark = pytest.mark.postgres
WORKERS = 8


def test_eight_workers_claiming_in_parallel_never_share_a_range(pg_url: str) -> None:
    with Ledger(pg_url) as setup:
        setup.create_task(make_spec(name="race", events=(3_000, 2_000), per_range=5))
    claimed: dict[str, list[str]] = {}
    errors: list[BaseException] = []
    start = threading.Barrier(WORKERS)

    def work(worker: str) -> None:
        # Each worker has its own Ledger (its own connection pool), as separate API processes would.
        try:
            with Ledger(pg_url, pool_size=2) as ledger:
                mine = claimed.setdefault(worker, [])
                start.wait()
                while True:
                    reply = ledger.claim("race", worker, 7)
                    if not reply.ranges:
                        return
                    mine.extend(r.range_id for r in reply.ranges)
                    # Finish every other batch right away; leave the rest in flight.
                    if len(mine) % 2:
                        ledger.update("race", worker, [finished(r.range_id) for r in reply.ranges])
        except BaseException as exc:  # reported below, with the worker's name
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(f"w{n}",)) for n in range(WORKERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, errors
    every = [range_id for ranges in claimed.values() for range_id in ranges]
    twice = [range_id for range_id, n in Counter(every).items() if n > 1]
    assert twice == []
    assert len(every) == 1_000
    assert sum(1 for ranges in claimed.values() if ranges) >= 2  # the claims really interleaved
    with Ledger(pg_url) as ledger:
        sent = Counter(t["range_id"] for t in ledger.transitions("race") if t["to_status"] == "sent")
        assert set(sent.values()) == {1} and len(sent) == 1_000
        counts = ledger.status("race").counts
        assert counts["sent"] + counts["finished"] == 1_000


def test_concurrent_reports_on_one_range_keep_one_output(pg_url: str) -> None:
    with Ledger(pg_url) as ledger:
        ledger.create_task(make_spec(name="dup", events=(10,), per_range=10))
        ledger.claim("dup", "w1", 1)
        ledger.update("dup", "w1", [RangeUpdate(range_id="dup.1.0-9", status="running")])
    results: list[str] = []
    start = threading.Barrier(WORKERS)

    def report(n: int) -> None:
        with Ledger(pg_url, pool_size=1) as ledger:
            start.wait()
            results.append(ledger.update("dup", "w1", [finished("dup.1.0-9", key=f"dup/copy-{n}")])[0].result)

    threads = [threading.Thread(target=report, args=(n,)) for n in range(WORKERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert sorted(results) == ["accepted"] + ["rejected"] * (WORKERS - 1)
    with Ledger(pg_url) as ledger:
        assert len(ledger.finished_ranges("dup")) == 1

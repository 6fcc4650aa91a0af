"""Dispatch throughput on PostgreSQL: ranges/s through the HTTP API against the same row changes in bare SQL."""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import signal
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import psycopg2
import requests

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from event_service.api.server import free_port
from event_service.ledger import Ledger
from event_service.spec import TaskSpec

ADMIN = "bench-admin"


def make_spec(name: str, n_ranges: int) -> TaskSpec:
    files = max(1, n_ranges // 10_000)
    per_file = n_ranges // files
    return TaskSpec.parse({
        "name": name,
        "inputs": [{"lfn": f"EVNT.{name}._{n:06d}.root", "url": f"file:///data/EVNT.{name}._{n:06d}.root",
                    "events": per_file * 10} for n in range(1, files + 1)],
        "events_per_range": 10, "lease_seconds": 600, "max_attempts": 3,
        "payload": {"command": "toysim"}, "object_store": {"url": "file:///tmp/bench-objects"},
        "merge": {"output_url": "file:///tmp/bench-results"},
    })


def finished_item(task: str, rng: dict[str, Any]) -> dict[str, Any]:
    """A report as a runner sends it: the output under the task's own prefix (the API refuses any other)."""
    return {"range_id": rng["range_id"], "status": "finished", "cpu_s": 0.9, "wall_s": 1.0,
            "output": {"key": f"{task}/{rng['range_id']}/{rng['attempt']}/HITS.root", "adler32": "0a1b2c3d",
                       "size": 102400}}


# -- through the API --------------------------------------------------------------------------------------

def api_client(url: str, task: str, token: str, worker: str, batch: int, start: Any, out: Any) -> None:
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {token}"
    claims: list[float] = []
    updates: list[float] = []
    done = 0
    start.wait()
    while True:
        t0 = time.perf_counter()
        reply = session.post(f"{url}/api/v1/tasks/{task}/claim", json={"worker": worker, "n": batch}, timeout=60)
        reply.raise_for_status()
        claims.append(time.perf_counter() - t0)
        ranges = reply.json()["ranges"]
        if not ranges:
            break
        t0 = time.perf_counter()
        reply = session.post(f"{url}/api/v1/tasks/{task}/update", timeout=60,
                             json={"worker": worker, "updates": [finished_item(task, r) for r in ranges]})
        reply.raise_for_status()
        updates.append(time.perf_counter() - t0)
        assert all(r["result"] == "accepted" for r in reply.json()["results"]), reply.text[:300]
        done += len(ranges)
    out.put({"done": done, "claims": claims, "updates": updates, "end": time.perf_counter()})


def run_api(db: str, n_ranges: int, clients: int, batch: int, api_workers: int) -> dict[str, Any]:
    name = "bench-api"
    with Ledger(db) as ledger:
        t0 = time.perf_counter()
        _, token = ledger.create_task(make_spec(name, n_ranges))
        created = time.perf_counter() - t0
    vacuum(db)
    port = free_port()
    server = subprocess.Popen(
        [str(Path(sys.executable).with_name("event-service")), "serve", "--db", db, "--port", str(port),
         "--workers", str(api_workers), "--log-level", "warning"],
        env={**os.environ, "EVENT_SERVICE_ADMIN_TOKEN": ADMIN})
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(url)
        result = drive(api_client, (url, name, token), clients, batch)
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)
    result["create_s"] = created
    verify(db, name, n_ranges)
    return result


# -- the ceiling: the same row changes in bare SQL -------------------------------------------------------

CLAIM_SQL = """
WITH picked AS (
    SELECT id FROM es_ranges
    WHERE task_id = %(task)s AND status = 'ready' AND queue_seq > %(after)s
    ORDER BY queue_seq LIMIT %(n)s FOR UPDATE SKIP LOCKED),
claimed AS (
    UPDATE es_ranges r SET status = 'sent', worker = %(worker)s, lease_expires = %(lease)s,
        attempt = r.attempt + 1, error_code = NULL, error = NULL, updated_at = %(now)s
    FROM picked WHERE r.id = picked.id
    RETURNING r.id, r.range_id, r.lfn, r.guid, r.url, r.first_event, r.last_event, r.attempt, r.queue_seq),
moved AS (
    INSERT INTO es_transitions (task_id, range_pk, from_status, to_status, worker, at, attempt)
    SELECT %(task)s, id, 'ready', 'sent', %(worker)s, %(now)s, attempt FROM claimed)
SELECT * FROM claimed
"""

FINISH_SQL = """
WITH reported AS (
    SELECT * FROM json_to_recordset(%(items)s) AS x(range_id text, key text, adler32 text, size bigint,
                                                   cpu_s float8, wall_s float8)),
finished AS (
    UPDATE es_ranges r SET status = 'finished', lease_expires = NULL, output_key = reported.key,
        adler32 = reported.adler32, size = reported.size, cpu_s = reported.cpu_s, wall_s = reported.wall_s,
        updated_at = %(now)s
    FROM reported
    WHERE r.task_id = %(task)s AND r.range_id = reported.range_id AND r.worker = %(worker)s
      AND r.status IN ('sent', 'running')
    RETURNING r.id, r.attempt, r.cpu_s, r.wall_s)
INSERT INTO es_transitions (task_id, range_pk, from_status, to_status, worker, at, attempt, cpu_s, wall_s)
SELECT %(task)s, id, 'sent', 'finished', %(worker)s, %(now)s, attempt, cpu_s, wall_s FROM finished
"""


def sql_client(dsn: str, task_id: int, _unused: Any, worker: str, batch: int, start: Any, out: Any) -> None:
    conn = psycopg2.connect(dsn)
    cur = conn.cursor()
    claims: list[float] = []
    updates: list[float] = []
    done, after = 0, 0
    start.wait()
    while True:
        t0 = time.perf_counter()
        now = time.time()
        cur.execute(CLAIM_SQL, {"task": task_id, "after": after, "n": batch, "worker": worker,
                                "lease": now + 600, "now": now})
        rows = cur.fetchall()
        if len(rows) < batch and after:
            after = 0
            cur.execute(CLAIM_SQL, {"task": task_id, "after": 0, "n": batch - len(rows), "worker": worker,
                                    "lease": now + 600, "now": now})
            rows += cur.fetchall()
        conn.commit()
        claims.append(time.perf_counter() - t0)
        if not rows:
            break
        after = max(after, max(r[8] for r in rows))
        t0 = time.perf_counter()
        items = [{"range_id": r[1], "key": f"bench/{r[1]}.{r[7]}.root", "adler32": "0a1b2c3d", "size": 102400,
                  "cpu_s": 0.9, "wall_s": 1.0} for r in rows]
        cur.execute(FINISH_SQL, {"items": json.dumps(items), "task": task_id, "worker": worker, "now": time.time()})
        if cur.rowcount != len(rows):
            raise RuntimeError(f"finished {cur.rowcount} of {len(rows)} ranges")
        conn.commit()
        updates.append(time.perf_counter() - t0)
        done += len(rows)
    conn.close()
    out.put({"done": done, "claims": claims, "updates": updates, "end": time.perf_counter()})


def run_sql(db: str, n_ranges: int, clients: int, batch: int) -> dict[str, Any]:
    name = "bench-sql"
    with Ledger(db) as ledger:
        record, _ = ledger.create_task(make_spec(name, n_ranges))
    vacuum(db)
    result = drive(sql_client, (libpq_dsn(db), record.id, None), clients, batch)
    verify(db, name, n_ranges)
    return result


# -- common ------------------------------------------------------------------------------------------------

def drive(target: Any, args: tuple[Any, ...], clients: int, batch: int) -> dict[str, Any]:
    ctx = mp.get_context("fork")
    start = ctx.Barrier(clients + 1)
    out = ctx.Queue()
    procs = [ctx.Process(target=target, args=(*args, f"bench-{n}", batch, start, out)) for n in range(clients)]
    for proc in procs:
        proc.start()
    start.wait()
    t0 = time.perf_counter()
    results = [out.get(timeout=1800) for _ in procs]
    for proc in procs:
        proc.join()
        if proc.exitcode:
            raise RuntimeError(f"a client exited with code {proc.exitcode}")
    elapsed = max(r["end"] for r in results) - t0
    done = sum(r["done"] for r in results)
    claims = [x for r in results for x in r["claims"]]
    updates = [x for r in results for x in r["updates"]]
    return {"ranges": done, "elapsed_s": elapsed, "ranges_per_s": done / elapsed,
            "claim_p50_ms": 1000 * statistics.median(claims), "claim_p99_ms": 1000 * quantile(claims, 0.99),
            "update_p50_ms": 1000 * statistics.median(updates), "update_p99_ms": 1000 * quantile(updates, 0.99)}


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def libpq_dsn(url: str) -> str:
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    parts = {"host": parsed.host, "port": parsed.port, "user": parsed.username, "password": parsed.password,
             "dbname": parsed.database}
    return " ".join(f"{k}={v}" for k, v in parts.items() if v)


def vacuum(url: str) -> None:
    conn = psycopg2.connect(libpq_dsn(url))
    conn.autocommit = True
    conn.cursor().execute("VACUUM ANALYZE")
    conn.close()


def verify(url: str, task: str, n_ranges: int) -> None:
    conn = psycopg2.connect(libpq_dsn(url))
    cur = conn.cursor()
    cur.execute("SELECT r.status, count(*) FROM es_ranges r JOIN es_tasks t ON t.id = r.task_id "
                "WHERE t.name = %s GROUP BY r.status", (task,))
    counts = dict(cur.fetchall())
    cur.execute("SELECT count(*) FROM es_transitions x JOIN es_tasks t ON t.id = x.task_id WHERE t.name = %s",
                (task,))
    moves = cur.fetchone()[0]
    conn.close()
    if counts != {"finished": n_ranges} or moves != 2 * n_ranges:
        raise RuntimeError(f"{task}: expected {n_ranges} finished ranges and {2 * n_ranges} transitions, "
                           f"found {counts} and {moves}")


def wait_for(url: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if requests.get(f"{url}/api/v1/health", timeout=1).ok:
                return
        except requests.ConnectionError:
            time.sleep(0.1)
    raise RuntimeError(f"the API at {url} did not start")


def fresh_database(server: str) -> tuple[str, str]:
    name = f"es_bench_{uuid.uuid4().hex[:8]}"
    conn = psycopg2.connect(libpq_dsn(server))
    conn.autocommit = True
    conn.cursor().execute(f'CREATE DATABASE "{name}"')
    conn.close()
    return server.rsplit("/", 1)[0] + f"/{name}", name


def drop_database(server: str, name: str) -> None:
    conn = psycopg2.connect(libpq_dsn(server))
    conn.autocommit = True
    conn.cursor().execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    conn.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--server", default=os.environ.get("EVENT_SERVICE_BENCH_PG",
                                                           "postgresql://postgres@127.0.0.1:5432/postgres"),
                        help="a PostgreSQL server; the benchmark creates and drops its own database there")
    parser.add_argument("--ranges", type=int, default=100_000)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--api-workers", type=int, default=2, help="uvicorn worker processes")
    args = parser.parse_args()
    db, name = fresh_database(args.server)
    try:
        ceiling = run_sql(db, args.ranges, args.clients, args.batch)
        api = run_api(db, args.ranges, args.clients, args.batch, args.api_workers)
    finally:
        drop_database(args.server, name)
    print(f"dispatch benchmark: {args.ranges} ranges, {args.clients} clients, batches of {args.batch}, "
          f"{args.api_workers} API processes, {os.cpu_count()} cores")
    print(f"  task creation (ledger):  {api['create_s']:.2f} s ({args.ranges / api['create_s']:.0f} ranges/s)")
    for label, r in (("HTTP API", api), ("bare SQL (ceiling)", ceiling)):
        print(f"  {label:<19} {r['ranges_per_s']:>8.0f} ranges/s  ({r['elapsed_s']:.1f} s; claim p50/p99 "
              f"{r['claim_p50_ms']:.1f}/{r['claim_p99_ms']:.1f} ms, update p50/p99 "
              f"{r['update_p50_ms']:.1f}/{r['update_p99_ms']:.1f} ms)")
    ratio = api["ranges_per_s"] / ceiling["ranges_per_s"]
    print(f"  API / ceiling: {100 * ratio:.0f}%   goals: >= 5000 ranges/s and >= 30% of the ceiling: "
          f"{'met' if api['ranges_per_s'] >= 5000 and ratio >= 0.30 else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Load test of the dispatch API on PostgreSQL: many simulated runners claim, report and heartbeat at once."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import math
import os
import random
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import psutil
import requests
from psycopg2 import sql
from sqlalchemy.engine import make_url

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from event_service.api.client import RETRY_STATUSES
from event_service.api.server import free_port
from event_service.ledger import Ledger
from event_service.spec import TaskSpec
from tests import pg

ADMIN = "loadtest-admin"
TASK = "load"
APP_NAME = "es-loadtest-api"
CALLS = ("claim", "update", "heartbeat")
RETRIES, BACKOFF_S, TIMEOUT_S = 5, 0.5, 30.0  # as event_service.api.client.DispatchClient
KEEPALIVE_S = 4.0  # below uvicorn's 5 s, so that the client never reuses a connection the server is closing


# -- the task and the server ---------------------------------------------------------------------------------

def make_spec(name: str, n_ranges: int, lease_s: int) -> TaskSpec:
    files = max(1, math.ceil(n_ranges / 10_000))
    per_file = math.ceil(n_ranges / files)
    return TaskSpec.parse({
        "name": name,
        "inputs": [{"lfn": f"EVNT.{name}._{n:06d}.root", "url": f"file:///data/EVNT.{name}._{n:06d}.root",
                    "events": per_file} for n in range(1, files + 1)],
        "events_per_range": 1, "lease_seconds": lease_s, "max_attempts": 3,
        "payload": {"command": "toysim"}, "object_store": {"url": "file:///tmp/loadtest-objects"},
        "merge": {"output_url": "file:///tmp/loadtest-results"},
    })


@contextlib.contextmanager
def throwaway_database(server: str) -> Iterator[tuple[str, str]]:
    """A new database on the server (its SQLAlchemy URL and name), dropped with its connections afterwards."""
    name = f"es_load_{os.urandom(4).hex()}"
    with contextlib.closing(pg.connect(server)) as conn, conn.cursor() as cur:
        cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield make_url(server).set(database=name).render_as_string(hide_password=False), name
    finally:
        with contextlib.closing(pg.connect(server)) as conn, conn.cursor() as cur:
            cur.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def with_application_name(url: str, name: str) -> str:
    return make_url(url).update_query_dict({"application_name": name}).render_as_string(hide_password=False)


POOL_ENV = "LOADTEST_POOL_SIZE"


def pooled_app() -> Any:
    """The app of ``event-service serve`` with the ledger's connection pool at $LOADTEST_POOL_SIZE connections
    per process and no overflow (the ledger's default: 10, and 30 more that are closed when given back)."""
    from event_service.api.app import create_app

    ledger = Ledger(os.environ["EVENT_SERVICE_DB"], pool_size=int(os.environ[POOL_ENV]), max_overflow=0)
    return create_app(ledger, os.environ["EVENT_SERVICE_ADMIN_TOKEN"], close_ledger=True)


@contextlib.contextmanager
def serve(db: str, workers: int, pool_size: int | None = None) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """``event-service serve --workers N`` on 127.0.0.1 over the ledger ``db`` (with ``pool_size``: uvicorn
    with the same app and that pool, ``pooled_app``); stopped with SIGTERM after."""
    port = free_port()
    env = {**os.environ, "EVENT_SERVICE_ADMIN_TOKEN": ADMIN}
    if pool_size is None:
        command = [str(Path(sys.executable).with_name("event-service")), "serve", "--db", db]
    else:
        command = [sys.executable, "-m", "uvicorn", "loadtest:pooled_app", "--factory", "--app-dir",
                   str(Path(__file__).parent), "--no-access-log"]
        env.update({"EVENT_SERVICE_DB": db, POOL_ENV: str(pool_size)})
    server = subprocess.Popen(
        [*command, "--host", "127.0.0.1", "--port", str(port), "--workers", str(workers), "--log-level", "warning"],
        env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            with contextlib.suppress(requests.ConnectionError):
                if requests.get(f"{url}/api/v1/health", timeout=2).ok:
                    break
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the dispatch API did not start on {url} (exit code {server.poll()})")
            time.sleep(0.1)
        yield url, server
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()


# -- measurements --------------------------------------------------------------------------------------------

def cpu_seconds(proc: psutil.Process) -> float:
    times = proc.cpu_times()
    return float(times.user + times.system)


def tree_cpu(root: int) -> float:
    """CPU seconds of a process and its live descendants (the uvicorn supervisor and its workers)."""
    total = 0.0
    with contextlib.suppress(psutil.NoSuchProcess):
        parent = psutil.Process(root)
        for proc in [parent, *parent.children(recursive=True)]:
            with contextlib.suppress(psutil.NoSuchProcess):
                total += cpu_seconds(proc)
    return total


def all_cpu() -> dict[tuple[int, float], tuple[str, float]]:
    """Every live process's name and CPU seconds so far, by pid and start time."""
    found = {}
    for proc in psutil.process_iter(["name", "create_time"]):
        with contextlib.suppress(psutil.Error):
            found[(proc.pid, proc.info["create_time"])] = (str(proc.info["name"]), cpu_seconds(proc))
    return found


def cpu_by_owner(before: dict[tuple[int, float], tuple[str, float]], after: dict[tuple[int, float], tuple[str, float]],
                 api: set[int], own: int) -> dict[str, float]:
    """CPU seconds between two ``all_cpu`` snapshots: the API processes, this process, PostgreSQL's processes
    (every database's), everything else on the machine. Processes that ended before the second snapshot are
    missing: short-lived PostgreSQL backends, other people's short commands."""
    owners = {"api": 0.0, "loadtest": 0.0, "postgres_server": 0.0, "other": 0.0}
    for (pid, created), (name, used) in after.items():
        start = before.get((pid, created), (name, 0.0))[1]
        owner = "api" if pid in api else "loadtest" if pid == own else \
            "postgres_server" if name == "postgres" else "other"
        owners[owner] += max(0.0, used - start)
    return owners


class DatabaseSampler(threading.Thread):
    """Samples, every ``interval`` s, the database's connections (pg_stat_activity) and its backends' CPU."""

    def __init__(self, server: str, database: str, interval: float = 0.5) -> None:
        super().__init__(name="db-sampler", daemon=True)
        self.server, self.database, self.interval = server, database, interval
        self.stop_event = threading.Event()
        self.connections: list[int] = []
        self.active: list[int] = []
        self.first_cpu: dict[int, float] = {}
        self.last_cpu: dict[int, float] = {}
        self.errors: list[str] = []

    def run(self) -> None:
        with contextlib.closing(pg.connect(self.server, application_name="es-loadtest-sampler")) as conn:
            with conn.cursor() as cur:
                while not self.stop_event.is_set():
                    try:
                        cur.execute("SELECT pid, state FROM pg_stat_activity WHERE datname = %s "
                                    "AND pid <> pg_backend_pid()", (self.database,))
                        rows = cur.fetchall()
                    except Exception as exc:  # noqa: BLE001 -- a sample lost is noted, the run goes on
                        self.errors.append(repr(exc))
                        rows = []
                    self.connections.append(len(rows))
                    self.active.append(sum(1 for _, state in rows if state == "active"))
                    for pid, _ in rows:
                        with contextlib.suppress(psutil.Error):
                            used = cpu_seconds(psutil.Process(pid))
                            self.first_cpu.setdefault(pid, used)
                            self.last_cpu[pid] = used
                    self.stop_event.wait(self.interval)

    def cpu(self) -> float:
        return sum(self.last_cpu[pid] - self.first_cpu[pid] for pid in self.last_cpu)


def database_counters(server: str, database: str) -> dict[str, float]:
    with contextlib.closing(pg.connect(server)) as conn, conn.cursor() as cur:
        cur.execute("SELECT pg_stat_clear_snapshot()")
        cur.execute("SELECT xact_commit, xact_rollback, tup_inserted, tup_updated, tup_deleted "
                    "FROM pg_stat_database WHERE datname = %s", (database,))
        commit, rollback, inserted, updated, deleted = cur.fetchone()
        cur.execute("SELECT pg_current_wal_lsn() - '0/0'::pg_lsn")
        wal = cur.fetchone()[0]
    return {"xact_commit": commit, "xact_rollback": rollback, "tup_inserted": inserted, "tup_updated": updated,
            "tup_deleted": deleted, "wal_bytes": float(wal)}


START = time.monotonic()


def note(message: str) -> None:
    """Progress on stderr, with the seconds since the start."""
    print(f"[{time.monotonic() - START:6.1f} s] {message}", file=sys.stderr, flush=True)


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# -- the simulated runners ------------------------------------------------------------------------------------

@dataclasses.dataclass
class Stats:
    """Per call type, when each successful call ended and how long it took; errors, retries, ranges."""

    calls: dict[str, list[tuple[float, float]]] = dataclasses.field(default_factory=lambda: {c: [] for c in CALLS})
    errors: Counter[str] = dataclasses.field(default_factory=Counter)
    retries: Counter[str] = dataclasses.field(default_factory=Counter)
    claimed: int = 0
    finished: list[tuple[float, int]] = dataclasses.field(default_factory=list)
    empty_claims: int = 0
    first_call: float = math.inf
    last_answer: float = 0.0

    def summary(self, start: float | None = None, end: float | None = None) -> dict[str, Any]:
        """Rates and latencies of the calls that ended in [start, end] (default: the first call to the last
        answer); counts of everything."""
        start = self.first_call if start is None else start
        end = self.last_answer if end is None else end
        window = max(end - start, 1e-9)
        calls = {}
        for call, done in self.calls.items():
            values = [latency for t, latency in done if start <= t <= end]
            calls[call] = {"count": len(done), "in_window": len(values), "per_s": len(values) / window,
                           "p50_ms": 1000 * statistics.median(values) if values else None,
                           "p99_ms": 1000 * quantile(values, 0.99) if values else None,
                           "max_ms": 1000 * max(values) if values else None}
        in_window = sum(c["in_window"] for c in calls.values())
        return {"window_s": window, "calls": calls, "calls_total": sum(len(v) for v in self.calls.values()),
                "calls_per_s": in_window / window,
                "ranges_finished_per_s": sum(n for t, n in self.finished if start <= t <= end) / window,
                "errors": dict(self.errors), "retries": dict(self.retries), "ranges_claimed": self.claimed,
                "ranges_finished": sum(n for _, n in self.finished), "empty_claims": self.empty_claims}


class Client:
    """The HTTP calls of one runner, timed; a failed call counts as an error of its kind and returns None."""

    def __init__(self, session: aiohttp.ClientSession, url: str, token: str, stats: Stats) -> None:
        self.session, self.stats = session, stats
        self.base = f"{url}/api/v1/tasks/{TASK}"
        self.headers = {"Authorization": f"Bearer {token}"}

    async def call(self, call: str, body: dict[str, Any]) -> Any:
        """POST with the dispatch client's policy: a failed connection, a timeout or a 502/503/504 is tried
        again after 0.5, 1, 2, 4, 8 s (``event_service.api.client``); each such try is counted under ``retries``,
        and a call still failing after the last one, or answered with another error status, under ``errors``.
        The latency is the whole call's, tries included: what the runner waits."""
        t0 = time.perf_counter()
        self.stats.first_call = min(self.stats.first_call, t0)
        for attempt in range(RETRIES + 1):
            try:
                async with self.session.post(f"{self.base}/{call}", json=body, headers=self.headers) as reply:
                    status = reply.status
                    payload = await reply.json(content_type=None) if status == 200 else await reply.text()
            except (aiohttp.ClientError, TimeoutError) as exc:
                kind = f"{call}: {type(exc).__name__}" + (f" ({exc.strerror})" if isinstance(exc, OSError)
                                                          and exc.strerror else "")
            else:
                if status == 200:
                    end = time.perf_counter()
                    self.stats.last_answer = max(self.stats.last_answer, end)
                    self.stats.calls[call].append((end, end - t0))
                    return payload
                kind = f"{call}: HTTP {status}"
                if status not in RETRY_STATUSES:
                    break
            if attempt == RETRIES:
                break
            self.stats.retries[kind] += 1
            await asyncio.sleep(min(BACKOFF_S * 2**attempt, 30.0))
        self.stats.last_answer = max(self.stats.last_answer, time.perf_counter())
        self.stats.errors[kind] += 1
        return None

    async def claim(self, worker: str, n: int) -> list[dict[str, Any]] | None:
        reply = await self.call("claim", {"worker": worker, "n": n})
        if reply is None:
            return None
        self.stats.claimed += len(reply["ranges"])
        if not reply["ranges"]:
            self.stats.empty_claims += 1
        return list(reply["ranges"])

    async def finish(self, worker: str, ranges: list[dict[str, Any]], wall_s: float) -> None:
        items = [{"range_id": r["range_id"], "status": "finished", "attempt": r["attempt"], "cpu_s": wall_s * 0.95,
                  "wall_s": wall_s,
                  "output": {"key": f"{TASK}/{r['range_id']}/{r['attempt']}/out.root", "adler32": "0a1b2c3d",
                             "size": 40960}} for r in ranges]
        reply = await self.call("update", {"worker": worker, "updates": items})
        if reply is None:
            return
        accepted = 0
        for result in reply["results"]:
            if result["result"] == "accepted":
                accepted += 1
            else:
                self.stats.errors[f"update: {result['result']} ({result.get('reason')})"] += 1
        self.stats.finished.append((time.perf_counter(), accepted))

    async def heartbeat(self, worker: str) -> None:
        await self.call("heartbeat", {"worker": worker})


@dataclasses.dataclass(frozen=True)
class Model:
    """What one simulated runner does: ``payloads`` processes, ranges of ``range_s`` s (±20%), claims of
    ``batch`` ranges (what the runner claims for ranges of 1 s or more: twice its payloads), one report per
    batch, a heartbeat every third of the lease."""

    payloads: int
    range_s: float
    batch: int
    lease_s: int

    @property
    def cycle_s(self) -> float:
        return self.range_s * self.batch / self.payloads

    @property
    def calls_per_s(self) -> float:
        return 2 / self.cycle_s + 3 / self.lease_s


async def runner(client: Client, worker: str, model: Model, deadline: float) -> None:
    loop = asyncio.get_running_loop()

    async def beats() -> None:
        await asyncio.sleep(random.uniform(0, model.lease_s / 3))
        while loop.time() < deadline:
            await client.heartbeat(worker)
            await asyncio.sleep(model.lease_s / 3)

    beating = asyncio.create_task(beats())
    await asyncio.sleep(random.uniform(0, model.cycle_s))  # runners start spread over one cycle
    try:
        while loop.time() < deadline:
            ranges = await client.claim(worker, model.batch)
            if not ranges:  # an error or nothing ready: back off as the runner does
                await asyncio.sleep(1.0)
                continue
            work = model.range_s * random.uniform(0.8, 1.2)
            await asyncio.sleep(work * len(ranges) / model.payloads)
            await client.finish(worker, ranges, work)
    finally:
        beating.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await beating


def new_session(limit: int) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=limit, limit_per_host=limit,
                                                                keepalive_timeout=KEEPALIVE_S),
                                 timeout=aiohttp.ClientTimeout(total=TIMEOUT_S))


async def baseline(url: str, token: str, cycles: int, batch: int) -> dict[str, Any]:
    """The latency floor: one client, one connection, claim → heartbeat → update back to back."""
    stats = Stats()
    async with new_session(1) as session:
        client = Client(session, url, token, stats)
        for _ in range(cycles):
            ranges = await client.claim("baseline-0", batch)
            await client.heartbeat("baseline-0")
            if ranges:
                await client.finish("baseline-0", ranges, 1.0)
    return stats.summary()


async def load(url: str, token: str, clients: int, duration: float, model: Model) -> dict[str, Any]:
    """``clients`` runners until ``duration`` s are over (then each finishes the batch it holds). Rates and
    latencies are those of the steady state: from 1.2 cycles after the start (the runners start spread over one
    cycle, and their first reports come a cycle, ±20%, after their first claims) to the end of the duration."""
    stats = Stats()
    loop = asyncio.get_running_loop()
    started, deadline = time.perf_counter(), loop.time() + duration
    async with new_session(0) as session:  # no pool limit: one connection per runner in flight, as in reality
        client = Client(session, url, token, stats)
        await asyncio.gather(*(runner(client, f"load-{n:05d}", model, deadline) for n in range(clients)))
    ramp = 1.2 * model.cycle_s if duration > 2.4 * model.cycle_s else 0.0
    summary = stats.summary(started + ramp, started + duration)
    summary["ramp_s"] = ramp
    summary["drain_s"] = stats.last_answer - (started + duration)
    return summary


# -- the run --------------------------------------------------------------------------------------------------

def run_async(coro: Any) -> Any:
    """Run a coroutine on uvloop when it is installed (it comes with uvicorn's extras), else on asyncio's loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner_:
        return runner_.run(coro)


def run(args: argparse.Namespace) -> dict[str, Any]:
    model = Model(payloads=args.payloads, range_s=args.range_seconds, batch=args.batch, lease_s=args.lease)
    # Enough ranges that the task never runs dry, even if every runner went at the offered rate.
    n_ranges = int(args.clients * model.batch * (args.duration / model.cycle_s + 2) * 1.2) \
        + args.baseline_cycles * model.batch
    result: dict[str, Any] = {
        "clients": args.clients, "duration_s": args.duration, "api_workers": args.api_workers,
        "pool_size": args.pool_size,
        "model": dataclasses.asdict(model) | {"cycle_s": model.cycle_s, "offered_calls_per_s_per_runner":
                                              model.calls_per_s},
        "ranges": n_ranges, "cores": os.cpu_count(), "loadavg_before": os.getloadavg()}
    with throwaway_database(args.server) as (db, dbname):
        note(f"creating a task of {n_ranges} ranges in the database {dbname}")
        with Ledger(db) as ledger:
            t0 = time.perf_counter()
            _, token = ledger.create_task(make_spec(TASK, n_ranges, model.lease_s))
            result["create_s"] = time.perf_counter() - t0
        with contextlib.closing(pg.connect(db)) as conn, conn.cursor() as cur:
            cur.execute("VACUUM ANALYZE")
        with serve(with_application_name(db, APP_NAME), args.api_workers, args.pool_size) as (url, server):
            note(f"API up at {url}; baseline: {args.baseline_cycles} rounds of one client")
            result["baseline"] = run_async(baseline(url, token, args.baseline_cycles, model.batch))
            sampler = DatabaseSampler(args.server, dbname)
            counters0 = database_counters(args.server, dbname)
            api0, own0, machine0 = tree_cpu(server.pid), cpu_seconds(psutil.Process()), psutil.cpu_times()
            snapshot0 = all_cpu()
            sampler.start()
            note(f"load: {args.clients} simulated runners for {args.duration:.0f} s")
            wall0 = time.perf_counter()
            result["load"] = run_async(load(url, token, args.clients, args.duration, model))
            wall = time.perf_counter() - wall0
            sampler.stop_event.set()
            sampler.join()
            counters1 = database_counters(args.server, dbname)
            machine1 = psutil.cpu_times()
            api_pids = {server.pid} | {p.pid for p in psutil.Process(server.pid).children(recursive=True)}
            result["cpu_by_owner_s"] = cpu_by_owner(snapshot0, all_cpu(), api_pids, os.getpid())
            result["cpu_s"] = {"api": tree_cpu(server.pid) - api0, "postgres_backends": sampler.cpu(),
                               "clients": cpu_seconds(psutil.Process()) - own0}
            busy = sum(getattr(machine1, f) - getattr(machine0, f) for f in ("user", "system", "nice", "irq",
                                                                               "softirq", "steal"))
            result["machine_busy_cores"] = busy / wall
            result["wall_s"] = wall
            result["db"] = {key: (counters1[key] - counters0[key]) for key in counters0}
            result["connections"] = {"max": max(sampler.connections, default=0),
                                     "mean": statistics.fmean(sampler.connections) if sampler.connections else 0,
                                     "active_max": max(sampler.active, default=0),
                                     "samples": len(sampler.connections), "backends_seen": len(sampler.first_cpu),
                                     "sampler_errors": sampler.errors}
            if server.poll() is not None:
                raise RuntimeError(f"the dispatch API exited during the run ({server.returncode})")
            note("load done; stopping the API")
        with contextlib.closing(pg.connect(db)) as conn, conn.cursor() as cur:
            cur.execute("SELECT r.status, count(*) FROM es_ranges r GROUP BY r.status")
            result["ledger_statuses"] = dict(cur.fetchall())
        note("dropping the database")
    result["loadavg_after"] = os.getloadavg()
    finished = result["load"]["ranges_finished"] + result["baseline"]["ranges_finished"]
    result["calls_total"] = result["load"]["calls_total"]
    result["ledger_consistent"] = result["ledger_statuses"].get("finished", 0) == finished
    return result


def report(r: dict[str, Any]) -> None:
    m, load = r["model"], r["load"]
    served = f"`event-service serve --workers {r['api_workers']}`" if r["pool_size"] is None else \
        f"the same app in `uvicorn --workers {r['api_workers']}`, ledger pool {r['pool_size']}, no overflow,"
    print(f"load test: {r['clients']} simulated runners for {r['duration_s']:.0f} s against {served} "
          f"on PostgreSQL, {r['cores']} cores, load average "
          f"{r['loadavg_before'][0]:.2f} before, {r['loadavg_after'][0]:.2f} after")
    print(f"  runner model: {m['payloads']} payloads, ranges of {m['range_s']} s ±20%, claims of {m['batch']}, one "
          f"report per claim, heartbeat every {m['lease_s'] / 3:.0f} s: {m['offered_calls_per_s_per_runner']:.2f} "
          f"calls/s per runner offered ({r['clients'] * m['offered_calls_per_s_per_runner']:.0f} calls/s in all)")
    print(f"  task: {r['ranges']} ranges created in {r['create_s']:.1f} s")
    for label, part in (("baseline (1 client, back to back)", r["baseline"]), ("load, steady state", load)):
        print(f"  {label}: {part['calls_per_s']:.0f} calls/s and {part['ranges_finished_per_s']:.0f} ranges "
              f"finished/s over {part['window_s']:.1f} s ({part['calls_total']} calls and {part['ranges_finished']} "
              f"ranges in all)")
        for call, c in part["calls"].items():
            if c["in_window"]:
                print(f"    {call:<9} {c['in_window']:>7} calls {c['per_s']:>7.1f}/s  p50 {c['p50_ms']:7.1f} ms  "
                      f"p99 {c['p99_ms']:7.1f} ms  max {c['max_ms']:7.1f} ms")
    print(f"  (load: the runners' start took {load['ramp_s']:.1f} s and the last batches' reports "
          f"{load['drain_s']:.1f} s after the end, outside the window)")
    errors = {**{f"baseline {k}": v for k, v in r["baseline"]["errors"].items()}, **load["errors"]}
    retries = {**{f"baseline {k}": v for k, v in r["baseline"]["retries"].items()}, **load["retries"]}
    print(f"  errors: {json.dumps(errors) if errors else 'none'}; tries again after a failed connection or a "
          f"timeout: {json.dumps(retries) if retries else 'none'}; empty claims {load['empty_claims']}")
    conns = r["connections"]
    print(f"  PostgreSQL connections to the ledger database: max {conns['max']}, mean {conns['mean']:.1f}, "
          f"at most {conns['active_max']} active ({conns['samples']} samples; {conns['backends_seen']} backends seen: "
          f"more than the maximum means connections were closed and opened again, and the CPU of those that ended "
          f"between two samples is missing below)")
    cpu, wall, calls = r["cpu_s"], r["wall_s"], load["calls_total"]
    print(f"  CPU over {wall:.1f} s: API processes {cpu['api']:.1f} s ({cpu['api'] / wall:.2f} cores, "
          f"{1000 * cpu['api'] / max(calls, 1):.2f} ms per call), PostgreSQL backends {cpu['postgres_backends']:.1f} s "
          f"({1000 * cpu['postgres_backends'] / max(calls, 1):.2f} ms per call), simulated runners {cpu['clients']:.1f}"
          f" s; whole machine {r['machine_busy_cores']:.2f} cores busy")
    owners = r["cpu_by_owner_s"]
    print(f"  the machine's CPU by owner (processes alive at the end): API {owners['api'] / wall:.2f} cores, "
          f"PostgreSQL (every database) {owners['postgres_server'] / wall:.2f}, load test "
          f"{owners['loadtest'] / wall:.2f}, everything else {owners['other'] / wall:.2f}")
    db = r["db"]
    print(f"  ledger database: {db['xact_commit'] / wall:.0f} commits/s, {db['xact_rollback'] / wall:.1f} rollbacks/s, "
          f"{db['tup_updated'] / wall:.0f} rows updated/s, {db['tup_inserted'] / wall:.0f} rows inserted/s; "
          f"WAL (whole server) {db['wal_bytes'] / wall / 1e6:.2f} MB/s")
    print(f"  ledger after the run: {r['ledger_statuses']}; finished ranges match the accepted reports: "
          f"{'yes' if r['ledger_consistent'] else 'NO'}")
    print("loadtest " + json.dumps(r, default=float))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--server", default=os.environ.get("EVENT_SERVICE_BENCH_PG",
                                                           "postgresql://postgres@127.0.0.1:5432/postgres"),
                        help="a PostgreSQL server; the load test creates and drops its own database there")
    parser.add_argument("--clients", type=int, default=1000, help="simulated runners (one worker id each)")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of load")
    parser.add_argument("--api-workers", type=int, default=2, help="uvicorn worker processes")
    parser.add_argument("--payloads", type=int, default=2, help="payload processes per simulated runner")
    parser.add_argument("--range-seconds", type=float, default=1.0, help="a range's processing time")
    parser.add_argument("--batch", type=int, default=4,
                        help="ranges per claim (what the runner claims for ranges of 1 s or more: 2 x payloads)")
    parser.add_argument("--lease", type=int, default=60, help="the task's lease; heartbeats every third of it")
    parser.add_argument("--baseline-cycles", type=int, default=200, help="claim/heartbeat/update rounds of 1 client")
    parser.add_argument("--pool-size", type=int, help=(
        "an experiment: serve the same app with uvicorn directly, the ledger's pool at this many connections per "
        "API process and no overflow, instead of `event-service serve` (pool of 10 plus 30 overflow)"))
    args = parser.parse_args()
    result = run(args)
    report(result)
    errors = result["load"]["errors"] or result["baseline"]["errors"]
    return 1 if errors or not result["ledger_consistent"] else 0


if __name__ == "__main__":
    sys.exit(main())

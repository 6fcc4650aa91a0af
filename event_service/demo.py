"""The embedded demo: create a task on SQLite, serve it over HTTP, drain it with in-process workers."""

from __future__ import annotations

import io
import secrets
import shutil
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from event_service.api import create_app
from event_service.api.server import ServerThread
from event_service.checksums import adler32_bytes, adler32_file
from event_service.ledger import Ledger
from event_service.models import ClaimedRange, OutputRef, RangeStatus, RangeUpdate, TaskState, TaskStatus
from event_service.spec import TaskSpec
from event_service.client import AdminClient, DispatchClient

PARTICLES_PER_EVENT = 16


@dataclass
class WorkerReport:
    worker: str
    finished: int = 0
    claimed: int = 0
    evicted: bool = False
    rejected: list[str] = field(default_factory=list)


def make_inputs(folder: Path, files: int, events_per_file: int, seed: int = 20131) -> list[dict[str, object]]:
    """Generator-like inputs: per event, particle energies (GeV); the same arguments give the same files."""
    folder.mkdir(parents=True, exist_ok=True)
    inputs = []
    for number in range(1, files + 1):
        rng = np.random.default_rng([seed, number])
        energies = rng.exponential(5.0, size=(events_per_file, PARTICLES_PER_EVENT))
        path = folder / f"EVNT.demo._{number:06d}.npy"
        np.save(path, energies)
        inputs.append({"lfn": path.name, "url": path.resolve().as_uri(), "events": events_per_file})
    return inputs


def simulate(event_range: ClaimedRange, cost_ms: float) -> bytes:
    """A toy detector response for one range: deposited energy and hit count per event, as .npz bytes."""
    energies = np.load(event_range.url.removeprefix("file://"), mmap_mode="r")
    chunk = np.asarray(energies[event_range.first_event:event_range.last_event + 1])
    deadline = time.process_time() + cost_ms * len(chunk) / 1000.0
    while time.process_time() < deadline:  # the payload's CPU cost per event
        pass
    deposited = (chunk * 0.93).sum(axis=1)
    hits = (chunk > 2.0).sum(axis=1)
    numbers = np.arange(event_range.first_event, event_range.last_event + 1)
    buffer = io.BytesIO()
    np.savez(buffer, event_number=numbers, deposited=deposited, hits=hits)
    return buffer.getvalue()


def store(objects: Path, key: str, data: bytes) -> OutputRef:
    """Write an output object atomically (temporary name, then rename) and return its reference."""
    target = objects / key
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.partial")
    partial.write_bytes(data)
    partial.replace(target)
    return OutputRef(key=key, adler32=adler32_bytes(data), size=len(data))


def run_worker(client: DispatchClient, report: WorkerReport, objects: Path, batch: int, cost_ms: float,
               evict: bool) -> None:
    """Claim, process, store and report ranges until the task is done; ``evict`` vanishes after one claim."""
    stop = threading.Event()

    def heartbeats() -> None:
        while not stop.wait(1.0):
            if client.heartbeat(report.worker).command == "stop":
                stop.set()

    beat = threading.Thread(target=heartbeats, daemon=True)
    beat.start()
    backoff = 0.05
    try:
        while not stop.is_set():
            reply = client.claim(report.worker, batch)
            report.claimed += len(reply.ranges)
            if not reply.ranges:
                if reply.state != TaskState.RUNNING:
                    return
                time.sleep(backoff)
                backoff = min(backoff * 2, 1.0)
                continue
            backoff = 0.05
            if evict:  # a spot instance reclaimed: its ranges come back when the lease lapses
                report.evicted = True
                return
            updates = []
            for event_range in reply.ranges:
                cpu0, wall0 = time.process_time(), time.perf_counter()
                data = simulate(event_range, cost_ms)
                output = store(objects, f"{client.task}/{event_range.range_id}.{event_range.attempt}.npz", data)
                updates.append(RangeUpdate(range_id=event_range.range_id, status="finished", output=output,
                                           cpu_s=time.process_time() - cpu0, wall_s=time.perf_counter() - wall0,
                                           attempt=event_range.attempt))
            for result in client.update(report.worker, updates):
                if result.result == "accepted":
                    report.finished += 1
                elif result.result == "rejected":
                    report.rejected.append(f"{result.range_id}: {result.reason}")
    finally:
        stop.set()
        beat.join()


def run_demo(workdir: Path, *, files: int = 2, events_per_file: int = 1000, events_per_range: int = 10,
             workers: int = 4, lease_seconds: int = 3, cost_ms: float = 0.5) -> int:
    """Run one task end to end on the embedded defaults and print its summary; returns an exit code."""
    workdir = workdir.resolve()
    for stale in ("ledger.sqlite", "ledger.sqlite-wal", "ledger.sqlite-shm"):
        (workdir / stale).unlink(missing_ok=True)
    shutil.rmtree(workdir / "objects", ignore_errors=True)
    objects = workdir / "objects"
    objects.mkdir(parents=True)
    spec = TaskSpec.parse({
        "name": "demo",
        "inputs": make_inputs(workdir / "inputs", files, events_per_file),
        "events_per_range": events_per_range,
        "lease_seconds": lease_seconds,
        "max_attempts": 3,
        "payload": {"command": f"in-process toy simulation, {cost_ms} ms per event"},
        "workers": workers,
        "object_store": {"url": objects.as_uri()},
        "merge": {"output_url": (workdir / "results").as_uri()},
    }, "demo task")
    admin = secrets.token_urlsafe(16)
    ledger = Ledger(f"sqlite:///{workdir / 'ledger.sqlite'}")
    started = time.perf_counter()
    with ServerThread(create_app(ledger, admin)) as server:
        with AdminClient(server.url, admin) as admin_client:
            token = admin_client.create_task(spec).token
        print(f"created task {spec.name!r}: {spec.total_events} events in {spec.total_ranges} ranges of "
              f"{events_per_range}, served at {server.url} (ledger {workdir / 'ledger.sqlite'})")
        reports = [WorkerReport(f"demo-worker-{n}") for n in range(1, workers + 1)]
        clients = [DispatchClient(server.url, spec.name, token) for _ in reports]
        threads = [threading.Thread(target=run_worker, args=(c, r, objects, 4, cost_ms, n == 0), name=r.worker)
                   for n, (c, r) in enumerate(zip(clients, reports, strict=True))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        status = clients[0].status()
        for client in clients:
            client.close()
    elapsed = time.perf_counter() - started
    return _summarize(ledger, spec, status, reports, objects, elapsed)


def _summarize(ledger: Ledger, spec: TaskSpec, status: TaskStatus, reports: list[WorkerReport], objects: Path,
               elapsed: float) -> int:
    transitions = ledger.transitions(spec.name)
    expired = {t["range_id"] for t in transitions if t["error_code"] == "lease_expired"}
    redispatched = Counter(t["range_id"] for t in transitions if t["to_status"] == RangeStatus.SENT)
    bad = []
    for row in ledger.finished_ranges(spec.name):
        path = objects / row.output_key if row.output_key else None
        if path is None or not path.is_file() or adler32_file(path) != (row.adler32, row.size):
            bad.append(row.range_id)
    ledger.close()
    counts = {k: v for k, v in status.counts.items() if v}
    print(f"task {spec.name!r}: {status.state} in {elapsed:.1f} s")
    print(f"  ranges:  {', '.join(f'{n} {s}' for s, n in counts.items())} (of {status.ranges})")
    print(f"  events:  {status.events_done} of {status.events_total} done, "
          f"{status.events_done / elapsed:.0f} events/s")
    for report in reports:
        note = f"evicted after claiming {report.claimed} ranges" if report.evicted else f"{report.finished} ranges"
        print(f"  worker {report.worker}: {note}")
    print(f"  lease expired and re-dispatched: {len(expired)} ranges; "
          f"ranges dispatched more than once: {sum(1 for n in redispatched.values() if n > 1)}")
    print(f"  outputs: {status.counts[RangeStatus.FINISHED] - len(bad)} objects in {objects} "
          f"match the ledger's adler32 and size" + (f"; {len(bad)} do not: {bad[:5]}" if bad else ""))
    ok = status.state == TaskState.DONE and not bad and status.events_done == status.events_total
    print("demo " + ("succeeded" if ok else "FAILED"))
    return 0 if ok else 1

"""Payload runner: the payload's share of wall time with toysim, and the stage-out rate to S3 against plain boto3."""

from __future__ import annotations

import argparse
import base64
import contextlib
import datetime
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from event_service.api.app import create_app
from event_service.api.client import AdminClient
from event_service.api.server import ServerThread
from event_service.checksums import adler32_bytes
from event_service.inputs.generate import make_inputs
from event_service.ledger import Ledger
from event_service.spec import TaskSpec
from event_service.stores import S3Store, object_key
from payload_runner.stageout import StageOut, StageOutJob
from tests import servers

ADMIN = "bench-admin"
BIN = Path(sys.executable).parent
RUNNER = BIN / "payload-runner"
TOYSIM = BIN / "toysim"
TASK = "bench-runner"
TICK = os.sysconf("SC_CLK_TCK")
S3_THREADS = 8
WARM_UP_FILES = 150  # per leg, untimed: the first few hundred objects a fresh SeaweedFS stores come slower
RUN_TIMEOUT_S = 600.0


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


# -- (a) the payload's share of the payload slots' wall time ----------------------------------------------


@dataclass(frozen=True)
class ProcessEnd:
    """How a process ended: exit code, wall seconds since it was started, its own CPU and its children's."""

    code: int
    wall_s: float
    cpu_s: float
    children_cpu_s: float


def run_to_end(command: list[str], stdout: Path, stderr: Path, timeout_s: float) -> ProcessEnd:
    """Run ``command``; read its own CPU use from /proc while it is a zombie (waitid WNOWAIT), then reap it."""
    with stdout.open("wb") as out, stderr.open("wb") as err:
        started = time.monotonic()
        process = subprocess.Popen(command, stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                                   env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        while os.waitid(os.P_PID, process.pid, os.WEXITED | os.WNOWAIT | os.WNOHANG) is None:
            if time.monotonic() - started > timeout_s:
                raise RuntimeError(f"{command[0]} did not finish within {timeout_s:.0f} s; see {stderr}")
            time.sleep(0.02)
        wall = time.monotonic() - started
        fields = Path(f"/proc/{process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        utime, stime, cutime, cstime = (int(x) / TICK for x in fields[11:15])
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()
    return ProcessEnd(process.returncode, wall, utime + stime, cutime + cstime)


def payload_startup_s(repeats: int = 3) -> float:
    """Median wall time of starting toysim (its imports) up to argument parsing: ``toysim --help``."""
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        subprocess.run([str(TOYSIM), "--help"], check=True, stdout=subprocess.DEVNULL)
        times.append(time.perf_counter() - began)
    return statistics.median(times)


@dataclass(frozen=True)
class Slots:
    """The payload slots' timelines, rebuilt from the runner's manifest (when each output came, its WALL)."""

    gaps: list[float]
    """Seconds from a payload's output to the start of its next range (runner hand-over), each hand-over."""
    busy: float
    """Payload WALL over the slots' time from each slot's first range start to its last output."""
    first_start: float
    last_output: float


def payload_slots(manifest: Path, workers: int) -> Slots:
    """Assign each range (start = output time - WALL) to the slot that freed last before it started."""
    records = [json.loads(line) for line in manifest.read_text().splitlines() if line.strip()]
    ranges = sorted((r["at"] - r["wall_s"], r["at"], r["wall_s"]) for r in records if r["event"] == "output")
    slots: list[list[float]] = []  # [first range start, last output] of each slot
    gaps: list[float] = []
    for start, at, _wall in ranges:
        free = [slot for slot in slots if slot[1] <= start]
        if free:
            slot = max(free, key=lambda s: s[1])
        elif len(slots) < workers:
            slots.append([start, at])
            continue
        else:  # clock noise: the slot that freed first
            slot = min(slots, key=lambda s: s[1])
        gaps.append(start - slot[1])
        slot[1] = at
    windows = [last - first for first, last in slots]
    return Slots(gaps, sum(r[2] for r in ranges) / sum(windows), ranges[0][0], max(r[1] for r in ranges))


def log_time(log: Path, text: str) -> float | None:
    """When the runner's log first says ``text`` (its asctime, local time, to the millisecond)."""
    for line in log.read_text(errors="replace").splitlines():
        if text in line:
            return datetime.datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()
    return None


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def bench_payload_share(tmp: Path, n_ranges: int, workers: int, cost_ms: float) -> dict[str, Any]:
    """One task of ``n_ranges`` ranges of 10 events through one real payload-runner with ``workers`` toysims."""
    inputs = make_inputs(tmp / "evnt", events=10 * n_ranges, files=2, seed=7)
    spec = TaskSpec.parse({
        "name": TASK, "inputs": [i.model_dump() for i in inputs], "events_per_range": 10, "lease_seconds": 60,
        "max_attempts": 3, "payload": {"command": f"toysim --cost-ms {cost_ms:g}"},
        "object_store": {"url": (tmp / "objects").as_uri()}, "merge": {"output_url": (tmp / "results").as_uri()},
    })
    startup = payload_startup_s()
    load_before = load_average()
    with Ledger(f"sqlite:///{tmp / 'ledger.sqlite'}") as ledger, ServerThread(create_app(ledger, ADMIN)) as server:
        admin = AdminClient(server.url, ADMIN)
        try:
            token = admin.create_task(spec).token
        finally:
            admin.close()
        began = time.time()
        end = run_to_end([str(RUNNER), "--server", server.url, "--task", TASK, "--token", token,
                          "--workdir", str(tmp / "work"), "--workers", str(workers)],
                         tmp / "runner.out", tmp / "runner.log", RUN_TIMEOUT_S)
        ended = time.time()
        load_after = load_average()
        finished = ledger.finished_ranges(TASK)
        moves = ledger.transitions(TASK)
    out = (tmp / "runner.out").read_text()
    if end.code != 0 or len(finished) != n_ranges:
        raise RuntimeError(f"the runner exited with {end.code} and {len(finished)} of {n_ranges} ranges finished; "
                           f"its log ends:\n{(tmp / 'runner.log').read_text()[-3000:]}\n{out[-1000:]}")
    summary = next(line for line in out.splitlines() if line.startswith("summary "))
    reported = json.loads(summary.removeprefix("summary "))
    payload_wall = sum(row.wall_s or 0.0 for row in finished)
    payload_cpu = sum(row.cpu_s or 0.0 for row in finished)
    first_sent = min(t["at"] for t in moves if t["to_status"] == "sent")
    last_finished = max(t["at"] for t in moves if t["to_status"] == "finished")
    steady = last_finished - first_sent
    slots = payload_slots(tmp / "work" / "manifest.jsonl", workers)
    saw_done = log_time(tmp / "runner.log", "is done: no more ranges")
    return {
        "ranges": n_ranges, "workers": workers, "cost_ms": cost_ms, "exit_code": end.code,
        "process_wall_s": end.wall_s, "runner_wall_s": float(reported["wall_s"]),
        "payload_wall_s": payload_wall, "summary_payload_wall_s": float(reported["payload_wall_s"]),
        "payload_cpu_s": payload_cpu, "mean_range_wall_s": payload_wall / n_ranges,
        "share_whole": payload_wall / (workers * end.wall_s),
        "steady_s": steady, "share_steady": payload_wall / (workers * steady),
        "before_first_claim_s": first_sent - began, "after_last_report_s": ended - last_finished,
        "payload_startup_s": startup,
        "runner_cpu_s": end.cpu_s, "runner_cpu_ms_per_range": 1000 * end.cpu_s / n_ranges,
        "children_cpu_s": end.children_cpu_s,
        "transitions": len(moves), "load_before": load_before, "load_after": load_after,
        "first_range_start_after_claim_s": slots.first_start - first_sent,
        "report_lag_s": last_finished - slots.last_output,
        "done_after_report_s": None if saw_done is None else saw_done - last_finished,
        "exit_after_done_s": None if saw_done is None else ended - saw_done,
        "slot_busy": slots.busy, "gap_median_ms": 1000 * statistics.median(slots.gaps),
        "gap_p90_ms": 1000 * quantile(slots.gaps, 0.9), "gap_max_ms": 1000 * max(slots.gaps),
        "gap_sum_s": sum(slots.gaps), "hand_overs": len(slots.gaps),
    }


# -- (b) stage-out rate to S3 ---------------------------------------------------------------------------------


def make_files(folder: Path, count: int, size: int) -> list[Path]:
    folder.mkdir(parents=True)
    paths = []
    for n in range(count):
        path = folder / f"HITS.{n:05d}.root"
        path.write_bytes(os.urandom(size))
        paths.append(path)
    return paths


def s3_store(server: servers.S3Server, bucket: str, prefix: str) -> S3Store:
    return S3Store(bucket, prefix, endpoint_url=server.endpoint_url, region=server.region,
                   access_key=server.access_key, secret_key=server.secret_key, max_concurrency=S3_THREADS)


def plain_client(server: servers.S3Server) -> Any:
    """A boto3 client configured like S3Store's (path style, SigV4, checksums only where required)."""
    return server.client(max_pool_connections=2 * S3_THREADS, request_checksum_calculation="when_required",
                         response_checksum_validation="when_required")


def count_objects(client: Any, bucket: str, prefix: str) -> int:
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return sum(len(page.get("Contents", [])) for page in pages)


@dataclass(frozen=True)
class Leg:
    """One way of storing the files: its name and what it does."""

    name: str
    what: str


LEGS = (
    Leg("stageout", "the runner's StageOut with an S3Store, as they are (adler32, PUT with metadata, verified)"),
    Leg("boto3", "baseline: put_object of the file's bytes with the same metadata, no verification"),
    Leg("boto3+head", "diagnostic: the same, then head_object (verification by a second request)"),
    Leg("boto3+md5", "diagnostic: the same with Content-MD5, ETag compared (verification in the same request)"),
)


@dataclass
class Clock:
    """Wall and CPU seconds (this process, all threads) of the timed part of a leg, set-up left out."""

    seconds: float = 0.0
    cpu_s: float = 0.0

    @contextlib.contextmanager
    def running(self) -> Iterator[None]:
        cpu, began = time.process_time(), time.perf_counter()
        try:
            yield
        finally:
            self.seconds, self.cpu_s = time.perf_counter() - began, time.process_time() - cpu


def range_id(label: str, n: int) -> str:
    return f"{label}.1.{10 * n}-{10 * n + 9}"


def leg_stageout(server: servers.S3Server, bucket: str, files: list[Path], label: str, clock: Clock) -> None:
    """The runner's StageOut (8 threads) into an S3Store whose prefix is ``label``; all jobs, all results."""
    store = s3_store(server, bucket, label)
    store.client  # noqa: B018  (built before the clock starts, as a runner builds it once per run)
    stageout = StageOut(label, [store], threads=S3_THREADS)
    jobs = [StageOutJob(range_id(label, n), 1, path, 0.0, 0.0) for n, path in enumerate(files)]
    results: list[Any] = []
    try:
        with clock.running():
            for job in jobs:
                stageout.submit(job)
            while len(results) < len(jobs):
                results.extend(stageout.results())
                time.sleep(0.005)
    finally:
        stageout.close()
    failed = [r.error for r in results if r.output is None]
    if failed:
        raise RuntimeError(f"{len(failed)} stage-outs failed, e.g. {failed[0]}")


def leg_boto3(server: servers.S3Server, bucket: str, files: list[Path], label: str, clock: Clock,
              check: str = "") -> None:
    """put_object from 8 threads, same metadata and the same key layout as StageOut's under prefix ``label``;
    ``check``: "" none, "head" a HEAD after each PUT, "md5" Content-MD5 sent and the ETag compared."""
    client = plain_client(server)  # built before the clock starts, like the S3Store's client

    def put(item: tuple[int, Path]) -> None:
        n, path = item
        body = path.read_bytes()  # bytes, not a file: botocore sends a file with "Expect: 100-continue"
        key = f"{label}/{object_key(label, range_id(label, n), 1, path.name)}"
        extra: dict[str, Any] = {}
        if check == "md5":
            digest = hashlib.md5(body)
            extra["ContentMD5"] = base64.b64encode(digest.digest()).decode()
        reply = client.put_object(Bucket=bucket, Key=key, Body=body,
                                  Metadata={"adler32": adler32_bytes(body), "size": str(len(body))}, **extra)
        if check == "head":
            client.head_object(Bucket=bucket, Key=key)
        elif check == "md5" and reply["ETag"].strip('"') != digest.hexdigest():
            raise RuntimeError(f"{key}: ETag {reply['ETag']} is not the MD5 {digest.hexdigest()}")

    try:
        with ThreadPoolExecutor(max_workers=S3_THREADS) as pool, clock.running():
            list(pool.map(put, enumerate(files)))
    finally:
        client.close()


def run_leg(leg: Leg, server: servers.S3Server, bucket: str, files: list[Path], label: str) -> tuple[float, float]:
    """Wall seconds of one leg (its client built, from the first request to the last answer) and the CPU
    seconds this process used meanwhile (threads included)."""
    clock = Clock()
    if leg.name == "stageout":
        leg_stageout(server, bucket, files, label, clock)
    else:
        leg_boto3(server, bucket, files, label, clock, check=leg.name.partition("+")[2])
    return clock.seconds, clock.cpu_s


def process_cpu_s(pid: int) -> float:
    """CPU seconds a running process has used (its own threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def bench_stageout(tmp: Path, n_files: int, size: int, rounds: int) -> dict[str, Any]:
    """``rounds`` rounds of every leg over the same files, each leg to its own prefix; the order alternates."""
    files = make_files(tmp / "outputs", n_files, size)
    runs: list[dict[str, Any]] = []
    with servers.seaweedfs() as server:
        client = plain_client(server)
        bucket = "bench-stageout"
        client.create_bucket(Bucket=bucket)
        try:
            for leg in LEGS:  # the server allocates its volumes on the first writes; every code path warmed
                run_leg(leg, server, bucket, files[:WARM_UP_FILES], f"warm-{leg.name.replace('+', '-')}")
            load_before = load_average()
            for n in range(1, rounds + 1):
                for leg in LEGS if n % 2 else LEGS[::-1]:
                    label = f"r{n}-{leg.name.replace('+', '-')}"
                    server_cpu = process_cpu_s(server.pid)
                    seconds, client_cpu = run_leg(leg, server, bucket, files, label)
                    server_cpu = process_cpu_s(server.pid) - server_cpu
                    stored = count_objects(client, bucket, f"{label}/")
                    if stored != n_files:
                        raise RuntimeError(f"{label}: {stored} objects under {label}/, expected {n_files}")
                    runs.append({"round": n, "leg": leg.name, "seconds": seconds, "files_per_s": n_files / seconds,
                                 "mb_per_s": n_files * size / seconds / 1e6,
                                 "client_cpu_ms": 1000 * client_cpu / n_files,
                                 "server_cpu_ms": 1000 * server_cpu / n_files})
            load_after = load_average()
        finally:
            servers.remove_bucket(client, bucket)
            client.close()
    return {"files": n_files, "size": size, "runs": runs, "load_before": load_before, "load_after": load_after,
            "startup_s": server.startup_seconds}


# -- report ----------------------------------------------------------------------------------------------------


def print_share(r: dict[str, Any]) -> bool:
    print(f"(a) payload share: {r['ranges']} ranges of 10 events, toysim --cost-ms {r['cost_ms']:g}, "
          f"payload-runner --workers {r['workers']}, dispatch API in-process on SQLite, local object store")
    print(f"    load average before / after: {r['load_before']} / {r['load_after']}")
    print(f"    runner process wall {r['process_wall_s']:.2f} s (its own summary: {r['runner_wall_s']:.2f} s); "
          f"payload wall {r['payload_wall_s']:.2f} s in all (runner summary: {r['summary_payload_wall_s']:.2f} s), "
          f"{r['mean_range_wall_s']:.3f} s per range; payload CPU {r['payload_cpu_s']:.2f} s")
    print(f"    whole run:    {100 * r['share_whole']:.2f}% of {r['workers']} x {r['process_wall_s']:.2f} s "
          f"spent inside the payload")
    print(f"    steady state: {100 * r['share_steady']:.2f}% of {r['workers']} x {r['steady_s']:.2f} s "
          f"(first range claimed -> last range reported finished, from the ledger's transitions)")
    print(f"    payload side: {100 * r['slot_busy']:.2f}% of each slot's time from its first range to its last output "
          f"(runner's manifest); {r['hand_overs']} hand-overs, gap median {r['gap_median_ms']:.1f} ms, "
          f"p90 {r['gap_p90_ms']:.1f} ms, max {r['gap_max_ms']:.1f} ms, {r['gap_sum_s']:.2f} s in all")
    done = "?" if r["done_after_report_s"] is None else f"{r['done_after_report_s']:.2f}"
    left = "?" if r["exit_after_done_s"] is None else f"{r['exit_after_done_s']:.2f}"
    print(f"    start: {r['before_first_claim_s']:.2f} s runner start -> first claim, "
          f"{r['first_range_start_after_claim_s']:.2f} s -> first range starts in a payload "
          f"(toysim --help alone takes {r['payload_startup_s']:.2f} s)")
    print(f"    end:   last output -> reported finished {r['report_lag_s']:.2f} s, -> runner learns the task is done "
          f"{done} s, -> runner exits {left} s")
    print(f"    runner's own CPU: {r['runner_cpu_s']:.2f} s = {r['runner_cpu_ms_per_range']:.1f} ms per range "
          f"({100 * r['runner_cpu_s'] / r['process_wall_s']:.1f}% of one core); its payloads used "
          f"{r['children_cpu_s']:.2f} s")
    met = bool(r["share_steady"] >= 0.98)
    print(f"    goal >= 98% (steady state): {'met' if met else 'NOT met'}")
    return met


def print_stageout(r: dict[str, Any]) -> bool:
    print(f"(b) stage-out to SeaweedFS: {r['files']} files of {r['size'] // 1024} KB per leg, {S3_THREADS} threads "
          f"(weed up in {r['startup_s']:.1f} s)")
    for leg in LEGS:
        print(f"    {leg.name:<11} {leg.what}")
    print(f"    load average before / after: {r['load_before']} / {r['load_after']}")
    print(f"    {'round':>5}  {'leg':<11} {'seconds':>8} {'files/s':>8} {'MB/s':>7} {'client CPU':>11} "
          f"{'server CPU':>11}")
    for run in r["runs"]:
        print(f"    {run['round']:>5}  {run['leg']:<11} {run['seconds']:>8.2f} {run['files_per_s']:>8.0f} "
              f"{run['mb_per_s']:>7.1f} {run['client_cpu_ms']:>6.2f} ms/f {run['server_cpu_ms']:>6.2f} ms/f")
    per_round: dict[str, list[float]] = {leg.name: [] for leg in LEGS}
    for n in sorted({run["round"] for run in r["runs"]}):
        rate = {run["leg"]: run["files_per_s"] for run in r["runs"] if run["round"] == n}
        for leg in LEGS:
            per_round[leg.name].append(rate[leg.name] / rate["boto3"])
        print(f"    round {n}: " + ", ".join(f"{leg.name} {100 * rate[leg.name] / rate['boto3']:.0f}%"
                                            for leg in LEGS if leg.name != "boto3") + " of boto3")
    print("    median of the rounds: " + ", ".join(f"{leg.name} {100 * statistics.median(per_round[leg.name]):.0f}%"
                                                 for leg in LEGS if leg.name != "boto3") + " of boto3")
    total = {leg.name: sum(run["seconds"] for run in r["runs"] if run["leg"] == leg.name) for leg in LEGS}
    overall = total["boto3"] / total["stageout"]
    print("    all rounds: " + ", ".join(f"{leg.name} {100 * total['boto3'] / total[leg.name]:.0f}%"
                                       for leg in LEGS if leg.name != "boto3") + " of boto3")
    met = bool(overall >= 0.80)
    print(f"    goal: StageOut >= 80% of boto3: {'met' if met else 'NOT met'} ({100 * overall:.0f}%)")
    return met


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--ranges", type=int, default=120,
                        help="ranges of 10 events for (a), about 1 s of payload each at the default cost")
    parser.add_argument("--workers", type=int, default=2, help="payload processes for (a)")
    parser.add_argument("--cost-ms", type=float, default=100.0, help="toysim CPU ms per event for (a)")
    parser.add_argument("--files", type=int, default=600, help="files staged out per leg in (b)")
    parser.add_argument("--file-kb", type=int, default=100, help="size of each file in (b), KB")
    parser.add_argument("--rounds", type=int, default=5, help="rounds of (b), the legs' order alternating")
    parser.add_argument("--skip-share", action="store_true", help="run (b) only")
    parser.add_argument("--skip-stageout", action="store_true", help="run (a) only")
    args = parser.parse_args()
    print(f"runner benchmark, {time.strftime('%Y-%m-%d %H:%M %Z')}, {os.cpu_count()} cores, "
          f"load average {load_average()}")
    tmp = Path(tempfile.mkdtemp(prefix="es-bench-runner-", dir="/tmp"))
    try:
        if not args.skip_share:
            print_share(bench_payload_share(tmp / "share", args.ranges, args.workers, args.cost_ms))
        if not args.skip_stageout:
            print_stageout(bench_stageout(tmp / "stageout", args.files, args.file_kb * 1024, args.rounds))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

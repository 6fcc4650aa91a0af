"""Payload runner: the payload's share of wall time with toysim, and the stage-out rate to S3 against plain boto3."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from event_service.api import create_app  # noqa: E402
from event_service.api.server import ServerThread  # noqa: E402
from event_service.checksums import adler32_file  # noqa: E402
from event_service.client import AdminClient  # noqa: E402
from event_service.inputs import make_inputs  # noqa: E402
from event_service.ledger import Ledger  # noqa: E402
from event_service.spec import TaskSpec  # noqa: E402
from event_service.stores import S3Store  # noqa: E402
from payload_runner.stageout import StageOut, StageOutJob  # noqa: E402
from tests import servers  # noqa: E402

ADMIN = "bench-admin"
BIN = Path(sys.executable).parent
RUNNER = BIN / "payload-runner"
TOYSIM = BIN / "toysim"
TASK = "bench-runner"
TICK = os.sysconf("SC_CLK_TCK")
S3_THREADS = 8
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
        with AdminClient(server.url, ADMIN) as admin:
            token = admin.create_task(spec).token
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


def leg_stageout(server: servers.S3Server, bucket: str, files: list[Path], label: str) -> float:
    """The runner's StageOut (8 threads, S3Store: adler32, PUT with metadata, HEAD check): seconds for all."""
    store = s3_store(server, bucket, label)
    store.client  # built before the clock starts, as a runner builds it once per run  # noqa: B018
    stageout = StageOut(label, [store], threads=S3_THREADS)
    jobs = [StageOutJob(f"{label}.1.{10 * n}-{10 * n + 9}", 1, path, 0.0, 0.0) for n, path in enumerate(files)]
    try:
        began = time.perf_counter()
        for job in jobs:
            stageout.submit(job)
        results = []
        while len(results) < len(jobs):
            results.extend(stageout.results())
            time.sleep(0.001)
        elapsed = time.perf_counter() - began
    finally:
        stageout.close()
    failed = [r.error for r in results if r.output is None]
    if failed:
        raise RuntimeError(f"{len(failed)} stage-outs failed, e.g. {failed[0]}")
    return elapsed


def leg_boto3(server: servers.S3Server, bucket: str, files: list[Path], label: str, head: bool = False) -> float:
    """The baseline: put_object from 8 threads with the same metadata, no verification (``head``: plus a HEAD)."""
    client = plain_client(server)

    def put(path: Path) -> None:
        adler32, size = adler32_file(path)
        key = f"{label}/{path.name}"
        with path.open("rb") as body:
            client.put_object(Bucket=bucket, Key=key, Body=body,
                              Metadata={"adler32": adler32, "size": str(size)})
        if head:
            client.head_object(Bucket=bucket, Key=key)

    try:
        with ThreadPoolExecutor(max_workers=S3_THREADS) as pool:
            began = time.perf_counter()
            list(pool.map(put, files))
            elapsed = time.perf_counter() - began
    finally:
        client.close()
    return elapsed


def bench_stageout(tmp: Path, n_files: int, size: int, rounds: int) -> dict[str, Any]:
    files = make_files(tmp / "outputs", n_files, size)
    runs: list[dict[str, Any]] = []
    with servers.seaweedfs() as server:
        client = plain_client(server)
        bucket = "bench-stageout"
        client.create_bucket(Bucket=bucket)
        try:
            leg_boto3(server, bucket, files[:100], "warm-up")  # the server allocates its volumes on first writes
            load_before = load_average()
            for n in range(1, rounds + 1):
                legs = [("stageout", leg_stageout), ("boto3", leg_boto3), ("boto3+head", None)]
                order = legs[:2] if n % 2 else legs[1::-1]
                order.append(legs[2])
                for name, _ in order:
                    label = f"r{n}-{name.replace('+', '-')}"
                    if name == "stageout":
                        seconds = leg_stageout(server, bucket, files, label)
                        prefix = f"{label}/{label}/"  # the store's prefix, then the task segment of the key
                    else:
                        seconds = leg_boto3(server, bucket, files, label, head=name == "boto3+head")
                        prefix = f"{label}/"
                    stored = count_objects(client, bucket, prefix)
                    if stored != n_files:
                        raise RuntimeError(f"{label}: {stored} objects under {prefix!r}, expected {n_files}")
                    runs.append({"round": n, "leg": name, "seconds": seconds, "files_per_s": n_files / seconds,
                                 "mb_per_s": n_files * size / seconds / 1e6})
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
    print(f"    outside the steady state: {r['before_first_claim_s']:.2f} s from start to the first claim, "
          f"{r['after_last_report_s']:.2f} s from the last finished report to exit; "
          f"toysim start-up (toysim --help) {r['payload_startup_s']:.2f} s")
    print(f"    runner's own CPU: {r['runner_cpu_s']:.2f} s = {r['runner_cpu_ms_per_range']:.1f} ms per range "
          f"({100 * r['runner_cpu_s'] / r['process_wall_s']:.1f}% of one core); its payloads used "
          f"{r['children_cpu_s']:.2f} s")
    met = r["share_steady"] >= 0.98
    print(f"    goal >= 98% (steady state): {'met' if met else 'NOT met'}")
    return met


def print_stageout(r: dict[str, Any]) -> bool:
    print(f"(b) stage-out to SeaweedFS: {r['files']} files of {r['size'] // 1024} KB, {S3_THREADS} threads "
          f"(weed up in {r['startup_s']:.1f} s)")
    print(f"    load average before / after: {r['load_before']} / {r['load_after']}")
    print(f"    {'round':>5}  {'leg':<11} {'seconds':>8} {'files/s':>8} {'MB/s':>7}")
    for run in r["runs"]:
        print(f"    {run['round']:>5}  {run['leg']:<11} {run['seconds']:>8.2f} {run['files_per_s']:>8.0f} "
              f"{run['mb_per_s']:>7.1f}")
    ratios = []
    rounds = sorted({run["round"] for run in r["runs"]})
    for n in rounds:
        legs = {run["leg"]: run for run in r["runs"] if run["round"] == n}
        ratio = legs["stageout"]["files_per_s"] / legs["boto3"]["files_per_s"]
        ratios.append(ratio)
        print(f"    round {n}: StageOut / boto3 = {100 * ratio:.0f}%; boto3 put+head / boto3 put = "
              f"{100 * legs['boto3+head']['files_per_s'] / legs['boto3']['files_per_s']:.0f}%")
    total = {leg: sum(run["seconds"] for run in r["runs"] if run["leg"] == leg) for leg in ("stageout", "boto3")}
    overall = total["boto3"] / total["stageout"]
    print(f"    all rounds: StageOut / boto3 = {100 * overall:.0f}% (per round: "
          f"{', '.join(f'{100 * x:.0f}%' for x in ratios)})")
    met = overall >= 0.80
    print(f"    goal >= 80%: {'met' if met else 'NOT met'}")
    return met


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--ranges", type=int, default=120, help="ranges of 10 events for (a); about 1 s of payload each "
                                                                 "at the default cost")
    parser.add_argument("--workers", type=int, default=2, help="payload processes for (a)")
    parser.add_argument("--cost-ms", type=float, default=100.0, help="toysim CPU ms per event for (a)")
    parser.add_argument("--files", type=int, default=600, help="files staged out per leg in (b)")
    parser.add_argument("--file-kb", type=int, default=100, help="size of each file in (b), KB")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of (b), the legs' order alternating")
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

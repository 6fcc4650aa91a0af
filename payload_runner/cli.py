"""The ``payload-runner`` command: run payloads on event ranges from a dispatch API or a job file."""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import shutil
import socket
import sys
import uuid
from pathlib import Path

from event_service.spec import ObjectStoreSpec, TaskSpec
from event_service.stores import ObjectStore, open_store
from payload_runner.runner import Runner, RunnerOptions, RunSummary
from payload_runner.source import JobFile, JobFileSource, LedgerSource, RangeSource, ServerSource

log = logging.getLogger("payload_runner")
TOKEN_ENV = "EVENT_SERVICE_TOKEN"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="payload-runner",
        description="Claim event ranges, feed them to payload processes over ZeroMQ, stage outputs out.")
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--server", help="dispatch API URL, e.g. http://host:8000")
    where.add_argument("--job-file", type=Path, help="a job file with the ranges; no server (off-grid tests)")
    where.add_argument("--ledger", help="ledger database URL, to work on the ledger directly (embedded mode)")
    parser.add_argument("--task", help="task name (with --server)")
    parser.add_argument("--token", default=os.environ.get(TOKEN_ENV), help=f"task token (default: ${TOKEN_ENV})")
    parser.add_argument("--payload", help="payload command (default: the task's)")
    parser.add_argument("--workers", type=int, default=1, help="payload processes fed from one queue")
    parser.add_argument("--workdir", type=Path, help="work directory (default: ./es-runner-<task>)")
    parser.add_argument("--worker-id", help="worker id (default: kept in the work directory)")
    parser.add_argument("--store", help="object store URL (default: the task's)")
    parser.add_argument("--store-endpoint", help="S3 endpoint URL for --store")
    parser.add_argument("--batch", type=int, help="ranges claimed at a time (default: 2 x workers)")
    parser.add_argument("--idle-timeout", type=float, help="leave after this many seconds without a range")
    parser.add_argument("--silence-timeout", type=float, default=600.0,
                        help="kill a payload that says nothing for this long while holding a range")
    parser.add_argument("--grace", type=float, default=30.0, help="seconds in-flight ranges get on a drain")
    parser.add_argument("--max-restarts", type=int, help="payload restarts after crashes (default: 3 x workers)")
    parser.add_argument("--stageout-threads", type=int, default=4)
    parser.add_argument("--report-interval", type=float, default=1.0,
                        help="seconds between batched reports to the server")
    parser.add_argument("--outage-timeout", type=float, default=600.0,
                        help="leave when the object store stays unreachable for this long")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    return parser


def _worker_id(workdir: Path, given: str | None) -> str:
    """The runner's id: given, or kept in the work directory so that a restarted runner is the same worker."""
    if given:
        return given
    path = workdir / "worker-id"
    if path.exists():
        return path.read_text().strip()
    worker = f"{socket.gethostname()}-{uuid.uuid4().hex[:8]}"[:128]
    path.write_text(worker + "\n")
    return worker


def _stores(spec: ObjectStoreSpec, override: str | None, endpoint: str | None) -> list[ObjectStore]:
    if override:
        return [open_store(override, **({"endpoint_url": endpoint} if endpoint else {}))]
    locations = [spec] + ([spec.failover] if spec.failover else [])
    return [open_store(place.url, **({"endpoint_url": place.endpoint_url} if place.endpoint_url else {}))
            for place in locations]


def resolve_command(argv: list[str]) -> list[str]:
    """The payload command with its program found on PATH, or beside this Python (a virtualenv's bin)."""
    if not argv:
        raise ValueError("the payload command is empty")
    if "/" in argv[0]:
        return argv
    found = shutil.which(argv[0]) or shutil.which(argv[0], path=str(Path(sys.executable).parent))
    if found is None:
        raise ValueError(f"payload program {argv[0]!r} not found on PATH or in {Path(sys.executable).parent}")
    return [found, *argv[1:]]


def _check(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    if args.server and not (args.task and args.token):
        parser.error(f"--server needs --task and a token (--token or ${TOKEN_ENV})")
    if args.ledger and not args.task:
        parser.error("--ledger needs --task")
    for name in ("workers", "batch", "stageout_threads"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1, got {value}")


def run(args: argparse.Namespace) -> RunSummary:
    source: RangeSource
    if args.job_file:
        job = JobFile.load(args.job_file)
        task, payload, store_spec = job.task, job.payload, job.object_store
        workdir = (args.workdir or Path(f"es-runner-{task}")).resolve()
        workdir.mkdir(parents=True, exist_ok=True)
        source = JobFileSource(job, workdir / "report.json")
    else:
        workdir = (args.workdir or Path(f"es-runner-{args.task}")).resolve()
        workdir.mkdir(parents=True, exist_ok=True)
        worker, host = _worker_id(workdir, args.worker_id), socket.gethostname()
        live: ServerSource | LedgerSource = (
            ServerSource(args.server, args.task, args.token, worker, host) if args.server
            else LedgerSource(args.ledger, args.task, worker, host))
        spec: TaskSpec = live.spec()
        live.lease_seconds = spec.lease_seconds
        if released := live.start():
            log.info("%d ranges held by this worker id before its restart went back to the task", released)
        task, payload, store_spec, source = spec.name, spec.payload, spec.object_store, live
    command = args.payload or (payload.command if payload else None)
    if not command:
        raise ValueError("no payload command: give --payload or name one in the job file")
    argv = resolve_command(shlex.split(command))
    options = RunnerOptions(workers=args.workers, batch=args.batch, idle_timeout_s=args.idle_timeout,
                            silence_s=args.silence_timeout, grace_s=args.grace, max_restarts=args.max_restarts,
                            stageout_threads=args.stageout_threads, report_interval_s=args.report_interval,
                            outage_s=args.outage_timeout)
    runner = Runner(source, argv, _stores(store_spec, args.store, args.store_endpoint), workdir,
                    _worker_id(workdir, args.worker_id), options)
    log.info("runner %s: task %s, %d x %s, work directory %s, store %s", runner.worker_id, task, args.workers,
             command, workdir, runner.stageout.store_url)
    return runner.run()


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _check(args, parser)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        summary = run(args)
    except (ValueError, KeyError, ConnectionError, OSError) as exc:
        print(f"payload-runner: {exc}", file=sys.stderr)
        return 2
    s = summary
    print(f"payload-runner {s.worker}: task {s.task} {s.reason}; {s.finished} ranges finished ({s.events} events), "
          f"{s.failed} failed, {s.released} given back, {s.rejected} refused, {s.recovered} recovered; "
          f"payload CPU {s.payload_cpu_s:.1f} s / wall {s.payload_wall_s:.1f} s in {s.wall_s:.1f} s; "
          f"{s.staged_bytes} bytes staged out")
    print("summary " + json.dumps(s.as_dict(), sort_keys=True))
    return s.exit_code


if __name__ == "__main__":
    sys.exit(main())

"""The ``payload-runner`` command: run payloads on event ranges from a dispatch API or a job file."""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import shutil
import socket
import sys
import uuid
from pathlib import Path

from event_service import settings
from event_service.api.errors import DispatchError
from event_service.errors import EventServiceError
from event_service.spec import ObjectStoreSpec, TaskSpec
from event_service.stores import ObjectStore, open_location
from payload_runner.errors import RunnerSetupError
from payload_runner.options import RunnerOptions, RunSummary
from payload_runner.presigned import GrantedUploads
from payload_runner.runner import Runner
from payload_runner.source import (
    JobFile,
    JobFileSource,
    LedgerSource,
    RangeSource,
    ServerSource,
)
from payload_runner.stageout import StageOutTarget

log = logging.getLogger("payload_runner")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="payload-runner",
        description="Claim event ranges, feed them to payload processes over ZeroMQ, stage outputs out.")
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--server", help="dispatch API URL, e.g. http://host:8000")
    where.add_argument("--job-file", type=Path, help="a job file with the ranges; no server (off-grid tests)")
    where.add_argument("--ledger", help="ledger database URL, to work on the ledger directly (embedded mode)")
    parser.add_argument("--task", help="task name (with --server)")
    parser.add_argument("--token", default=settings.TOKEN.get(), help=f"task token (default: ${settings.TOKEN.name})")
    parser.add_argument("--payload", help="payload command (default: the task's)")
    parser.add_argument("--workers", type=int, default=1, help="payload processes fed from one queue")
    parser.add_argument("--workdir", type=Path, help="work directory (default: ./es-runner-<task>)")
    parser.add_argument("--worker-id", help="worker id (default: kept in the work directory)")
    parser.add_argument("--store", help="object store URL (default: the task's)")
    parser.add_argument("--store-endpoint", help="S3 endpoint URL for --store")
    parser.add_argument("--upload", choices=["auto", "direct", "presigned"], default="auto", help=(
        "how outputs reach an S3 store: 'direct' with this node's credentials, 'presigned' through uploads "
        "the dispatch API signs (no credentials on the node), 'auto' (default): presigned when this node has "
        "no S3 credentials"))
    parser.add_argument("--batch", type=int, help=(
        "ranges claimed at a time, fixed (default: adapted to the ranges' duration, from 2 x workers up to "
        "--max-batch, about --claim-ahead seconds of work per payload process)"))
    parser.add_argument("--claim-ahead", type=float, default=2.0,
                        help="seconds of work per payload process an adaptive claim asks for (default: 2)")
    parser.add_argument("--max-batch", type=int, default=100, help="largest adaptive claim (default: 100)")
    parser.add_argument("--idle-timeout", type=float, help="leave after this many seconds without a range")
    parser.add_argument("--silence-timeout", type=float, default=600.0,
                        help="kill a payload that says nothing for this long while holding a range")
    parser.add_argument("--grace", type=float, default=30.0, help="seconds in-flight ranges get on a drain")
    parser.add_argument("--max-restarts", type=int, help="payload restarts after crashes (default: 3 x workers)")
    parser.add_argument("--max-consecutive-failures", type=int, default=5, metavar="N",
                        help="stop (exit code 5) after N ranges in a row failed here with none succeeding: a broken "
                             "node; a full or read-only disk stops it at once (default: 5)")
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
        return [open_location(override, endpoint)]
    locations = [spec] + ([spec.failover] if spec.failover else [])
    return [open_location(place.url, place.endpoint_url) for place in locations]


def _has_s3_credentials() -> bool:
    import boto3

    return boto3.session.Session().get_credentials() is not None


def _targets(args: argparse.Namespace, spec: ObjectStoreSpec, source: RangeSource,
             worker: str) -> list[StageOutTarget]:
    """The stage-out targets: the task's stores opened here, or uploads the dispatch API pre-signs."""
    locations = [spec] + ([spec.failover] if spec.failover else [])
    all_s3 = all(place.url.startswith("s3://") for place in locations)
    presigned = args.upload == "presigned" or (
        args.upload == "auto" and isinstance(source, ServerSource) and not args.store and all_s3
        and not _has_s3_credentials())
    if not presigned:
        return list(_stores(spec, args.store, args.store_endpoint))
    if not isinstance(source, ServerSource):
        raise RunnerSetupError("--upload presigned needs --server: the dispatch API signs the uploads")
    if args.store:
        raise RunnerSetupError("--upload presigned goes to the task's own stores; drop --store")
    if not all_s3:
        raise RunnerSetupError(f"--upload presigned needs S3 stores; task {source.task!r} uses "
                               f"{', '.join(place.url for place in locations)}")
    log.info("outputs go up through uploads pre-signed by the dispatch API (no store credentials needed here)")
    return [GrantedUploads(source, source.task, worker, place.url, failover=index > 0)
            for index, place in enumerate(locations)]


def split_command(command: str) -> list[str]:
    """The payload command's words, split as a shell would."""
    try:
        return shlex.split(command)
    except ValueError as exc:  # an unclosed quote, a trailing backslash
        raise RunnerSetupError(str(exc)) from None


def resolve_command(argv: list[str]) -> list[str]:
    """The payload command with its program found on PATH, or beside this Python (a virtualenv's bin)."""
    if not argv:
        raise RunnerSetupError("the payload command is empty")
    if "/" in argv[0]:
        return argv
    found = shutil.which(argv[0]) or shutil.which(argv[0], path=str(Path(sys.executable).parent))
    if found is None:
        raise RunnerSetupError(f"payload program {argv[0]!r} not found on PATH or in {Path(sys.executable).parent}")
    return [found, *argv[1:]]


def _check(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    if args.server and not (args.task and args.token):
        parser.error(f"--server needs --task and a token (--token or ${settings.TOKEN.name})")
    if args.ledger and not args.task:
        parser.error("--ledger needs --task")
    if not args.claim_ahead > 0:
        parser.error(f"--claim-ahead must be a number of seconds above 0, got {args.claim_ahead}")
    for name in ("workers", "batch", "max_batch", "stageout_threads", "max_consecutive_failures"):
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
        raise RunnerSetupError("no payload command: give --payload or name one in the job file")
    argv = resolve_command(split_command(command))
    options = RunnerOptions(workers=args.workers, batch=args.batch, claim_ahead_s=args.claim_ahead,
                            max_batch=args.max_batch, idle_timeout_s=args.idle_timeout,
                            silence_s=args.silence_timeout, grace_s=args.grace, max_restarts=args.max_restarts,
                            stageout_threads=args.stageout_threads, report_interval_s=args.report_interval,
                            outage_s=args.outage_timeout, max_consecutive_failures=args.max_consecutive_failures)
    worker_id = _worker_id(workdir, args.worker_id)
    runner = Runner(source, argv, _targets(args, store_spec, source, worker_id), workdir, worker_id, options)
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
    except DispatchError as exc:  # a wrong or revoked token, an unknown task: the server's words
        print(f"payload-runner: the dispatch API refused: {exc.detail} (HTTP {exc.status})", file=sys.stderr)
        return 2
    except (EventServiceError, OSError) as exc:  # the project's errors; files, connections
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

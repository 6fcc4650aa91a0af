"""The ``event-service`` command: serve the dispatch API, run the demo, and manage tasks on a server."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from event_service import settings
from event_service.cli.tasks import add_commands
from event_service.errors import EventServiceError


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from event_service.ledger import Ledger

    url = args.db or settings.DB.get()
    if not url:
        print(f"event-service serve: give --db URL or set {settings.DB.name} (postgresql://… or sqlite:///path)",
              file=sys.stderr)
        return 2
    # Open the ledger once here: a bad URL or an unreachable database is reported before serving.
    Ledger(url).close()
    if not settings.ADMIN_TOKEN.get():
        logging.getLogger("event_service").warning(
            "%s is not set: creating, listing and cancelling tasks will be refused", settings.ADMIN_TOKEN.name)
    os.environ[settings.DB.name] = url
    uvicorn.run("event_service.api.app:app_from_env", factory=True, host=args.host, port=args.port,
                workers=args.workers, log_level=args.log_level, access_log=args.access_log)
    return 0


def _demo(args: argparse.Namespace) -> int:
    if args.without_airflow:
        from event_service.cli.demo import run_demo

        return run_demo(args.workdir, files=args.files, events=args.events_per_file * args.files,
                        events_per_range=args.events_per_range, runners=args.runners, cost_ms=args.cost_ms)
    from event_service.cli.airflow_demo import run_dag_demo

    return run_dag_demo(args.workdir, files=args.files, events_per_file=args.events_per_file,
                        per_range=args.events_per_range, slots=args.runners)


def _make_input(args: argparse.Namespace) -> int:
    from event_service.inputs.generate import (
        DEFAULT_SEED,
        INPUTS_FILE,
        inputs_yaml,
        make_inputs,
    )

    seed = DEFAULT_SEED if args.seed is None else args.seed
    inputs = make_inputs(args.out, events=args.events, files=args.files, seed=seed, force=args.force)
    print(inputs_yaml(inputs), end="")
    print(f"# {sum(item.events for item in inputs)} events in {len(inputs)} files; "
          f"this list is also in {Path(args.out).resolve() / INPUTS_FILE}", file=sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="event-service", description="Event service for HEP production.")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="serve the dispatch API")
    serve.add_argument("--db", help=f"ledger database URL (default: ${settings.DB.name})")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--workers", type=int, default=1, help="uvicorn worker processes")
    serve.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    serve.add_argument("--access-log", action="store_true", help="log every request")
    serve.set_defaults(run=_serve)

    demo = commands.add_parser("demo", help="run one task end to end on SQLite and a local object store")
    demo.add_argument("--workdir", type=Path, default=Path(".demo"), help="emptied and filled by the demo")
    demo.add_argument("--files", type=int, default=2)
    demo.add_argument("--events-per-file", type=int, default=500)
    demo.add_argument("--events-per-range", type=int, default=10)
    demo.add_argument("--runners", type=int, default=2, help="pilot slots (with Airflow) or payload runners")
    demo.add_argument("--cost-ms", type=float, default=1.0, help="payload CPU milliseconds per event")
    demo.add_argument("--without-airflow", action="store_true",
                      help="serve the task over HTTP and drain it with payload runners, the first one killed "
                           "midway, instead of running its DAG")
    demo.set_defaults(run=_demo)

    make_input = commands.add_parser("make-input", help="write generator-like input ROOT files and their inputs list")
    make_input.add_argument("--events", type=int, required=True, help="events in the whole data set")
    make_input.add_argument("--files", type=int, required=True, help="number of files to spread them over")
    make_input.add_argument("--out", type=Path, required=True, help="folder to write (new or empty)")
    make_input.add_argument("--seed", type=int, help="random seed (default 20131); same arguments, same events")
    make_input.add_argument("--force", action="store_true", help="write into a non-empty folder, overwriting")
    make_input.set_defaults(run=_make_input)

    add_commands(commands)  # tasks, status, create, cancel: clients of a dispatch API
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return int(args.run(args))
    except (EventServiceError, OSError) as exc:  # the project's errors; files, connections
        print(f"event-service {args.command}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

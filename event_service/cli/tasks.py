"""The `event-service` commands that talk to a dispatch API: tasks, status [--watch], create, cancel."""

from __future__ import annotations

import argparse
import functools
import logging
import os
import sys
import time
from collections import deque
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from event_service import settings
from event_service.api.client import AdminClient, DispatchClient
from event_service.api.errors import DispatchError
from event_service.cli.errors import CommandError
from event_service.errors import EventServiceError
from event_service.inputs.errors import InputCheckError
from event_service.messages import TaskStatus
from event_service.spec import TaskSpec
from event_service.statuses import RangeStatus, TaskState

TIMEOUT_S = 30.0
S = RangeStatus

# Statuses as the table and the progress bar group them: (label, statuses, colour), in the bar's order.
GROUPS: tuple[tuple[str, tuple[RangeStatus, ...], str], ...] = (
    ("merged", (S.MERGED, S.DONE), "blue"),
    ("finished", (S.FINISHED,), "green"),
    ("running", (S.RUNNING,), "cyan"),
    ("sent", (S.SENT,), "yellow"),
    ("ready", (S.READY,), "grey50"),
    ("failed", (S.FAILED, S.CORRUPTED), "bright_red"),
    ("fatal", (S.FATAL,), "red"),
    ("cancelled", (S.CANCELLED,), "magenta"),
)
STATE_STYLE = {TaskState.RUNNING: "cyan", TaskState.DONE: "green", TaskState.INCOMPLETE: "red",
               TaskState.CANCELLED: "magenta"}


# -- figures ---------------------------------------------------------------------------------------------

def grouped(status: TaskStatus) -> dict[str, int]:
    """Ranges per display group (``merged`` holds merged and done; ``failed`` failed and corrupted)."""
    return {label: sum(status.counts.get(s, 0) for s in members) for label, members, _ in GROUPS}


def percent(status: TaskStatus) -> float:
    return 100.0 * status.events_done / status.events_total if status.events_total else 100.0


def timestamp(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def duration(seconds: float) -> str:
    whole = int(round(seconds))
    hours, rest = divmod(whole, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}"


class RateMeter:
    """Events per second over the last ``window_s`` seconds of samples of events done, and the time left."""

    def __init__(self, window_s: float = 30.0) -> None:
        self.window_s = window_s
        self.samples: deque[tuple[float, int]] = deque()

    def add(self, at: float, done: int) -> None:
        self.samples.append((at, done))
        while len(self.samples) > 2 and self.samples[1][0] <= at - self.window_s:
            self.samples.popleft()

    @property
    def rate(self) -> float | None:
        """Events per second; None until two samples exist. Never negative (re-dispatched outputs)."""
        if len(self.samples) < 2:
            return None
        (t0, d0), (t1, d1) = self.samples[0], self.samples[-1]
        return max(0.0, (d1 - d0) / (t1 - t0)) if t1 > t0 else None

    def eta(self, status: TaskStatus) -> float | None:
        """Seconds until every event is done at the current rate; None while the rate is unknown or zero."""
        rate = self.rate
        left = status.events_total - status.events_done
        if left <= 0:
            return 0.0
        return left / rate if rate else None


def _no_rate(status: TaskStatus, measuring: str) -> str:
    return measuring if status.state == TaskState.RUNNING else "no rate measured"


def progress_line(status: TaskStatus, meter: RateMeter) -> str:
    """One plain line of progress, for output that is not a terminal."""
    ranges = ", ".join(f"{count} {label}" for label, count in grouped(status).items() if count)
    rate = meter.rate
    eta = meter.eta(status)
    return (f"{status.task} {status.state.value} | ranges {ranges or 'none'} | events {status.events_done}/"
            f"{status.events_total} ({percent(status):.1f}%) | "
            f"{_no_rate(status, 'rate measuring') if rate is None else f'{rate:.1f} events/s'} | "
            f"ETA {'unknown' if eta is None else duration(eta)} | {status.live_workers} workers")


def bar(status: TaskStatus, width: int) -> Text:
    """The ranges as one bar of ``width`` cells, a coloured segment per status group (largest remainders)."""
    counts = grouped(status)
    total = sum(counts.values())
    text = Text()
    if not total:
        return text.append("━" * width, style="grey23")
    shares = {label: count * width / total for label, count in counts.items()}
    cells = {label: int(share) for label, share in shares.items()}
    spare = width - sum(cells.values())
    for label in sorted(shares, key=lambda name: shares[name] - cells[name], reverse=True)[:spare]:
        cells[label] += 1
    for label, _members, colour in GROUPS:
        text.append("━" * cells[label], style=colour)
    return text


def progress_view(status: TaskStatus, meter: RateMeter, width: int = 60) -> Group:
    """The live display: a title, the multi-coloured range bar, counts per status, events, rate and ETA."""
    title = Text.assemble((status.task, "bold"), "  ", (status.state.value, STATE_STYLE[status.state]),
                          f"  {status.live_workers} live workers  {status.ranges} ranges")
    line = bar(status, width)
    line.append(f" {percent(status):5.1f}%")
    legend = Text()
    for label, _members, colour in GROUPS:
        count = grouped(status)[label]
        if count:
            legend.append("■ ", style=colour).append(f"{label} {count}   ")
    rate, eta = meter.rate, meter.eta(status)
    figures = Text(f"events {status.events_done:,}/{status.events_total:,}   "
                   f"{_no_rate(status, 'measuring rate') if rate is None else f'{rate:,.1f} events/s'}   "
                   f"ETA {'unknown' if eta is None else duration(eta)}")
    return Group(title, line, legend, figures)


# -- output ------------------------------------------------------------------------------------------------

# RUNNING counts the ranges in flight (sent or running); failed and corrupted ranges are re-queued at once.
COLUMNS = ("TASK", "STATE", "RANGES", "READY", "RUNNING", "FINISHED", "MERGED", "FATAL", "CANCELLED", "EVENTS",
           "DONE", "WORKERS", "CREATED")


def table_rows(statuses: Sequence[TaskStatus]) -> list[list[str]]:
    rows = []
    for status in statuses:
        counts = grouped(status)
        figures = (counts["ready"], counts["sent"] + counts["running"], counts["finished"], counts["merged"],
                   counts["fatal"], counts["cancelled"])
        rows.append([status.task, status.state.value, str(status.ranges), *map(str, figures),
                     f"{status.events_done}/{status.events_total}", f"{percent(status):.1f}%",
                     str(status.live_workers), timestamp(status.created_at)])
    return rows


def plain_table(rows: Sequence[Sequence[str]]) -> str:
    """Columns separated by two spaces, numbers right-aligned: easy to read and to cut with awk."""
    widths = [max(len(row[i]) for row in [COLUMNS, *rows]) for i in range(len(COLUMNS))]
    text_columns = {0, 1, len(COLUMNS) - 1}
    lines = []
    for row in [COLUMNS, *rows]:
        cells = [cell.ljust(w) if i in text_columns else cell.rjust(w)
                 for i, (cell, w) in enumerate(zip(row, widths, strict=True))]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def rich_table(statuses: Sequence[TaskStatus]) -> Table:
    table = Table(box=None, header_style="bold", pad_edge=False, padding=(0, 1), collapse_padding=True)
    for i, name in enumerate(COLUMNS):
        table.add_column(name, justify="left" if i in (0, 1, len(COLUMNS) - 1) else "right", no_wrap=True,
                         min_width=None if i == 0 else len(name) if name != "CREATED" else 11)
    for status, row in zip(statuses, table_rows(statuses), strict=True):
        created = datetime.fromtimestamp(status.created_at, UTC).strftime("%m-%d %H:%M")
        table.add_row(row[0], Text(row[1], style=STATE_STYLE[status.state]), *row[2:-1], created)
    return table


def status_lines(status: TaskStatus) -> list[str]:
    ranges = ", ".join(f"{label} {count}" for label, count in grouped(status).items() if count)
    return [f"task      {status.task}",
            f"state     {status.state.value}",
            f"ranges    {status.ranges}: {ranges or 'none'}",
            f"events    {status.events_done} of {status.events_total} done ({percent(status):.1f}%)",
            f"workers   {status.live_workers} live",
            f"created   {timestamp(status.created_at)}"]


# -- connections and errors --------------------------------------------------------------------------------

def _server(args: argparse.Namespace) -> str:
    server = args.server or settings.URL.get()
    if not server:
        raise CommandError(f"no server: give --server URL or set {settings.URL.name} (e.g. http://airflow:8080/event-service)",
                           2)
    if not server.startswith(("http://", "https://")):
        raise CommandError(f"--server must be an http:// or https:// URL, got {server!r}", 2)
    return server.rstrip("/")


def _token(args: argparse.Namespace) -> str:
    token = args.token or settings.ADMIN_TOKEN.get()
    if not token:
        raise CommandError(f"no token: give --token or set {settings.ADMIN_TOKEN.name}", 2)
    return str(token)


def _admin(args: argparse.Namespace, retries: int = 1) -> AdminClient:
    return AdminClient(_server(args), _token(args), timeout_s=TIMEOUT_S, retries=retries)


def _task_client(args: argparse.Namespace, retries: int = 1) -> DispatchClient:
    return DispatchClient(_server(args), args.task, _token(args), timeout_s=TIMEOUT_S, retries=retries)


def _unreachable(server: str, exc: ConnectionError) -> str:
    cause = str(exc.__cause__ or exc)
    for marker, reason in (("Connection refused", "connection refused"), ("timed out", "timed out"),
                           ("NameResolutionError", "unknown host"), ("Name or service not known", "unknown host"),
                           ("No route to host", "no route to host"), ("SSLError", "TLS handshake failed")):
        if marker in cause:
            return f"cannot reach the dispatch API at {server}: {reason}"
    return f"cannot reach the dispatch API at {server}: {cause.splitlines()[0] if cause else type(exc).__name__}"


def _refused(server: str, exc: DispatchError) -> str:
    detail = str(exc.detail) if exc.detail else "no explanation"
    if exc.status == 401:
        return f"HTTP 401: {detail}; give --token or set {settings.ADMIN_TOKEN.name}"
    if exc.status == 404 and detail == "Not Found":
        return (f"HTTP 404 for {exc.url}: is {server} the dispatch API's base URL (with its path prefix, e.g. "
                f"http://airflow:8080/event-service)?")
    return f"HTTP {exc.status}: {detail}"


Command = Callable[[argparse.Namespace], int]


def _one_line(command: Command) -> Command:
    """Every failure as one line on stderr (``event-service <command>: …``) and a non-zero exit code."""

    @functools.wraps(command)
    def run(args: argparse.Namespace) -> int:
        client_log = logging.getLogger("event_service.api.client")
        level = client_log.level
        client_log.setLevel(logging.ERROR)  # a retry is not worth a line here
        server = args.server or settings.URL.get() or ""
        try:
            return command(args)
        except CommandError as exc:
            message, code = str(exc), exc.exit_code
        except DispatchError as exc:
            message, code = _refused(server.rstrip("/"), exc), 1
        except ConnectionError as exc:  # the server does not answer
            message, code = _unreachable(server.rstrip("/"), exc), 1
        except (EventServiceError, OSError) as exc:  # a bad spec, inputs, a file that cannot be read or written
            message, code = str(exc) or type(exc).__name__, 1
        except KeyboardInterrupt:
            return 130
        finally:
            client_log.setLevel(level)
        print(f"event-service {args.command}: {message}", file=sys.stderr)
        return code

    return run


# -- the commands ------------------------------------------------------------------------------------------

def _console() -> Console:
    return Console(file=sys.stdout, highlight=False)


@_one_line
def run_tasks(args: argparse.Namespace) -> int:
    with _admin(args) as admin:
        statuses = sorted(admin.tasks(), key=lambda s: s.created_at)
    if not statuses:
        print(f"no tasks on {_server(args)}", file=sys.stderr)
        return 0
    console = _console()
    if console.is_terminal:
        console.print(rich_table(statuses))
    else:
        print(plain_table(table_rows(statuses)), flush=True)
    return 0


@_one_line
def run_status(args: argparse.Namespace) -> int:
    with _task_client(args, retries=2 if args.watch else 1) as client:
        if not args.watch:
            print("\n".join(status_lines(client.status())), flush=True)
            return 0
        return _watch(client, args.interval)


def _watch(client: DispatchClient, interval_s: float) -> int:
    """Poll the task's status every ``interval_s`` s until it is done or cancelled (exit 0), incomplete (exit 1),
    or Ctrl-C (exit 0)."""
    meter = RateMeter(window_s=max(30.0, 5 * interval_s))
    console = _console()
    try:
        if not console.is_terminal:
            while True:
                status = client.status()
                meter.add(time.monotonic(), status.events_done)
                print(progress_line(status, meter), flush=True)
                if status.state != TaskState.RUNNING:
                    return 1 if status.state == TaskState.INCOMPLETE else 0
                time.sleep(interval_s)
        with Live(console=console, auto_refresh=False, transient=False) as live:
            while True:
                status = client.status()
                meter.add(time.monotonic(), status.events_done)
                width = max(10, min(80, console.width - 8))
                live.update(progress_view(status, meter, width), refresh=True)
                if status.state != TaskState.RUNNING:
                    return 1 if status.state == TaskState.INCOMPLETE else 0
                time.sleep(interval_s)
    except KeyboardInterrupt:
        return 0


@_one_line
def run_create(args: argparse.Namespace) -> int:
    spec = TaskSpec.from_file(args.spec)
    if args.check_inputs:
        from event_service.inputs.check import require_readable_inputs  # uproot: loaded only when asked

        try:
            require_readable_inputs(spec.name, spec.inputs)
        except InputCheckError as exc:
            problems = "; ".join(f"{where}: {why}" for where, why in exc.problems.items())
            raise CommandError(f"{args.spec}: {len(exc.problems)} of {exc.total} inputs cannot be used "
                               f"(nothing created): {problems}") from None
    token_file: Path | None = args.token_file
    descriptor = None
    if token_file is not None:
        # Opened before the task exists: a token that cannot be written would be lost for good.
        try:
            descriptor = os.open(token_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            raise CommandError(f"{token_file} exists; the token file must be new") from None
        except OSError as exc:
            raise CommandError(f"{token_file}: cannot write the token file: {exc.strerror or exc}") from None
    try:
        with _admin(args, retries=0) as admin:
            created = admin.create_task(spec)
    except BaseException:
        if descriptor is not None and token_file is not None:
            os.close(descriptor)
            token_file.unlink(missing_ok=True)
        raise
    print(f"task    {created.task}\nranges  {created.ranges}")
    if descriptor is not None:
        with os.fdopen(descriptor, "w") as out:
            out.write(created.token + "\n")
        print(f"token   written to {token_file} (mode 0600)", flush=True)
    else:
        print(f"token   {created.token}", flush=True)
        print("event-service create: the task token is shown this once; the server keeps only its hash",
              file=sys.stderr)
    return 0


@_one_line
def run_cancel(args: argparse.Namespace) -> int:
    with _admin(args) as admin:
        status = admin.cancel(args.task)
    print("\n".join(status_lines(status)), flush=True)
    return 0


def _interval(text: str) -> float:
    value = float(text)
    if not 0 < value <= 3600:
        raise argparse.ArgumentTypeError(f"must be between 0 and 3600 seconds, got {text}")
    return value


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``tasks``, ``status``, ``create`` and ``cancel`` to the ``event-service`` parser."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--server", metavar="URL", help=f"the dispatch API, e.g. http://airflow:8080/event-service "
                                                        f"(default: ${settings.URL.name})")
    common.add_argument("--token", help=f"the admin token (default: ${settings.ADMIN_TOKEN.name})")

    tasks = commands.add_parser("tasks", parents=[common], help="list the tasks with their progress (a table)")
    tasks.set_defaults(run=run_tasks)

    status = commands.add_parser("status", parents=[common], help="one task's ranges per status, events, workers")
    status.add_argument("task")
    status.add_argument("--watch", action="store_true",
                        help="follow the task live (a progress bar with rate and ETA) until it is done, incomplete "
                             "(exit 1) or cancelled")
    status.add_argument("--interval", type=_interval, default=2.0, metavar="S", help="seconds between polls (2)")
    status.set_defaults(run=run_status)
    status.epilog = "--token also takes the task's own token."

    create = commands.add_parser("create", parents=[common], help="create a task from a spec file (YAML or JSON)")
    create.add_argument("spec", type=Path)
    create.add_argument("--check-inputs", action="store_true",
                        help="open every input from here first (they must be readable from this machine)")
    create.add_argument("--token-file", type=Path, metavar="PATH",
                        help="write the task token to this new file (mode 0600) instead of printing it")
    create.set_defaults(run=run_create)

    cancel = commands.add_parser("cancel", parents=[common],
                                 help="cancel a task: open ranges are cancelled, its token revoked")
    cancel.add_argument("task")
    cancel.set_defaults(run=run_cancel)

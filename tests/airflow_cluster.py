"""Airflow on PostgreSQL with LocalExecutor or CeleryExecutor, its components run as processes on 127.0.0.1."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar

from psycopg2 import sql
from sqlalchemy.engine import make_url

from tests import pg
from tests.servers import S3Server, free_ports, log_tail

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
AIRFLOW = BIN / "airflow"
LOCAL_HOST = "127.0.0.1"
MARKER_ENV = "EVENT_SERVICE_TEST_CLUSTER"
"""Set in every component's environment, so in every process they start: one way to find them (see ``pids``)."""
STOP_TIMEOUT_S = 30.0
FINAL_RUN_STATES = frozenset({"success", "failed"})

T = TypeVar("T")


class ClusterError(RuntimeError):
    """The cluster did not start, a command failed, or a wait ran out of time; the message has the logs."""


# --------------------------------------------------------------------------- databases


@contextlib.contextmanager
def pg_database(server_url: str, prefix: str) -> Iterator[str]:
    """A new database ``<prefix>_<hex>`` on the server; yields its SQLAlchemy URL, drops it (forcibly) after."""
    name = f"{prefix}_{secrets.token_hex(5)}"
    with contextlib.closing(pg.connect(server_url)) as conn, conn.cursor() as cur:
        cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield make_url(server_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with contextlib.closing(pg.connect(server_url)) as conn, conn.cursor() as cur:
            cur.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def postgres_connection(url: str) -> dict[str, Any]:
    """An Airflow ``postgres`` connection (JSON form) for a SQLAlchemy URL."""
    parsed = make_url(url)
    conn: dict[str, Any] = {"conn_type": "postgres", "host": parsed.host or LOCAL_HOST,
                            "schema": parsed.database or "postgres"}
    if parsed.port:
        conn["port"] = parsed.port
    if parsed.username:
        conn["login"] = parsed.username
    if parsed.password:
        conn["password"] = parsed.password
    return conn


# --------------------------------------------------------------------------- the cluster


@dataclasses.dataclass
class ClusterConfig:
    """What a cluster runs on and how it is set up; ``settings`` adds or overrides environment variables."""

    home: Path
    """AIRFLOW_HOME: airflow.cfg, task logs, the components' logs (``<component>.log``), pilot work dirs."""
    metadata_url: str
    """SQLAlchemy URL of an empty PostgreSQL database for Airflow's metadata."""
    ledger_url: str
    """SQLAlchemy URL of the PostgreSQL database of the event ledger (connection ``event_service_ledger``)."""
    dags_folder: Path = REPO / "dags"
    tasks_folder: Path | None = None
    s3: S3Server | None = None
    """An S3 server whose keys go into the ``event_service_store`` connection (and the AWS variables)."""
    admin_token: str = dataclasses.field(default_factory=lambda: secrets.token_urlsafe(24))
    parallelism: int | None = 8
    """``[core] parallelism``: LocalExecutor's worker processes, the task instances run at once (None: Airflow's
    default, 32, too many for a small machine)."""
    payload_workers: int = 1
    poll_interval: float = 2.0
    api_workers: int = 1
    min_heartbeat_interval: int = 1
    start_timeout: float = 300.0
    """Seconds for the metadata database's migration and the components' start."""
    command_timeout: float = 180.0
    """Seconds any one ``airflow`` command may take."""
    settings: dict[str, str] = dataclasses.field(default_factory=dict)
    executor: str = "LocalExecutor"
    """``LocalExecutor``, or ``CeleryExecutor`` with ``celery_workers`` ``airflow celery worker`` processes."""
    celery_broker_url: str | None = None
    """The Celery broker (a Redis URL) for ``CeleryExecutor``; results go to the metadata database."""
    celery_workers: int = 2
    celery_concurrency: int = 4


WORKER_NAME_ENV = "EVENT_SERVICE_TEST_WORKER"


def worker_hostname() -> str:
    """Airflow's ``hostname_callable`` for the cluster's Celery workers: this host's name and the worker's, so
    that ``task_instance.hostname`` tells which of several workers on one machine ran a task."""
    import socket

    worker = os.environ.get(WORKER_NAME_ENV)
    return f"{socket.gethostname()}-{worker}" if worker else socket.gethostname()


@dataclasses.dataclass(frozen=True)
class DagRunResult:
    """A DAG run as the metadata database records it (times are Unix seconds), and its task instances."""

    dag_id: str
    run_id: str
    state: str
    queued_at: float | None
    start_date: float | None
    end_date: float | None
    task_states: dict[str, int]

    @property
    def seconds(self) -> float | None:
        """From queued (the trigger) to the end of the run."""
        if self.queued_at is None or self.end_date is None:
            return None
        return self.end_date - self.queued_at


def _epoch(value: Any) -> float | None:
    return None if value is None else float(value.timestamp())


class AirflowCluster:
    """Airflow's api-server, scheduler, dag-processor and triggerer on one metadata database, as processes.

    The dispatch API is the plugin's, mounted on this api-server under ``/event-service``; the connections
    ``event_service_ledger``, ``event_service_store`` (when an S3 server is given) and ``event_service_api``
    (the mounted API, with the admin token) come from ``AIRFLOW_CONN_*`` variables. ``stop`` makes sure that
    no process of the cluster is left (see ``pids``).
    """

    def __init__(self, config: ClusterConfig) -> None:
        self.config = config
        self.cluster_id = secrets.token_hex(8)
        self.port = free_ports(1)[0]
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.log_dir = config.home / "component-logs"
        self.env = self._environment()

    # ----------------------------------------------------------------------- configuration

    @property
    def url(self) -> str:
        return f"http://{LOCAL_HOST}:{self.port}"

    @property
    def dispatch_url(self) -> str:
        """The dispatch API mounted by the plugin."""
        return f"{self.url}/event-service"

    def _environment(self) -> dict[str, str]:
        config = self.config
        ours = ("AIRFLOW", "AWS_", "EVENT_SERVICE", "PYTEST", "_AIRFLOW")
        env = {name: value for name, value in os.environ.items() if not name.startswith(ours)}
        secret = secrets.token_urlsafe(32)
        env.update({
            MARKER_ENV: self.cluster_id,
            "PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}",
            "PYTHONUNBUFFERED": "1",
            "AIRFLOW_HOME": str(config.home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(config.dags_folder),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "false",
            "AIRFLOW__CORE__EXECUTOR": config.executor,
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.url}/execution/",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": make_url(config.metadata_url).set(
                drivername="postgresql+psycopg2").render_as_string(hide_password=False),
            "AIRFLOW__DATABASE__SQL_ALCHEMY_POOL_SIZE": "3",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_MAX_OVERFLOW": "6",
            "AIRFLOW__API__HOST": LOCAL_HOST,
            "AIRFLOW__API__PORT": str(self.port),
            "AIRFLOW__API__BASE_URL": self.url,
            "AIRFLOW__API__WORKERS": str(config.api_workers),
            "AIRFLOW__API__SECRET_KEY": secret,
            "AIRFLOW__API_AUTH__JWT_SECRET": secret,
            "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "false",
            # A task's supervisor notices that its process ended only when its wait for the next heartbeat
            # (at most this long, default 5 s) runs out: every task instance ends up to that late. It also
            # narrows the race in which the scheduler fails a deferred task whose trigger fired before the
            # executor's report of the deferral came in (apache/airflow#67287, not fixed in 3.3).
            "AIRFLOW__WORKERS__MIN_HEARTBEAT_INTERVAL": str(config.min_heartbeat_interval),
            "AIRFLOW__EVENT_SERVICE__POLL_INTERVAL": str(config.poll_interval),
            "AIRFLOW__EVENT_SERVICE__PAYLOAD_WORKERS": str(config.payload_workers),
            "AIRFLOW_CONN_EVENT_SERVICE_LEDGER": json.dumps(postgres_connection(config.ledger_url)),
            "AIRFLOW_CONN_EVENT_SERVICE_API": json.dumps({"conn_type": "http", "host": self.dispatch_url,
                                                          "password": config.admin_token}),
            "EVENT_SERVICE_ADMIN_TOKEN": config.admin_token,
            "EVENT_SERVICE_WORKDIR": str(config.home / "work"),
        })
        if config.parallelism is not None:
            env["AIRFLOW__CORE__PARALLELISM"] = str(config.parallelism)
        if config.executor == "CeleryExecutor":
            if config.celery_broker_url is None:
                raise ValueError("CeleryExecutor needs celery_broker_url (a Redis URL)")
            env.update({
                "AIRFLOW__CELERY__BROKER_URL": config.celery_broker_url,
                "AIRFLOW__CELERY__RESULT_BACKEND": "db+" + make_url(config.metadata_url).set(
                    drivername="postgresql").render_as_string(hide_password=False),
                "AIRFLOW__CELERY__WORKER_CONCURRENCY": str(config.celery_concurrency),
                "AIRFLOW__CORE__HOSTNAME_CALLABLE": "tests.airflow_cluster.worker_hostname",
                "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")])),
            })
        if config.tasks_folder is not None:
            env["AIRFLOW__EVENT_SERVICE__TASKS_FOLDER"] = str(config.tasks_folder)
        if config.s3 is not None:
            s3 = config.s3
            env["AIRFLOW_CONN_EVENT_SERVICE_STORE"] = json.dumps({
                "conn_type": "aws", "login": s3.access_key, "password": s3.secret_key,
                "extra": {"endpoint_url": s3.endpoint_url, "region_name": s3.region}})
            # payload-runner takes S3 keys from boto3's chain only: the pilots get them from these variables.
            env.update(AWS_ACCESS_KEY_ID=s3.access_key, AWS_SECRET_ACCESS_KEY=s3.secret_key,
                       AWS_DEFAULT_REGION=s3.region)
        env.update(config.settings)
        return env

    # ----------------------------------------------------------------------- commands and processes

    def airflow(self, *args: str, timeout: float | None = None) -> str:
        """Run an ``airflow`` command against this cluster; its standard output (ClusterError on failure)."""
        command = [str(AIRFLOW), *args]
        timeout = self.config.command_timeout if timeout is None else timeout
        try:
            done = subprocess.run(command, env=self.env, cwd=self.config.home, stdin=subprocess.DEVNULL,
                                  capture_output=True, text=True, timeout=timeout, check=False)
        except subprocess.TimeoutExpired as exc:
            raise ClusterError(f"`airflow {' '.join(args)}` did not finish in {timeout:.0f} s:\n"
                               f"{_text(exc.stdout)[-2000:]}\n{_text(exc.stderr)[-3000:]}") from None
        if done.returncode != 0:
            raise ClusterError(f"`airflow {' '.join(args)}` exited with {done.returncode}:\n{done.stdout[-2000:]}\n"
                               f"{done.stderr[-3000:]}")
        return done.stdout

    def log_path(self, component: str) -> Path:
        return self.log_dir / f"{component}.log"

    def _spawn(self, component: str, *args: str, name: str | None = None,
               env: Mapping[str, str] | None = None) -> None:
        name = name or component
        with self.log_path(name).open("ab") as log:
            self.processes[name] = subprocess.Popen(
                [str(AIRFLOW), component, *args], env={**self.env, **(env or {})}, cwd=self.config.home,
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def start(self) -> None:
        """Migrate the metadata database, start the four components, wait until the api-server answers."""
        timeout = self.config.start_timeout
        deadline = time.monotonic() + timeout
        for folder in (self.config.home, self.log_dir, self.config.home / "work"):
            folder.mkdir(parents=True, exist_ok=True)
        self.airflow("db", "migrate", timeout=timeout)
        self._spawn("api-server", "--host", LOCAL_HOST, "--port", str(self.port),
                    "--workers", str(self.config.api_workers))
        self._spawn("scheduler", "--skip-serve-logs")
        self._spawn("dag-processor")
        self._spawn("triggerer", "--skip-serve-logs")
        if self.config.executor == "CeleryExecutor":
            for index in range(1, self.config.celery_workers + 1):
                worker = f"worker{index}"
                self._spawn("celery", "worker", "--celery-hostname", f"{worker}@%h", "--concurrency",
                            str(self.config.celery_concurrency), "--skip-serve-logs", "--without-mingle",
                            "--without-gossip", name=f"celery-{worker}", env={WORKER_NAME_ENV: worker})
        self.wait_until(self._api_ready, "the api-server and the mounted dispatch API answer",
                        max(1.0, deadline - time.monotonic()))

    def _get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"{self.url}{path}", timeout=5) as reply:
                return reply.status, reply.read().decode(errors="replace")
        except urllib.error.HTTPError as exc:
            with contextlib.closing(exc):
                return exc.code, exc.read().decode(errors="replace")
        except (urllib.error.URLError, OSError):
            return 0, ""

    def _api_ready(self) -> bool:
        return self._get("/api/v2/monitor/health")[0] == 200 and self._get("/event-service/api/v1/health")[0] == 200

    def check_alive(self) -> None:
        """Raise ClusterError (with the logs) if a component has exited."""
        gone = {name: p.returncode for name, p in self.processes.items() if p.poll() is not None}
        if gone:
            raise ClusterError(f"Airflow components exited: {gone}\n{self.diagnostics()}")

    def wait_until(self, done: Callable[[], T | None], what: str, timeout: float, interval: float = 1.0) -> T:
        """Call ``done()`` until it returns something true (returned); ClusterError after ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            self.check_alive()
            result = done()
            if result:
                return result
            if time.monotonic() > deadline:
                raise ClusterError(f"timed out after {timeout:.0f} s waiting until {what}\n{self.diagnostics()}")
            time.sleep(interval)

    # ----------------------------------------------------------------------- DAGs and runs

    def query(self, statement: str, params: Mapping[str, Any] | None = None) -> list[tuple[Any, ...]]:
        """Rows of a query on the metadata database."""
        with contextlib.closing(pg.connect(self.config.metadata_url)) as conn, conn.cursor() as cur:
            cur.execute(statement, params)
            return list(cur.fetchall())

    def dag_parsed(self, dag_id: str) -> bool:
        """The dag-processor has parsed and serialized the DAG."""
        return bool(self.query("SELECT 1 FROM dag JOIN serialized_dag USING (dag_id) "
                               "WHERE dag_id = %(dag)s AND NOT dag.is_stale", {"dag": dag_id}))

    def import_errors(self) -> list[tuple[str, str]]:
        return [(str(a), str(b)) for a, b in self.query("SELECT filename, stacktrace FROM import_error")]

    def wait_for_dag(self, dag_id: str, timeout: float = 180.0) -> None:
        """Wait until the dag-processor has parsed the DAG and the CLI lists it."""
        self.wait_until(lambda: self.dag_parsed(dag_id), f"DAG {dag_id} is parsed", timeout)
        listed = json_output(self.airflow("dags", "list", "--output", "json"))
        if dag_id not in {item["dag_id"] for item in listed}:
            raise ClusterError(f"`airflow dags list` does not list {dag_id}: {listed}")

    def trigger(self, dag_id: str, conf: Mapping[str, Any] | None = None) -> str:
        """Unpause the DAG and start a run with ``airflow dags trigger``; the run id."""
        self.airflow("dags", "unpause", dag_id)
        args = ["dags", "trigger", dag_id, "--output", "json"]
        if conf is not None:
            args += ["--conf", json.dumps(dict(conf))]
        reply = json_output(self.airflow(*args))
        run = reply[0] if isinstance(reply, list) else reply
        return str(run["dag_run_id"] if "dag_run_id" in run else run["run_id"])

    def run_result(self, dag_id: str, run_id: str) -> DagRunResult | None:
        rows = self.query("SELECT state, queued_at, start_date, end_date FROM dag_run "
                          "WHERE dag_id = %(dag)s AND run_id = %(run)s", {"dag": dag_id, "run": run_id})
        if not rows:
            return None
        state, queued, started, ended = rows[0]
        counts = self.query("SELECT coalesce(state, 'none'), count(*) FROM task_instance "
                            "WHERE dag_id = %(dag)s AND run_id = %(run)s GROUP BY 1", {"dag": dag_id, "run": run_id})
        return DagRunResult(dag_id, run_id, str(state), _epoch(queued), _epoch(started), _epoch(ended),
                            {str(s): int(n) for s, n in counts})

    def wait_for_run(self, dag_id: str, run_id: str, timeout: float, interval: float = 1.0) -> DagRunResult:
        """Poll the metadata database until the run is final; ClusterError with the logs when it failed."""
        def final() -> DagRunResult | None:
            result = self.run_result(dag_id, run_id)
            return result if result is not None and result.state in FINAL_RUN_STATES else None

        try:
            result = self.wait_until(final, f"run {run_id} of {dag_id} is final", timeout, interval)
        except ClusterError as exc:
            raise ClusterError(f"{exc}\n{self.task_logs_tail(dag_id, run_id)}") from None
        if result.state != "success":
            raise ClusterError(f"run {run_id} of {dag_id} ended {result.state}: {result.task_states}\n"
                               f"{self.task_logs_tail(dag_id, run_id)}\n{self.diagnostics()}")
        return result

    def task_logs(self, dag_id: str, run_id: str, task_id: str | None = None) -> list[Path]:
        """The task log files of a run (every task, map index and attempt), by path."""
        root = self.config.home / "logs" / f"dag_id={dag_id}" / f"run_id={run_id}"
        pattern = f"task_id={task_id}/**/*.log" if task_id else "task_id=*/**/*.log"
        return sorted(root.glob(pattern))

    def task_logs_tail(self, dag_id: str, run_id: str, lines: int = 15) -> str:
        """The end of the last attempt's log of each task instance of the run that did not succeed."""
        failed = {str(t) for (t,) in self.query(
            "SELECT task_id FROM task_instance WHERE dag_id = %(dag)s AND run_id = %(run)s "
            "AND coalesce(state, 'none') NOT IN ('success', 'skipped')", {"dag": dag_id, "run": run_id})}
        last: dict[Path, Path] = {}
        for path in self.task_logs(dag_id, run_id):
            if any(part.removeprefix("task_id=") in failed for part in path.parts if part.startswith("task_id=")):
                last[path.parent] = path  # sorted: the highest attempt (and its trigger log) comes last
        return "\n".join(f"--- {path.relative_to(self.config.home)}\n{_short(log_tail(path, lines))}"
                         for path in list(last.values())[:6])

    def diagnostics(self, lines: int = 30) -> str:
        """The end of every component's log and any DAG import errors."""
        parts = [f"--- {name} (pid {p.pid}, exit {p.poll()}):\n{_short(log_tail(self.log_path(name), lines))}"
                 for name, p in self.processes.items()]
        with contextlib.suppress(Exception):  # the database may be what is broken
            parts += [f"--- import error in {name}:\n{trace[-1500:]}" for name, trace in self.import_errors()]
        return "\n".join(parts)

    # ----------------------------------------------------------------------- stopping

    def pids(self) -> list[int]:
        """Every live process of the cluster: those whose environment carries the marker, and those working in
        AIRFLOW_HOME (Airflow's workers and API server rename themselves with setproctitle, which overwrites
        the environment that /proc shows)."""
        marker = f"{MARKER_ENV}={self.cluster_id}".encode()
        home = str(self.config.home.resolve())
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            with contextlib.suppress(OSError):
                cwd = os.readlink(entry / "cwd")
                if cwd == home or cwd.startswith(home + os.sep) or \
                        marker in (entry / "environ").read_bytes().split(b"\0"):
                    found.append(int(entry.name))
        return found

    def stop(self) -> list[int]:
        """SIGTERM each component's process group, SIGKILL what is left after a grace period, then any other
        process of the cluster still alive; returns the pids that had to be killed that way."""
        for process in self.processes.values():
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for process in self.processes.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(max(0.1, deadline - time.monotonic()))
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        leftovers = self.pids()
        for pid in leftovers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        end = time.monotonic() + 10
        while self.pids() and time.monotonic() < end:
            time.sleep(0.1)
        return leftovers

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.stop()


def json_output(text: str) -> Any:
    """The JSON document a CLI command printed (``--output json``), among the log lines it printed too."""
    for line in reversed(text.splitlines()):
        if line.startswith(("[", "{")):
            with contextlib.suppress(ValueError):
                return json.loads(line)
    raise ClusterError(f"no JSON in the command's output:\n{text[-2000:]}")


def _short(text: str, width: int = 400) -> str:
    """Log lines cut to ``width`` characters (Airflow's JSON log lines carry whole tracebacks)."""
    return "\n".join(line if len(line) <= width else line[:width] + " …" for line in text.splitlines())


def _text(value: str | bytes | None) -> str:
    if value is None:
        return ""
    return value.decode(errors="replace") if isinstance(value, bytes) else value

"""PostgreSQL for the test suite: find (or start a throw-away) server and hand out per-test schemas."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import pwd
import re
import secrets
import shutil
import socket
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg2
import psycopg2.errors
import psycopg2.extensions
from psycopg2 import sql
from sqlalchemy.engine import make_url

log = logging.getLogger(__name__)

ENV_MODE = "EVENT_SERVICE_TEST_PG"
"""``throwaway`` forces a throw-away cluster; unset/empty/``auto`` means "use a running server if one answers"."""
ENV_URL = "EVENT_SERVICE_TEST_PG_URL"
"""SQLAlchemy URL of an existing server to use instead of probing 127.0.0.1:5432."""

LOCAL_HOST = "127.0.0.1"
LOCAL_PORT = 5432
LOCAL_USERS = ("postgres", "root")
CONNECT_TIMEOUT_S = 3
PG_LIB_DIR = Path("/usr/lib/postgresql")
PG_OS_USER = "postgres"
INSTALL_HINT = (
    "install Debian's `postgresql` package (`apt-get install postgresql`; "
    "`make test` does that via tools/ensure-test-deps.sh)"
)
ADMIN_APPLICATION_NAME = "pytest-pg-admin"


class PgUnavailable(RuntimeError):
    """No PostgreSQL server could be found or started for the tests."""


# --------------------------------------------------------------------------- connections


def connect_kwargs(url: str) -> dict[str, Any]:
    """psycopg2.connect() keyword arguments for a SQLAlchemy ``postgresql[+driver]://`` URL."""
    parsed = make_url(url)
    kwargs: dict[str, Any] = parsed.translate_connect_args(username="user", database="dbname")
    for key, value in parsed.query.items():
        if not isinstance(value, str):
            raise ValueError(f"repeated query parameter {key!r} in {redact(url)}")
        kwargs[key] = value
    kwargs.setdefault("connect_timeout", CONNECT_TIMEOUT_S)
    return kwargs


def connect(url: str, **overrides: Any) -> psycopg2.extensions.connection:
    """An autocommit psycopg2 connection to ``url`` (a SQLAlchemy URL); close it yourself."""
    conn: psycopg2.extensions.connection = psycopg2.connect(**{**connect_kwargs(url), **overrides})
    conn.autocommit = True
    return conn


def redact(url: str) -> str:
    """``url`` with any password masked, for messages."""
    return make_url(url).render_as_string(hide_password=True)


def probe(url: str) -> str | None:
    """None if a server answers at ``url``, else the connection error message."""
    try:
        with contextlib.closing(connect(url)) as conn, conn.cursor() as cur:
            cur.execute("SELECT 1")
    except psycopg2.OperationalError as exc:
        return str(exc).strip() or type(exc).__name__
    return None


# --------------------------------------------------------------------------- throw-away cluster


def _version_key(version_dir: Path) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", version_dir.name)) or (0,)


def find_pg_bindir(lib_dir: Path | None = None) -> Path | None:
    """The newest ``/usr/lib/postgresql/<version>/bin`` that has both initdb and pg_ctl, if any."""
    lib_dir = PG_LIB_DIR if lib_dir is None else lib_dir
    candidates = [
        version_dir / "bin"
        for version_dir in (lib_dir.iterdir() if lib_dir.is_dir() else ())
        if (version_dir / "bin" / "initdb").is_file() and (version_dir / "bin" / "pg_ctl").is_file()
    ]
    if not candidates:
        return None
    return max(candidates, key=lambda bindir: _version_key(bindir.parent))


def free_port(host: str = LOCAL_HOST) -> int:
    """A TCP port on ``host`` that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def _world_traversable(path: Path) -> bool:
    return all(os.stat(p).st_mode & stat.S_IXOTH for p in (path, *path.parents))


def _temp_base() -> str:
    """Where to create the cluster dir: the usual temp dir, unless the postgres OS user could not reach it."""
    base = tempfile.gettempdir()
    if os.geteuid() == 0 and not _world_traversable(Path(base)):
        return "/tmp"
    return base


@dataclasses.dataclass
class ThrowawayCluster:
    """A private PostgreSQL cluster in a temp dir, listening on 127.0.0.1:<port> only."""

    bindir: Path
    root: Path
    port: int = 0
    started: bool = False
    startup_seconds: float = 0.0

    @property
    def datadir(self) -> Path:
        return self.root / "data"

    @property
    def logfile(self) -> Path:
        return self.root / "postgres.log"

    @property
    def url(self) -> str:
        return f"postgresql://postgres@{LOCAL_HOST}:{self.port}/postgres"

    def _command(self, program: str, *args: str) -> list[str]:
        cmd = [str(self.bindir / program), *args]
        if os.geteuid() != 0:
            return cmd
        runuser = shutil.which("runuser")
        if runuser is None:
            raise PgUnavailable(f"running as root but `runuser` is missing; cannot run {program} as {PG_OS_USER}")
        return [runuser, "-u", PG_OS_USER, "--", *cmd]

    def _run(self, program: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self._command(program, *args),
            cwd=self.root,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def _log_tail(self, lines: int = 30) -> str:
        if not self.logfile.exists():
            return "(no server log)"
        return "\n".join(self.logfile.read_text(errors="replace").splitlines()[-lines:])

    @classmethod
    @contextlib.contextmanager
    def running(cls) -> Iterator[ThrowawayCluster]:
        """Start a cluster, yield it, and always stop it and remove its directory afterwards."""
        bindir = find_pg_bindir()
        if bindir is None:
            raise PgUnavailable(
                f"no PostgreSQL server answers and no initdb/pg_ctl found under {PG_LIB_DIR}/*/bin "
                f"to start a throw-away one: {INSTALL_HINT}"
            )
        cluster = cls(bindir=bindir, root=Path(tempfile.mkdtemp(prefix="evsvc-test-pg-", dir=_temp_base())))
        try:
            cluster._start()
            yield cluster
        finally:
            cluster._stop_and_remove()

    def _start(self) -> None:
        began = time.monotonic()
        if os.geteuid() == 0:
            # initdb and postgres refuse to run as root: the cluster belongs to the postgres OS user.
            try:
                user = pwd.getpwnam(PG_OS_USER)
            except KeyError as exc:
                raise PgUnavailable(f"running as root but there is no `{PG_OS_USER}` OS user; {INSTALL_HINT}") from exc
            os.chown(self.root, user.pw_uid, user.pw_gid)
        self.root.chmod(0o700)

        result = self._run(
            "initdb", "-D", str(self.datadir), "-A", "trust", "-U", "postgres",
            "--no-sync", "-E", "UTF8", "--locale=C",
        )  # fmt: skip
        if result.returncode != 0:
            raise PgUnavailable(f"initdb failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")

        for _attempt in range(3):
            self.port = free_port()
            options = (
                f"-c listen_addresses={LOCAL_HOST} -c port={self.port} "
                f"-c unix_socket_directories={self.root} -c fsync=off -c max_connections=200"
            )
            result = self._run(
                "pg_ctl", "-D", str(self.datadir), "-l", str(self.logfile), "-w", "-t", "60", "-o", options, "start"
            )
            if result.returncode == 0:
                self.started = True
                break
            if "already in use" not in self._log_tail():  # lost the race for the port: try another one
                break
        if not self.started:
            raise PgUnavailable(
                f"pg_ctl start failed ({result.returncode}):\n{result.stdout}\n{result.stderr}\n"
                f"server log:\n{self._log_tail()}"
            )

        deadline = time.monotonic() + 30
        while (error := probe(self.url)) is not None:
            if time.monotonic() > deadline:
                raise PgUnavailable(f"throw-away cluster does not accept connections: {error}\n{self._log_tail()}")
            time.sleep(0.1)
        self.startup_seconds = time.monotonic() - began
        log.info("throw-away PostgreSQL at %s (%s) up in %.2fs", self.url, self.root, self.startup_seconds)

    def stop(self, mode: str = "immediate") -> None:
        """Stop the server (``pg_ctl stop -m mode``) and keep its data: an outage that ``start`` ends."""
        result = self._run("pg_ctl", "-D", str(self.datadir), "-m", mode, "-w", "-t", "60", "stop")
        if result.returncode != 0:
            raise PgUnavailable(f"pg_ctl stop -m {mode} failed: {result.stdout}{result.stderr}")

    def start(self) -> None:
        """Start the stopped server again on the same port."""
        options = (f"-c listen_addresses={LOCAL_HOST} -c port={self.port} "
                   f"-c unix_socket_directories={self.root} -c fsync=off -c max_connections=200")
        result = self._run("pg_ctl", "-D", str(self.datadir), "-l", str(self.logfile), "-w", "-t", "60", "-o",
                           options, "start")
        if result.returncode != 0:
            raise PgUnavailable(f"pg_ctl start failed: {result.stdout}{result.stderr}\n{self._log_tail()}")

    def _stop_and_remove(self) -> None:
        failures: list[str] = []
        # postmaster.pid also covers a server that came up after `pg_ctl start -w` had given up on it.
        if self.started or (self.datadir / "postmaster.pid").exists():
            self.started = True
            for mode in ("fast", "immediate"):
                result = self._run("pg_ctl", "-D", str(self.datadir), "-m", mode, "-w", "-t", "60", "stop")
                if result.returncode == 0:
                    self.started = False
                    break
                failures.append(f"pg_ctl stop -m {mode} ({result.returncode}): {result.stdout}{result.stderr}")
        shutil.rmtree(self.root)
        if self.started:
            raise PgUnavailable("could not stop the throw-away cluster:\n" + "\n".join(failures))


# --------------------------------------------------------------------------- choosing a server


@contextlib.contextmanager
def server() -> Iterator[str]:
    """Yield the base SQLAlchemy URL of a PostgreSQL server for this test session.

    Order: ``EVENT_SERVICE_TEST_PG=throwaway`` forces a throw-away cluster; else ``EVENT_SERVICE_TEST_PG_URL``
    (which must answer); else 127.0.0.1:5432 as user postgres, then root; else a throw-away cluster.
    """
    mode = os.environ.get(ENV_MODE, "").strip().lower()
    if mode not in ("", "auto", "throwaway"):
        raise PgUnavailable(f"{ENV_MODE}={mode!r}: expected 'throwaway', 'auto' or unset")

    if mode != "throwaway":
        if env_url := os.environ.get(ENV_URL, "").strip():
            if (error := probe(env_url)) is not None:
                raise PgUnavailable(f"{ENV_URL}={redact(env_url)} does not answer: {error}")
            yield env_url
            return
        errors: list[str] = []
        for user in LOCAL_USERS:
            url = f"postgresql://{user}@{LOCAL_HOST}:{LOCAL_PORT}/postgres"
            if (error := probe(url)) is None:
                yield url
                return
            errors.append(f"{url}: {error}")
        log.info("no running PostgreSQL answers (%s); starting a throw-away cluster", "; ".join(errors))

    with ThrowawayCluster.running() as cluster:
        yield cluster.url


# --------------------------------------------------------------------------- per-test schemas


@dataclasses.dataclass(frozen=True)
class Schema:
    """A schema of its own on the test server, and a URL whose connections have it as search_path."""

    name: str
    url: str
    application_name: str


def schema_url(server_url: str, schema: str, application_name: str) -> str:
    """``server_url`` with libpq options setting search_path to ``schema`` (only) and an application_name."""
    parsed = make_url(server_url)
    options = parsed.query.get("options")
    if options is not None and not isinstance(options, str):
        raise ValueError(f"repeated 'options' query parameter in {redact(server_url)}")
    search_path = f"-csearch_path={schema}"
    parsed = parsed.update_query_dict(
        {
            "options": f"{options} {search_path}" if options else search_path,
            "application_name": application_name,
        }
    )
    return parsed.render_as_string(hide_password=False)


@contextlib.contextmanager
def fresh_schema(server_url: str, lock_timeout_ms: int = 5000) -> Iterator[Schema]:
    """Create schema ``t_<hex>``, yield it, then drop it (CASCADE), ending connections that still use it."""
    name = f"t_{secrets.token_hex(6)}"
    application_name = f"pytest-{name}"
    schema = Schema(name=name, url=schema_url(server_url, name, application_name), application_name=application_name)
    with contextlib.closing(connect(server_url, application_name=ADMIN_APPLICATION_NAME)) as conn, conn.cursor() as cur:
        cur.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(name)))
    try:
        yield schema
    finally:
        drop_schema(server_url, schema, lock_timeout_ms=lock_timeout_ms)


_LOCK_HOLDERS = """
SELECT DISTINCT l.pid
FROM pg_locks l
JOIN pg_namespace n ON n.nspname = %(schema)s
LEFT JOIN pg_class c ON c.oid = l.relation
WHERE l.pid <> pg_backend_pid()
  AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
  AND (c.relnamespace = n.oid
       OR (l.locktype = 'object' AND l.classid = 'pg_namespace'::regclass AND l.objid = n.oid))
"""


def _terminate(cur: psycopg2.extensions.cursor, pids: list[int]) -> None:
    for pid in pids:
        cur.execute("SELECT pg_terminate_backend(%s)", (pid,))


def drop_schema(server_url: str, schema: Schema, lock_timeout_ms: int = 5000, attempts: int = 4) -> None:
    """DROP SCHEMA ... CASCADE without hanging on connections a test left open.

    Backends that connected through ``schema.url`` (recognised by application_name) are terminated first; if
    the DROP still times out waiting for a lock, whoever holds locks on the schema's objects is terminated too.
    """
    drop = sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema.name))
    with contextlib.closing(connect(server_url, application_name=ADMIN_APPLICATION_NAME)) as conn, conn.cursor() as cur:
        cur.execute("SELECT set_config('lock_timeout', %s, false)", (f"{lock_timeout_ms}ms",))
        cur.execute(
            "SELECT pid FROM pg_stat_activity WHERE application_name = %s AND pid <> pg_backend_pid()",
            (schema.application_name,),
        )
        _terminate(cur, [pid for (pid,) in cur.fetchall()])
        for attempt in range(1, attempts + 1):
            try:
                cur.execute(drop)
            except psycopg2.errors.LockNotAvailable as exc:
                if attempt == attempts:
                    raise RuntimeError(
                        f"could not drop test schema {schema.name} after {attempts} attempts: {exc}"
                    ) from exc
                cur.execute(_LOCK_HOLDERS, {"schema": schema.name})
                holders = [pid for (pid,) in cur.fetchall()]
                log.warning("DROP SCHEMA %s timed out; terminating lock holders %s", schema.name, holders)
                _terminate(cur, holders)
            else:
                return

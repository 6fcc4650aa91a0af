"""run_pilot: one worker slot running ``payload-runner`` until the task has no more ranges for it."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
from collections import deque
from pathlib import Path
from typing import Any

from airflow.sdk import BaseHook, BaseOperator, Context
from airflow.sdk.exceptions import AirflowException, AirflowNotFoundException

from event_service import settings
from event_service_airflow.hooks import LedgerHook, ObjectStoreHook

RUNNER = Path(sys.executable).with_name("payload-runner")


class RunPilotOperator(BaseOperator):
    """Runs the payload runner as a subprocess; its output goes to the task log.

    With a ``dispatch_conn_id`` connection (host: the dispatch API's URL, e.g.
    ``http://airflow:8080/event-service``; password: a token for the task) the runner works over HTTP like
    any external runner; without one it works on the ledger directly (the embedded mode). When Airflow
    stops the task, the runner gets SIGTERM and drains: it gives back what it has not started.

    :param task_name: the event-service task (templated)
    :param slot: the pilot slot, which names the work folder and the worker id (templated; mapped from
        register_task)
    :param ledger_conn_id: the Airflow connection of the ledger, used when there is no dispatch connection
    :param dispatch_conn_id: the Airflow connection of the dispatch API; None, or no such connection: the
        runner works on the ledger directly
    :param store_conn_id: the Airflow connection whose S3 keys the runner gets for its stage-out (None: none)
    :param payload_workers: payload processes the runner runs side by side (``payload-runner --workers``)
    :param workdir_root: the folder of the work folders ``<task>/slot<n>/`` (default: $EVENT_SERVICE_WORKDIR,
        else ``es-pilots/`` in the working directory)
    :param runner_args: more arguments for ``payload-runner``
    :param drain_grace_s: seconds the runner has to drain when Airflow stops the task, before it is killed
    :param kwargs: passed on to ``BaseOperator``
    """

    template_fields = ("task_name", "slot")

    def __init__(self, *, task_name: str, slot: int | str, ledger_conn_id: str = LedgerHook.default_conn_name,
                 dispatch_conn_id: str | None = "event_service_api",
                 store_conn_id: str | None = ObjectStoreHook.default_conn_name, payload_workers: int = 1,
                 workdir_root: str | None = None, runner_args: list[str] | None = None,
                 drain_grace_s: float = 60.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.task_name = task_name
        self.slot = slot
        self.ledger_conn_id = ledger_conn_id
        self.dispatch_conn_id = dispatch_conn_id
        self.store_conn_id = store_conn_id
        self.payload_workers = payload_workers
        self.workdir_root = workdir_root
        self.runner_args = runner_args or []
        self.drain_grace_s = drain_grace_s
        self._process: subprocess.Popen[str] | None = None

    def _source(self) -> tuple[list[str], dict[str, str]]:
        """The runner's arguments that say where ranges come from, and the secrets it gets by environment."""
        if self.dispatch_conn_id:
            try:
                conn = BaseHook.get_connection(self.dispatch_conn_id)
            except AirflowNotFoundException:
                conn = None
            if conn is not None:
                if not conn.host or not conn.password:
                    raise AirflowException(f"connection {self.dispatch_conn_id!r} needs the dispatch API URL as its "
                                           "host and a token as its password")
                url = conn.host if "://" in conn.host else f"http://{conn.host}"
                if conn.port:
                    url = url.rstrip("/") + f":{conn.port}"
                return ["--server", url.rstrip("/") + (f"/{conn.schema.strip('/')}" if conn.schema else "")], {
                    settings.TOKEN.name: conn.password}
        return ["--ledger", LedgerHook(self.ledger_conn_id).url], {}

    def _store_credentials(self) -> dict[str, str]:
        """The store connection's S3 keys, for the runner's stage-out, as boto3's standard variables."""
        if not self.store_conn_id:
            return {}
        options = ObjectStoreHook(self.store_conn_id).get_conn()
        names = {"access_key": "AWS_ACCESS_KEY_ID", "secret_key": "AWS_SECRET_ACCESS_KEY",
                 "region": "AWS_DEFAULT_REGION"}
        return {names[k]: str(v) for k, v in options.items() if k in names}

    def execute(self, context: Context) -> dict[str, Any]:
        slot = int(self.slot)
        root = Path(self.workdir_root or settings.WORKDIR.get() or Path.cwd() / "es-pilots")
        workdir = root / self.task_name / f"slot{slot}"
        workdir.mkdir(parents=True, exist_ok=True)
        source, secrets = self._source()
        secrets.update(self._store_credentials())
        command = [str(RUNNER), *source, "--task", self.task_name, "--workdir", str(workdir),
                   "--worker-id", f"{socket.gethostname()}-slot{slot}", "--workers", str(self.payload_workers),
                   "--grace", str(self.drain_grace_s), *self.runner_args]
        self.log.info("starting %s", " ".join(command))
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                   env={**os.environ, **secrets, "PYTHONUNBUFFERED": "1"})
        self._process = process
        tail: deque[str] = deque(maxlen=20)
        summary: dict[str, Any] = {}
        assert process.stdout is not None
        for line in process.stdout:
            line = line.rstrip("\n")
            tail.append(line)
            if line.startswith("summary "):
                summary = json.loads(line.removeprefix("summary "))
            else:
                self.log.info("%s", line)
        code = process.wait()
        if code != 0:
            raise AirflowException(f"payload-runner exited with code {code}: " + " | ".join(list(tail)[-5:]))
        return summary

    def on_kill(self) -> None:
        """Airflow stops the task: let the runner drain, then make sure it is gone."""
        process = self._process
        if process is None or process.poll() is not None:
            return
        self.log.info("sending SIGTERM to payload-runner (pid %d); it drains for up to %.0f s", process.pid,
                      self.drain_grace_s)
        process.send_signal(signal.SIGTERM)
        done = threading.Event()

        def wait() -> None:
            try:
                process.wait(timeout=self.drain_grace_s + 30)
            except subprocess.TimeoutExpired:
                process.kill()
            done.set()

        threading.Thread(target=wait, daemon=True).start()
        done.wait(self.drain_grace_s + 35)

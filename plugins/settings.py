"""Every ``[event_service]`` key of the Airflow layer: name, type, default and meaning, read in one typed place."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from airflow.configuration import conf

from event_service.settings import ADMIN_TOKEN, MONITOR_TOKEN, PANDA_TOKEN
from event_service_airflow.hooks import LedgerHook, ObjectStoreHook

SECTION = "event_service"
"""The ``airflow.cfg`` section; each key can also be set as ``AIRFLOW__EVENT_SERVICE__<KEY>``."""

Value = str | int | float | bool | None


@dataclass(frozen=True)
class Key:
    """One ``[event_service]`` key: its type, its default (None: unset, or derived as ``meaning`` says), and what
    it is for."""

    name: str
    type: type[str] | type[int] | type[float] | type[bool]
    default: Value
    meaning: str


KEYS: tuple[Key, ...] = (
    Key("tasks_folder", str, None, "the folder of task spec files (.yaml, .yml, .json), one DAG es_<name> each "
        "(default: tasks/ beside the DAG folder)"),
    Key("include_ledger_tasks", bool, True, "also make a DAG for every task in the ledger that no spec file "
        "defines (tasks created through the dispatch API)"),
    Key("ledger_conn_id", str, LedgerHook.default_conn_name, "the Airflow connection (postgres, or sqlite with "
        "the database file as host) of the ledger"),
    Key("store_conn_id", str, ObjectStoreHook.default_conn_name, "the Airflow connection (aws) with the S3 "
        "credentials and endpoint of the object stores"),
    Key("dispatch_conn_id", str, "event_service_api", "the Airflow connection (http; host: the dispatch API's "
        "URL, password: a token) the pilots work through; empty, or no such connection: on the ledger directly"),
    Key("check_inputs", bool, True, "register_task opens every input before creating a task (s3:// inputs are "
        "not opened); false: inputs only the payloads' hosts can read"),
    Key("payload_workers", int, 1, "payload processes per pilot (payload-runner --workers)"),
    Key("pilot_retries", int, 2, "Airflow retries of each run_pilot instance (15 s apart)"),
    Key("poll_interval", float, 10.0, "seconds between the completion sensor's looks at the ledger"),
    Key("stall_timeout", float, 600.0, "seconds with open ranges, no live worker and no progress before "
        "wait_for_outputs fails"),
    Key("admin_token", str, None, "the admin token of the dispatch API mounted in Airflow's API server, when "
        f"{ADMIN_TOKEN.name} is unset"),
    Key("panda_token", str, None, f"the PanDA pilots' token of the mounted API, when {PANDA_TOKEN.name} is unset"),
    Key("monitor_token", str, None, "the read-only monitor token of the mounted API, when "
        f"{MONITOR_TOKEN.name} is unset"),
    Key("preproduction_schedule", str, "@daily", "the schedule of the DAG es_preproduction (a preset or cron "
        "expression; none: only when triggered)"),
    Key("preproduction_folder", str, None, "the pre-production test's working folder: its inputs, and the default "
        "stores (default: es-preproduction/ in the Airflow home)"),
    Key("preproduction_store_url", str, None, "the pre-production test's object store (default: objects/ in "
        "preproduction_folder)"),
    Key("preproduction_output_url", str, None, "where the pre-production test's merged files go (default: "
        "results/ in preproduction_folder)"),
)


@dataclass(frozen=True)
class PluginSettings:
    """The ``[event_service]`` keys as read by :func:`load`, typed, with the derived defaults filled in."""

    tasks_folder: Path | None
    include_ledger_tasks: bool
    ledger_conn_id: str
    store_conn_id: str
    dispatch_conn_id: str | None
    check_inputs: bool
    payload_workers: int
    pilot_retries: int
    poll_interval: float
    stall_timeout: float
    admin_token: str | None
    panda_token: str | None
    monitor_token: str | None
    preproduction_schedule: str | None
    preproduction_folder: Path
    preproduction_store_url: str
    preproduction_output_url: str


def _read(key: Key) -> Any:
    """One key from Airflow's configuration (``AIRFLOW__EVENT_SERVICE__<KEY>``, then airflow.cfg), as its type."""
    if key.type is bool:
        return conf.getboolean(SECTION, key.name, fallback=key.default)
    if key.type is int:
        return conf.getint(SECTION, key.name, fallback=key.default)
    if key.type is float:
        return conf.getfloat(SECTION, key.name, fallback=key.default)
    return conf.get(SECTION, key.name, fallback=key.default)


def load() -> PluginSettings:
    """Read every key now (when a DAG file is parsed, when the plugin loads), each with its one default."""
    values: dict[str, Any] = {key.name: _read(key) for key in KEYS}
    text = {name: str(value) if value not in (None, "") else None for name, value in values.items()}
    home = Path(os.environ.get("AIRFLOW_HOME", "~/airflow")).expanduser()
    folder = Path(text["preproduction_folder"] or home / "es-preproduction")
    schedule = text["preproduction_schedule"]
    return PluginSettings(
        tasks_folder=Path(text["tasks_folder"]) if text["tasks_folder"] else None,
        include_ledger_tasks=bool(values["include_ledger_tasks"]),
        ledger_conn_id=str(values["ledger_conn_id"]),
        store_conn_id=str(values["store_conn_id"]),
        dispatch_conn_id=text["dispatch_conn_id"],
        check_inputs=bool(values["check_inputs"]),
        payload_workers=int(values["payload_workers"]),
        pilot_retries=int(values["pilot_retries"]),
        poll_interval=float(values["poll_interval"]),
        stall_timeout=float(values["stall_timeout"]),
        admin_token=text["admin_token"],
        panda_token=text["panda_token"],
        monitor_token=text["monitor_token"],
        preproduction_schedule=None if schedule is None or schedule.lower() == "none" else schedule,
        preproduction_folder=folder,
        preproduction_store_url=text["preproduction_store_url"] or (folder / "objects").as_uri(),
        preproduction_output_url=text["preproduction_output_url"] or (folder / "results").as_uri(),
    )

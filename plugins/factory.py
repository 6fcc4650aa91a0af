"""The DAG factory: one DAG ``es_<name>`` per task spec (files in the tasks folder, and tasks in the ledger)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from airflow.configuration import conf
from airflow.sdk import DAG, Asset, Param

from event_service.errors import SpecError
from event_service.spec import TaskSpec
from event_service_airflow.hooks import LedgerHook, ObjectStoreHook
from event_service_airflow.operators import (
    CleanupOperator,
    MergeOperator,
    RegisterOutputOperator,
    RegisterTaskOperator,
    RunPilotOperator,
)
from event_service_airflow.sensors import TaskCompleteSensor

log = logging.getLogger(__name__)

SECTION = "event_service"
SPEC_SUFFIXES = (".yaml", ".yml", ".json")
START = datetime(2025, 1, 1, tzinfo=timezone.utc)


@dataclass(frozen=True)
class FactorySettings:
    """Where specs live and which connections the DAGs use (Airflow config section ``[event_service]``)."""

    tasks_folder: Path
    ledger_conn_id: str = LedgerHook.default_conn_name
    store_conn_id: str = ObjectStoreHook.default_conn_name
    dispatch_conn_id: str | None = "event_service_api"
    include_ledger_tasks: bool = True
    payload_workers: int = 1
    pilot_retries: int = 2
    poll_interval: float = 10.0
    stall_timeout: float = 600.0
    check_inputs: bool = True

    @classmethod
    def from_config(cls, default_tasks_folder: Path) -> FactorySettings:
        """Read ``[event_service]`` (or ``AIRFLOW__EVENT_SERVICE__*`` variables); called when DAGs are parsed."""
        def get(key: str, fallback: str) -> str:
            return str(conf.get(SECTION, key, fallback=fallback))

        return cls(
            tasks_folder=Path(get("tasks_folder", str(default_tasks_folder))),
            ledger_conn_id=get("ledger_conn_id", LedgerHook.default_conn_name),
            store_conn_id=get("store_conn_id", ObjectStoreHook.default_conn_name),
            dispatch_conn_id=get("dispatch_conn_id", "event_service_api") or None,
            include_ledger_tasks=get("include_ledger_tasks", "true").lower() in ("1", "true", "yes"),
            payload_workers=int(get("payload_workers", "1")),
            pilot_retries=int(get("pilot_retries", "2")),
            poll_interval=float(get("poll_interval", "10")),
            stall_timeout=float(get("stall_timeout", "600")),
            check_inputs=get("check_inputs", "true").lower() in ("1", "true", "yes"),
        )


def _doc(spec: TaskSpec, source: str) -> str:
    return "\n".join([
        f"# Event-service task `{spec.name}`",
        "",
        f"Defined in `{source}`. {spec.total_events:,} events in {len(spec.inputs)} input files, cut into "
        f"{spec.total_ranges:,} ranges of {spec.events_per_range} events.",
        "",
        "| | |", "| --- | --- |",
        f"| payload | `{spec.payload.command}` |",
        f"| pilot slots (param `workers`) | {spec.workers} |",
        f"| attempts per range | {spec.max_attempts}, lease {spec.lease_seconds} s |",
        f"| fatal ranges tolerated | {spec.max_fatal_ranges} |",
        f"| object store | `{spec.object_store.url}` |",
        f"| merged into | `{spec.merge.output_url}` (dataset `{spec.dataset}`, at most "
        f"{spec.merge.max_events_per_file:,} events per file) |",
        "",
        "register_task → run_pilot (one mapped instance per slot) → wait_for_outputs (deferred) → merge "
        "(one mapped instance per merged file) → register_output" + (" → cleanup" if spec.merge.cleanup else ""),
    ])


def dataset_asset(spec: TaskSpec) -> Asset:
    """The Asset whose events announce the task's merged files."""
    return Asset(name=spec.dataset, uri=f"{spec.merge.output_url.rstrip('/')}/{spec.dataset}")


def build_dag(spec: TaskSpec, settings: FactorySettings, source: str) -> DAG:
    """The DAG of one task; all the wiring is here, the DAG files only call this."""
    with DAG(
        dag_id=f"es_{spec.name}",
        schedule=None,
        start_date=START,
        catchup=False,
        max_active_runs=1,
        tags=["event-service", spec.dataset],
        doc_md=_doc(spec, source),
        description=f"event-service task {spec.name}: {spec.total_events:,} events",
        params={
            "workers": Param(spec.workers, type="integer", minimum=1, maximum=1024,
                             description="pilot slots: mapped run_pilot instances, each running payload-runner"),
            "events_per_range": Param(spec.events_per_range, type="integer", minimum=1,
                                      description="events per range, when the task is created by this run"),
        },
    ) as dag:
        conns = {"ledger_conn_id": settings.ledger_conn_id}
        stores = {**conns, "store_conn_id": settings.store_conn_id}
        register = RegisterTaskOperator(task_id="register_task", spec=spec.model_dump(mode="json"),
                                        workers="{{ params.workers }}",
                                        events_per_range="{{ params.events_per_range }}",
                                        check_inputs=settings.check_inputs, **stores)
        pilots = RunPilotOperator.partial(
            task_id="run_pilot", task_name=spec.name, dispatch_conn_id=settings.dispatch_conn_id,
            payload_workers=settings.payload_workers, retries=settings.pilot_retries,
            retry_delay=timedelta(seconds=15), **stores,
        ).expand(slot=register.output)
        wait = TaskCompleteSensor(task_id="wait_for_outputs", task_name=spec.name, trigger_rule="all_done",
                                  poll_interval=settings.poll_interval, stall_timeout=settings.stall_timeout,
                                  **stores)
        merge = MergeOperator.partial(task_id="merge", task_name=spec.name, retries=1, **stores).expand(
            part=wait.output)
        output = RegisterOutputOperator(task_id="register_output", task_name=spec.name,
                                        dataset_asset=dataset_asset(spec), retries=2,
                                        retry_delay=timedelta(seconds=30), **stores)
        pilots >> wait
        merge >> output
        if spec.merge.cleanup:
            output >> CleanupOperator(task_id="cleanup", task_name=spec.name, **stores)
    return dag


@dataclass(frozen=True)
class SpecSource:
    """A spec and where it came from, or the error that keeps it from loading."""

    source: str
    spec: TaskSpec | None = None
    error: str | None = None


def spec_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.suffix in SPEC_SUFFIXES and not p.name.startswith("."))


def load_specs(settings: FactorySettings) -> list[SpecSource]:
    """Every spec in the tasks folder (broken ones with their errors), then tasks only the ledger knows."""
    found: list[SpecSource] = []
    names: dict[str, str] = {}
    for path in spec_files(settings.tasks_folder):
        try:
            spec = TaskSpec.from_file(path)
        except SpecError as exc:
            found.append(SpecSource(str(path), error=str(exc)))
            continue
        if spec.name in names:
            found.append(SpecSource(str(path), error=f"{path}: name: task {spec.name!r} is also defined in "
                                                     f"{names[spec.name]}"))
            continue
        names[spec.name] = str(path)
        found.append(SpecSource(str(path), spec))
    if settings.include_ledger_tasks:
        found.extend(_ledger_specs(settings, set(names)))
    return found


def _ledger_specs(settings: FactorySettings, known: set[str]) -> list[SpecSource]:
    """Tasks created through the dispatch API, from the ledger the DAGs use (skipped when unreachable)."""
    try:
        hook = LedgerHook(settings.ledger_conn_id)
        with hook.get_conn() as ledger:
            return [SpecSource(f"the ledger ({name})", ledger.task_spec(name))
                    for name in ledger.task_names() if name not in known]
    except Exception as exc:  # parsing must go on without the ledger; the log says why
        log.warning("event-service DAGs: tasks in the ledger %r are not listed: %s", settings.ledger_conn_id, exc)
        return []


def publish_dags(namespace: dict[str, Any], default_tasks_folder: Path) -> list[DAG]:
    """Build the DAGs of every loadable spec into a DAG file's globals; broken specs are left out."""
    settings = FactorySettings.from_config(default_tasks_folder)
    dags = []
    for item in load_specs(settings):
        if item.spec is not None:
            dag = build_dag(item.spec, settings, item.source)
            namespace[dag.dag_id] = dag
            dags.append(dag)
    return dags


def raise_for_broken_specs(default_tasks_folder: Path) -> None:
    """Raise one SpecError naming every broken spec file and field, so Airflow shows it as an import error."""
    settings = replace(FactorySettings.from_config(default_tasks_folder), include_ledger_tasks=False)
    errors = [item.error for item in load_specs(settings) if item.error]
    if errors:
        raise SpecError(f"{len(errors)} task spec(s) could not be loaded (their DAGs are missing; every other "
                        "DAG loads): " + " | ".join(errors))

"""The DAG factory: one DAG ``es_<name>`` per task spec (files in the tasks folder, and tasks in the ledger)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from airflow.sdk import DAG, Asset, Param

from event_service.errors import SpecError
from event_service.spec import TaskSpec
from event_service_airflow import settings as plugin_settings
from event_service_airflow.chain import ChainConfig, build_chain
from event_service_airflow.hooks import LedgerHook
from event_service_airflow.settings import PluginSettings

log = logging.getLogger(__name__)

SPEC_SUFFIXES = (".yaml", ".yml", ".json")
START = datetime(2025, 1, 1, tzinfo=timezone.utc)


def load_settings(default_tasks_folder: Path) -> PluginSettings:
    """``[event_service]`` as read now (DAG files call this when parsed); without ``tasks_folder``, the given one."""
    settings = plugin_settings.load()
    return settings if settings.tasks_folder else replace(settings, tasks_folder=default_tasks_folder)


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


def build_dag(spec: TaskSpec, settings: PluginSettings, source: str) -> DAG:
    """The DAG of one task; all the wiring is here and in :func:`build_chain`, the DAG files only call this."""
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
        build_chain(ChainConfig.from_settings(settings), task_name=spec.name, spec=spec.model_dump(mode="json"),
                    workers="{{ params.workers }}", events_per_range="{{ params.events_per_range }}",
                    dataset_asset=dataset_asset(spec), cleanup=spec.merge.cleanup)
    return dag


@dataclass(frozen=True)
class SpecSource:
    """A spec and where it came from, or the error that keeps it from loading."""

    source: str
    spec: TaskSpec | None = None
    error: str | None = None


def spec_files(folder: Path | None) -> list[Path]:
    """The spec files of a folder, in name order (hidden files left out); none without the folder."""
    if folder is None or not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.suffix in SPEC_SUFFIXES and not p.name.startswith("."))


def load_specs(settings: PluginSettings) -> list[SpecSource]:
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


def _ledger_specs(settings: PluginSettings, known: set[str]) -> list[SpecSource]:
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
    settings = load_settings(default_tasks_folder)
    dags = []
    for item in load_specs(settings):
        if item.spec is not None:
            dag = build_dag(item.spec, settings, item.source)
            namespace[dag.dag_id] = dag
            dags.append(dag)
    return dags


def raise_for_broken_specs(default_tasks_folder: Path) -> None:
    """Raise one SpecError naming every broken spec file and field, so Airflow shows it as an import error."""
    settings = replace(load_settings(default_tasks_folder), include_ledger_tasks=False)
    errors = [item.error for item in load_specs(settings) if item.error]
    if errors:
        raise SpecError(f"{len(errors)} task spec(s) could not be loaded (their DAGs are missing; every other "
                        "DAG loads): " + " | ".join(errors))

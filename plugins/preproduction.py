"""The scheduled pre-production test: a small fresh task run end to end through the same operators."""

from __future__ import annotations

import json
import secrets
import shutil
from collections import Counter
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import uproot
from airflow.sdk import DAG, Asset, Variable, task
from airflow.sdk.exceptions import AirflowFailException

from event_service.inputs.generate import make_inputs
from event_service.ledger.errors import TaskNotFoundError
from event_service.merge.certify import JSON_SUFFIX, PNG_SUFFIX
from event_service.merge.register import catalog_entries
from event_service.stores import open_store
from event_service_airflow.chain import Attempts, ChainConfig, build_chain
from event_service_airflow.factory import START
from event_service_airflow.hooks import LedgerHook, ObjectStoreHook
from event_service_airflow.settings import PluginSettings

DAG_ID = "es_preproduction"
RESULT_VARIABLE = "event_service_preproduction_result"
STEPS = ("prepare", "register_task", "run_pilot", "wait_for_outputs", "merge", "register_output", "validate")
EVENTS, FILES, PER_RANGE, SLOTS = 200, 2, 10, 2
NAME = "{{ ti.xcom_pull(task_ids='prepare', key='name') }}"


def _chain_config(settings: PluginSettings) -> ChainConfig:
    """The task DAGs' connections; a quick pace, one pilot retry, Airflow's default retries elsewhere."""
    return replace(ChainConfig.from_settings(settings), check_inputs=True, payload_workers=1, poll_interval=2,
                   stall_timeout=300, pilot=Attempts(1), merge=Attempts(), output=Attempts())


def build_preproduction_dag(settings: PluginSettings) -> DAG:
    """Daily by default (``[event_service] preproduction_schedule``); the target stores are configurable
    (``preproduction_store_url``, ``preproduction_output_url``; default: folders in ``preproduction_folder``)."""
    store_url, output_url = settings.preproduction_store_url, settings.preproduction_output_url
    with DAG(
        dag_id=DAG_ID, schedule=settings.preproduction_schedule, start_date=START,
        catchup=False, max_active_runs=1, tags=["event-service", "pre-production"],
        doc_md=f"# Event-service pre-production test\n\nA fresh task of {EVENTS} events through register, "
               f"pilots, completion, merge and registration; the merged files are read back and checked, the "
               f"result (pass, or the failing step) is kept in the Airflow Variable `{RESULT_VARIABLE}`, and "
               f"everything the test made is removed. Stores: `{store_url}` → `{output_url}`.",
        dagrun_timeout=timedelta(hours=2),
    ) as dag:
        prepared = _prepare(settings)()
        chain = build_chain(_chain_config(settings), task_name=NAME, spec=prepared["spec"], workers=SLOTS,
                            dataset_asset=Asset(name="es-preproduction", uri=f"{output_url}/"))
        checked = _validate(settings.preproduction_folder)(chain.output.output)
        [checked, chain.merge, chain.wait] >> _record_and_clean(settings)()
    return dag


def _prepare(settings: PluginSettings) -> Any:
    """The step ``prepare``: fresh inputs and the spec of a task with a fresh name."""
    area, store_url, output_url = (settings.preproduction_folder, settings.preproduction_store_url,
                                   settings.preproduction_output_url)

    @task(multiple_outputs=True)
    def prepare() -> dict[str, Any]:
        name = f"preprod-{secrets.token_hex(4)}"
        inputs = make_inputs(area / "inputs" / name, events=EVENTS, files=FILES)
        spec = {"name": name, "inputs": [i.model_dump() for i in inputs], "events_per_range": PER_RANGE,
                "lease_seconds": 60, "payload": {"command": "toysim --cost-ms 1"}, "workers": SLOTS,
                "object_store": {"url": store_url}, "merge": {"output_url": output_url,
                                                               "max_events_per_file": EVENTS // 2}}
        return {"name": name, "spec": spec}

    return prepare


def _validate(area: Path) -> Any:
    """The step ``validate``: the merged files read back hold every event of the task exactly once."""

    @task
    def validate(facts: dict[str, Any]) -> dict[str, Any]:
        seen: Counter[int] = Counter()
        for item in facts["outputs"]:
            with open_store(item["url"].rsplit("/", 1)[0]) as storage:
                local = area / "validate" / Path(item["url"]).name
                storage.get(Path(item["url"]).name, local)
            with uproot.open(local) as opened:
                seen.update(int(n) for n in opened["events"]["event_number"].array(library="np"))
            local.unlink()
        if seen != Counter(range(1, EVENTS + 1)):
            missing = EVENTS - len(seen)
            raise AirflowFailException(f"merged files hold {sum(seen.values())} events ({missing} of the task's "
                                       f"{EVENTS} missing, {sum(seen.values()) - len(seen)} duplicated)")
        return {"events": EVENTS, "files": len(facts["outputs"])}

    return validate


def _record_and_clean(settings: PluginSettings) -> Any:
    """The last step, whatever happened: the result in the Variable, then everything the test made removed."""

    @task(trigger_rule="all_done")
    def record_and_clean(**context: Any) -> dict[str, Any]:
        ti = context["ti"]
        name = ti.xcom_pull(task_ids="prepare", key="name")
        failing = next((step for step in STEPS if not _succeeded(ti, step)), None)
        if failing == "run_pilot" and _succeeded(ti, "wait_for_outputs"):
            failing = next((step for step in STEPS[3:] if not _succeeded(ti, step)), None)
        result = {"run_id": context["run_id"], "task": name, "passed": failing is None, "failing_step": failing}
        Variable.set(RESULT_VARIABLE, json.dumps(result))
        if name:
            _clean(name, settings)
        if failing:
            raise AirflowFailException(f"pre-production test failed at step {failing}")
        return result

    return record_and_clean


def _succeeded(ti: Any, step: str) -> bool:
    """A step succeeded when it left its result (mapped steps: at least one of their instances)."""
    value = ti.xcom_pull(task_ids=step, key="name" if step == "prepare" else "return_value")
    if value is None:
        return False
    if isinstance(value, (str, dict)):
        return True
    return any(item is not None for item in list(value))


def _clean(name: str, settings: PluginSettings) -> None:
    """Remove what the test made: objects, staged and merged files, catalog rows, the task, the inputs."""
    with LedgerHook(settings.ledger_conn_id).get_conn() as ledger:
        try:
            spec = ledger.task_spec(name)
        except TaskNotFoundError:
            spec = None
        if spec is not None:
            hook = ObjectStoreHook(settings.store_conn_id)
            with hook.get_store(spec.object_store.url, spec.object_store.endpoint_url) as objects:
                for item in [*objects.list(f"{name}/")]:
                    objects.delete(item.key)
            with hook.get_store(spec.merge.output_url, spec.merge.endpoint_url) as storage:
                for entry in catalog_entries(ledger, task=name):
                    storage.delete(entry.file_name)
                    for suffix in (JSON_SUFFIX, PNG_SUFFIX):  # its validation histograms
                        storage.delete(entry.file_name + suffix)
            ledger.delete_task(name)
    # the staged merged files went with the objects under <name>/
    shutil.rmtree(settings.preproduction_folder / "inputs" / name, ignore_errors=True)

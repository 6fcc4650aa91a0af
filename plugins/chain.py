"""The chain of Airflow tasks that runs one event-service task, wired in one place for every DAG that runs one."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from airflow.sdk import Asset, XComArg
from airflow.sdk.definitions.mappedoperator import MappedOperator

from event_service_airflow.operators import (
    CleanupOperator,
    MergeOperator,
    RegisterOutputOperator,
    RegisterTaskOperator,
    RunPilotOperator,
)
from event_service_airflow.sensors import TaskCompleteSensor
from event_service_airflow.settings import PluginSettings


@dataclass(frozen=True)
class Attempts:
    """The retries of one step; None leaves Airflow's own default (``[core] default_task_retries``,
    ``default_task_retry_delay``)."""

    retries: int | None = None
    retry_delay: timedelta | None = None

    def kwargs(self) -> dict[str, Any]:
        """The operator arguments this sets (none for Airflow's defaults)."""
        given = {"retries": self.retries, "retry_delay": self.retry_delay}
        return {name: value for name, value in given.items() if value is not None}


@dataclass(frozen=True)
class ChainConfig:
    """How the chain's steps run: the connections, the pilots' payload processes, the sensor's pacing, retries."""

    ledger_conn_id: str
    store_conn_id: str
    dispatch_conn_id: str | None
    check_inputs: bool
    payload_workers: int
    poll_interval: float
    stall_timeout: float
    pilot: Attempts = Attempts()
    merge: Attempts = Attempts()
    output: Attempts = Attempts()

    @classmethod
    def from_settings(cls, settings: PluginSettings) -> ChainConfig:
        """The task DAGs' chain: everything from ``[event_service]``, and the steps' retries."""
        return cls(ledger_conn_id=settings.ledger_conn_id, store_conn_id=settings.store_conn_id,
                   dispatch_conn_id=settings.dispatch_conn_id, check_inputs=settings.check_inputs,
                   payload_workers=settings.payload_workers, poll_interval=settings.poll_interval,
                   stall_timeout=settings.stall_timeout,
                   pilot=Attempts(settings.pilot_retries, timedelta(seconds=15)), merge=Attempts(1),
                   output=Attempts(2, timedelta(seconds=30)))


@dataclass(frozen=True)
class Chain:
    """The chain's tasks, for a DAG to put its own steps before and after them."""

    register: RegisterTaskOperator
    pilots: MappedOperator
    wait: TaskCompleteSensor
    merge: MappedOperator
    output: RegisterOutputOperator
    cleanup: CleanupOperator | None


def build_chain(config: ChainConfig, *, task_name: str, spec: dict[str, Any] | XComArg, workers: int | str,
                dataset_asset: Asset, events_per_range: int | str | None = None, cleanup: bool = False) -> Chain:
    """Wire register_task → run_pilot (mapped over the slots) → wait_for_outputs (deferred) → merge (mapped over
    the merge plan's parts) → register_output (→ cleanup) into the DAG being defined: call it inside
    ``with DAG(…)``. ``task_name``, ``workers`` and ``events_per_range`` may be templates."""
    conns = {"ledger_conn_id": config.ledger_conn_id, "store_conn_id": config.store_conn_id}
    register = RegisterTaskOperator(task_id="register_task", spec=spec, workers=workers,
                                    events_per_range=events_per_range, check_inputs=config.check_inputs, **conns)
    pilots = RunPilotOperator.partial(
        task_id="run_pilot", task_name=task_name, dispatch_conn_id=config.dispatch_conn_id,
        payload_workers=config.payload_workers, **config.pilot.kwargs(), **conns,
    ).expand(slot=register.output)
    wait = TaskCompleteSensor(task_id="wait_for_outputs", task_name=task_name, trigger_rule="all_done",
                              poll_interval=config.poll_interval, stall_timeout=config.stall_timeout, **conns)
    merge = MergeOperator.partial(task_id="merge", task_name=task_name, **config.merge.kwargs(), **conns).expand(
        part=wait.output)
    output = RegisterOutputOperator(task_id="register_output", task_name=task_name, dataset_asset=dataset_asset,
                                    **config.output.kwargs(), **conns)
    pilots >> wait
    merge >> output
    tidy = CleanupOperator(task_id="cleanup", task_name=task_name, **conns) if cleanup else None
    if tidy is not None:
        output >> tidy
    return Chain(register, pilots, wait, merge, output, tidy)

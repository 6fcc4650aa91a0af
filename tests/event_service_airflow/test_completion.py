"""The completion sensor defers to a trigger that judges the task from the ledger and the object store."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from airflow.sdk.exceptions import TaskDeferred
from airflow.triggers.base import TriggerEvent

from event_service.ledger import Ledger
from event_service.messages import OutputRef, RangeUpdate
from event_service.spec import InputFile, TaskSpec
from event_service.stores import LocalStore
from event_service_airflow.sensors import TaskCompleteSensor
from event_service_airflow.triggers import TaskCompleteTrigger
from tests.event_service_airflow.conftest import spec_dict


def first_event(trigger: TaskCompleteTrigger) -> TriggerEvent:
    async def take() -> TriggerEvent:
        async for event in trigger.run():
            return event
        raise AssertionError("the trigger ended without an event")

    return asyncio.run(asyncio.wait_for(take(), timeout=60))


def finish_all(ledger: Ledger, store: LocalStore, task: str, *, fatal: int = 0) -> None:
    """Process every range as a worker would: store an object, report it finished (the last ``fatal`` fatal)."""
    ranges = ledger.claim(task, "w1", 1000).ranges
    updates = []
    for n, r in enumerate(ranges):
        if n >= len(ranges) - fatal:
            updates.append(RangeUpdate(range_id=r.range_id, status="fatal", error_code="ERR_BAD_EVENT", error="bad"))
            continue
        stored = store.put(f"{task}/{r.range_id}/{r.attempt}/out.root", f"output of {r.range_id}".encode())
        updates.append(RangeUpdate(range_id=r.range_id, status="finished",
                                   output=OutputRef(key=stored.key, adler32=stored.adler32, size=stored.size)))
    ledger.update(task, "w1", updates)


def test_trigger_serializes_to_its_own_arguments() -> None:
    trigger = TaskCompleteTrigger("demo", "led", "sto", poll_interval=2.5, stall_timeout=30.0)
    classpath, kwargs = trigger.serialize()
    assert classpath == "event_service_airflow.triggers.completion.TaskCompleteTrigger"
    again = TaskCompleteTrigger(**kwargs)
    assert again.serialize() == (classpath, kwargs)


def test_a_trigger_row_written_under_the_former_class_path_still_resumes() -> None:
    """The triggerer rebuilds a deferred task's trigger from its row: the stored class path, imported with the
    triggerer's own import function (its ``get_trigger_by_classpath``), called with the stored kwargs."""
    from airflow.jobs import triggerer_job_runner
    from airflow.models.trigger import Trigger
    from airflow.serialization.decoders import smart_decode_trigger_kwargs

    # what the former TaskCompleteTrigger.serialize() wrote, stored as a deferral stores it
    row = Trigger(classpath="event_service_airflow.sensors.completion.TaskCompleteTrigger",
                  kwargs={"task_name": "demo", "ledger_conn_id": "led", "store_conn_id": "sto",
                          "poll_interval": 2.5, "stall_timeout": 30.0})
    trigger_class = triggerer_job_runner.import_string(row.classpath)
    kwargs = {k: smart_decode_trigger_kwargs(v) for k, v in Trigger._decrypt_kwargs(row.encrypted_kwargs).items()}
    trigger = trigger_class(**kwargs)
    assert trigger_class is TaskCompleteTrigger
    assert (trigger.task_name, trigger.ledger_conn_id, trigger.store_conn_id) == ("demo", "led", "sto")
    assert (trigger.poll_interval, trigger.stall_timeout) == (2.5, 30.0)
    # once it defers again, the row names the trigger's own module
    assert trigger.serialize() == ("event_service_airflow.triggers.completion.TaskCompleteTrigger", kwargs)


def test_sensor_defers_to_the_trigger_while_ranges_are_open(connections: Path, tmp_path: Path,
                                                            small_inputs: list[InputFile]) -> None:
    with Ledger(f"sqlite:///{connections}") as ledger:
        ledger.create_task(TaskSpec.parse(spec_dict("demo", small_inputs, tmp_path)))
    sensor = TaskCompleteSensor(task_id="wait_for_outputs", task_name="demo", poll_interval=3)
    with pytest.raises(TaskDeferred) as deferred:
        sensor.execute({})  # type: ignore[arg-type]
    trigger = deferred.value.trigger
    assert isinstance(trigger, TaskCompleteTrigger) and trigger.task_name == "demo"
    assert deferred.value.method_name == "execute_complete"


def test_trigger_succeeds_once_every_output_is_verified(connections: Path, tmp_path: Path,
                                                        small_inputs: list[InputFile]) -> None:
    with Ledger(f"sqlite:///{connections}") as ledger:
        ledger.create_task(TaskSpec.parse(spec_dict("done", small_inputs, tmp_path)))
        finish_all(ledger, LocalStore(tmp_path / "objects"), "done")
    event = first_event(TaskCompleteTrigger("done", "event_service_ledger", "event_service_store", 0.1))
    assert event.payload["status"] == "success"
    assert "8 finished outputs verified" in event.payload["message"]


def test_trigger_fails_on_too_many_fatal_ranges(connections: Path, tmp_path: Path,
                                                small_inputs: list[InputFile]) -> None:
    with Ledger(f"sqlite:///{connections}") as ledger:
        ledger.create_task(TaskSpec.parse(spec_dict("fatal", small_inputs, tmp_path, max_fatal_ranges=1)))
        finish_all(ledger, LocalStore(tmp_path / "objects"), "fatal", fatal=2)
    event = first_event(TaskCompleteTrigger("fatal", "event_service_ledger", "event_service_store", 0.1))
    assert event.payload["status"] == "failed"
    assert "2 ranges are fatal and the task tolerates 1" in event.payload["message"]
    assert "ERR_BAD_EVENT" in event.payload["message"]


def test_trigger_sends_back_missing_and_corrupted_outputs(connections: Path, tmp_path: Path,
                                                          small_inputs: list[InputFile]) -> None:
    objects = tmp_path / "objects"
    with Ledger(f"sqlite:///{connections}") as ledger:
        ledger.create_task(TaskSpec.parse(spec_dict("bad", small_inputs, tmp_path)))
        finish_all(ledger, LocalStore(objects), "bad")
        (objects / "bad/bad.1.0-9/1/out.root").unlink()
        (objects / "bad/bad.2.0-9/1/out.root").write_bytes(b"output of bad.2.0-X")  # same size, other bytes
        LocalStore(objects).put("bad/bad.2.0-9/1/out.root", b"tampered output of bad.2.0-9")
    event = first_event(TaskCompleteTrigger("bad", "event_service_ledger", "event_service_store", 0.1))
    assert event.payload["status"] == "failed"
    assert event.payload["corrupted"] == ["bad.1.0-9", "bad.2.0-9"]
    assert "sent back to ready" in event.payload["message"]
    with Ledger(f"sqlite:///{connections}") as ledger:
        assert ledger.status("bad").counts["ready"] == 2


def test_trigger_gives_up_when_the_task_stalls(connections: Path, tmp_path: Path,
                                               small_inputs: list[InputFile]) -> None:
    with Ledger(f"sqlite:///{connections}") as ledger:
        ledger.create_task(TaskSpec.parse(spec_dict("stalled", small_inputs, tmp_path)))
    event = first_event(TaskCompleteTrigger("stalled", "event_service_ledger", "event_service_store", 0.1,
                                            stall_timeout=0.5))
    assert event.payload["status"] == "failed"
    assert "8 ranges open" in event.payload["message"] and "no worker has been alive" in event.payload["message"]


def test_execute_complete_raises_unless_success() -> None:
    sensor = TaskCompleteSensor(task_id="wait_for_outputs", task_name="demo")
    with pytest.raises(Exception, match="2 ranges are fatal"):
        sensor.execute_complete({}, {"status": "failed", "message": "2 ranges are fatal"})  # type: ignore[arg-type]


def test_sensor_does_not_defer_when_the_task_is_already_complete(connections: Path, tmp_path: Path,
                                                                 small_inputs: list[InputFile]) -> None:
    with Ledger(f"sqlite:///{connections}") as ledger:
        ledger.create_task(TaskSpec.parse(spec_dict("ready", small_inputs, tmp_path)))
        finish_all(ledger, LocalStore(tmp_path / "objects"), "ready")
    sensor = TaskCompleteSensor(task_id="wait_for_outputs", task_name="ready")
    assert sensor.execute({}) == [0, 1]  # type: ignore[arg-type]  # two merge parts of at most 50 events

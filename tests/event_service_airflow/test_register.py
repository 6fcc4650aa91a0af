"""register_task checks what a task needs before creating it: readable inputs, stores that answer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from airflow.sdk.exceptions import AirflowFailException

from event_service.ledger import Ledger
from event_service.spec import InputFile
from event_service_airflow.operators import RegisterTaskOperator
from tests.event_service_airflow.conftest import spec_dict
from tests.servers import free_ports


def register(spec: dict[str, Any], **options: Any) -> list[int]:
    operator = RegisterTaskOperator(task_id="register_task", spec=spec, workers=2, **options)
    result: list[int] = operator.execute({})  # type: ignore[arg-type]
    return result


def task_names(ledger_path: Path) -> list[str]:
    with Ledger(f"sqlite:///{ledger_path}") as ledger:
        return ledger.task_names()


def test_readable_inputs_and_answering_stores_create_the_task(connections: Path, small_inputs: list[InputFile],
                                                              tmp_path: Path) -> None:
    assert register(spec_dict("good", small_inputs, tmp_path)) == [0, 1]
    assert task_names(connections) == ["good"]


def test_a_missing_input_creates_nothing_and_says_which(connections: Path, small_inputs: list[InputFile],
                                                        tmp_path: Path) -> None:
    gone = small_inputs[1].model_copy(update={"url": (tmp_path / "EVNT.gone.root").as_uri(), "lfn": "EVNT.gone"})
    short = small_inputs[0].model_copy(update={"events": small_inputs[0].events + 5})
    with pytest.raises(AirflowFailException) as caught:
        register(spec_dict("bad", [short, gone], tmp_path))
    assert str(caught.value) == (
        "task 'bad': 2 of 2 inputs cannot be used:\n"
        f"  inputs.0 ({short.lfn}): {short.url}: its tree 'events' holds {short.events - 5} events, the spec says "
        f"{short.events}\n"
        f"  inputs.1 (EVNT.gone): {gone.url}: no such file\n"
        "Nothing was created.")
    assert task_names(connections) == []


def test_the_input_check_can_be_switched_off(connections: Path, small_inputs: list[InputFile],
                                             tmp_path: Path) -> None:
    gone = small_inputs[0].model_copy(update={"url": (tmp_path / "elsewhere.root").as_uri()})
    register(spec_dict("trusting", [gone], tmp_path), check_inputs=False)  # read only where the payloads run
    assert task_names(connections) == ["trusting"]


def test_an_object_store_that_does_not_answer_creates_nothing(connections: Path, small_inputs: list[InputFile],
                                                              tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "key")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    endpoint = f"http://127.0.0.1:{free_ports(1)[0]}"
    spec = spec_dict("nowhere", small_inputs, tmp_path, object_store={"url": "s3://bucket/ranges",
                                                                      "endpoint_url": endpoint})
    with pytest.raises(AirflowFailException) as caught:
        register(spec)
    message = str(caught.value)
    assert message.startswith("task 'nowhere': object_store s3://bucket/ranges cannot be used: ")
    assert f"cannot reach {endpoint}" in message and message.endswith("Nothing was created.")
    assert task_names(connections) == []

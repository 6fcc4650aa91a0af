"""Fixtures for the Airflow layer: an Airflow home per session, connections per test, a spec folder."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from event_service.inputs.generate import make_inputs
from event_service.spec import InputFile


@pytest.fixture(autouse=True, scope="session")
def airflow_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Airflow reads its home when imported; every Airflow test runs against this throw-away one."""
    home = tmp_path_factory.mktemp("airflow-home")
    saved = {k: os.environ.get(k) for k in ("AIRFLOW_HOME", "AIRFLOW__CORE__LOAD_EXAMPLES")}
    os.environ["AIRFLOW_HOME"] = str(home)
    os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "false"
    yield home
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="session")
def small_inputs(tmp_path_factory: pytest.TempPathFactory) -> list[InputFile]:
    return make_inputs(tmp_path_factory.mktemp("evnt"), events=80, files=2, seed=5)


def spec_dict(name: str, inputs: list[InputFile], root: Path, **fields: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "name": name, "inputs": [i.model_dump() for i in inputs], "events_per_range": 10, "lease_seconds": 30,
        "payload": {"command": "toysim --cost-ms 1"}, "workers": 2,
        "object_store": {"url": (root / "objects").as_uri()},
        "merge": {"output_url": (root / "results").as_uri(), "max_events_per_file": 50},
    }
    spec.update(fields)
    return spec


@pytest.fixture
def connections(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """The ledger connection (SQLite in the test's folder) and no dispatch API: the embedded mode."""
    ledger = tmp_path / "ledger.sqlite"
    monkeypatch.setenv("AIRFLOW_CONN_EVENT_SERVICE_LEDGER", json.dumps({"conn_type": "sqlite", "host": str(ledger)}))
    monkeypatch.setenv("AIRFLOW__EVENT_SERVICE__DISPATCH_CONN_ID", "")
    return ledger


@pytest.fixture
def tasks_folder(tmp_path: Path, small_inputs: list[InputFile], monkeypatch: pytest.MonkeyPatch) -> Path:
    """Two good specs and a broken one, in the folder the DAG factory reads."""
    folder = tmp_path / "tasks"
    folder.mkdir()
    for name in ("alpha", "beta"):
        (folder / f"{name}.yaml").write_text(yaml.safe_dump(spec_dict(name, small_inputs, tmp_path)))
    broken = spec_dict("gamma", small_inputs, tmp_path)
    broken["inputs"][0]["events"] = -5
    (folder / "gamma.yaml").write_text(yaml.safe_dump(broken))
    monkeypatch.setenv("AIRFLOW__EVENT_SERVICE__TASKS_FOLDER", str(folder))
    monkeypatch.setenv("AIRFLOW__EVENT_SERVICE__INCLUDE_LEDGER_TASKS", "false")
    return folder

"""The DAG files: one DAG per good spec, a broken spec reported as an import error, and the DAG's shape."""

from __future__ import annotations

from pathlib import Path

import pytest
from airflow.dag_processing.dagbag import DagBag

DAGS = Path(__file__).resolve().parents[2] / "dags"


@pytest.fixture
def bag(tasks_folder: Path, connections: Path) -> DagBag:
    return DagBag(dag_folder=str(DAGS))


def test_every_good_spec_becomes_a_dag_and_the_broken_one_an_import_error(bag: DagBag, tasks_folder: Path) -> None:
    assert {"es_alpha", "es_beta", "es_preproduction"} <= set(bag.dags)
    assert "es_gamma" not in bag.dags
    errors = {Path(path).name: text for path, text in bag.import_errors.items()}
    assert set(errors) == {"es_spec_errors.py"}
    assert f"{tasks_folder / 'gamma.yaml'}: inputs.0.events: Input should be greater than 0" in errors[
        "es_spec_errors.py"]


def test_no_import_error_when_every_spec_is_good(tasks_folder: Path, connections: Path) -> None:
    (tasks_folder / "gamma.yaml").unlink()
    bag = DagBag(dag_folder=str(DAGS))
    assert bag.import_errors == {}
    assert {"es_alpha", "es_beta", "es_preproduction"} <= set(bag.dags)


def test_the_dag_shape(bag: DagBag) -> None:
    dag = bag.dags["es_alpha"]
    assert {t.task_id for t in dag.tasks} == {"register_task", "run_pilot", "wait_for_outputs", "merge",
                                              "register_output"}
    downstream = {t.task_id: sorted(t.downstream_task_ids) for t in dag.tasks}
    assert downstream == {"register_task": ["run_pilot"], "run_pilot": ["wait_for_outputs"],
                          "wait_for_outputs": ["merge"], "merge": ["register_output"], "register_output": []}
    assert dag.get_task("wait_for_outputs").trigger_rule == "all_done"
    assert set(dag.params) == {"workers", "events_per_range"}
    assert dag.params["workers"] == 2 and dag.params["events_per_range"] == 10
    assert "event-service" in dag.tags and dag.doc_md and "alpha" in dag.doc_md
    assert dag.get_task("register_output").outlets[0].name == "alpha.merged"


def test_tasks_created_through_the_api_get_dags_too(tasks_folder: Path, connections: Path,
                                                    monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import yaml

    from event_service.ledger import Ledger
    from event_service.spec import TaskSpec

    spec = yaml.safe_load((tasks_folder / "alpha.yaml").read_text())
    spec["name"] = "from-api"
    with Ledger(f"sqlite:///{connections}") as ledger:
        ledger.create_task(TaskSpec.parse(spec))
    monkeypatch.setenv("AIRFLOW__EVENT_SERVICE__INCLUDE_LEDGER_TASKS", "true")
    bag = DagBag(dag_folder=str(DAGS))
    assert "es_from-api" in bag.dags
    assert "the ledger (from-api)" in (bag.dags["es_from-api"].doc_md or "")

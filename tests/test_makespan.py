"""The makespan benchmark's generated files: the task spec, the per-range DAG doing a pilot's work, the warm-up DAG."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest
import yaml
from airflow.dag_processing.dagbag import DagBag

from event_service.spec import TaskSpec
from event_service.stores import object_key, open_store

ROOT = Path(__file__).resolve().parents[1]


def _makespan() -> ModuleType:
    spec = importlib.util.spec_from_file_location("makespan_benchmark", ROOT / "benchmarks" / "makespan.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("payload", ["nullsim", "toysim"])
def test_generated_spec_and_dags_do_the_same_work(payload: str, tmp_path: Path) -> None:
    makespan = _makespan()
    inputs = makespan.write_inputs(tmp_path, 12, 2)
    makespan.write_es_spec(tmp_path / "tasks", inputs, tmp_path, 2, 5, payload)
    spec = TaskSpec.parse(yaml.safe_load((tmp_path / "tasks" / f"{makespan.TASK}.yaml").read_text()))
    assert len(list(spec.event_ranges())) == 12
    assert spec.payload is not None and spec.payload.command == makespan.PAYLOADS[payload]
    assert (spec.merge.command is not None) == (payload == "nullsim")

    makespan.write_dags(tmp_path / "dags", inputs, tmp_path, 12, payload)
    (tmp_path / "dags" / "es_tasks.py").unlink()  # the project's own DAG file, tested on its own
    bag = DagBag(dag_folder=str(tmp_path / "dags"))
    assert bag.import_errors == {}
    assert set(bag.dags) == {makespan.PER_RANGE_DAG, makespan.WARM_UP_DAG}

    # One mapped task's work, run here: the range's output in the store under the key a pilot would use.
    bag.dags[makespan.PER_RANGE_DAG].get_task("process_range").python_callable(index=7)
    range_id = f"{makespan.TASK}.2.1-1"  # range 7 is the second file's second event (6 events per file)
    name = f"EVENTS.{range_id}.txt" if payload == "nullsim" else f"HITS.{range_id}.root"
    with open_store((tmp_path / "per-range-objects").as_uri()) as store:
        stored = store.head(object_key(makespan.TASK, range_id, 1, name))
    assert stored is not None and stored.size > 0
    if payload == "nullsim":
        assert (tmp_path / "per-range-objects" / makespan.TASK / range_id / "1" / name).read_text() == \
            f"{inputs[1].lfn} 2\n"

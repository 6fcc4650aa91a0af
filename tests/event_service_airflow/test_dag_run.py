"""A task's whole DAG run with ``airflow dags test`` on SQLite: the README demo, checked end to end."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from event_service.ledger import Ledger
from event_service.merge.certify import Validation
from event_service.merge.register import catalog_entries

EXE = Path(sys.executable).with_name("event-service")


def test_the_demo_dag_runs_merges_registers_and_validates(tmp_path: Path) -> None:
    done = subprocess.run([str(EXE), "demo", "--workdir", str(tmp_path / "demo"), "--events-per-file", "150"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:] + (tmp_path / "demo" / "airflow.log").read_text()[-5000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["validated"] is True
    assert (result["ranges"], result["ranges_finished"], result["events_merged"]) == (30, 30, 300)
    assert [o["events"] for o in result["outputs"]] == [150, 150]
    with Ledger(f"sqlite:///{tmp_path / 'demo' / 'ledger.sqlite'}") as ledger:
        assert {str(k): v for k, v in ledger.status("demo").counts.items() if v} == {"merged": 30}
        entries = catalog_entries(ledger, task="demo")
    assert [e.file_name for e in entries] == ["demo.merged._000001.root", "demo.merged._000002.root"]
    assert all((tmp_path / "demo" / "results" / e.file_name).stat().st_size == e.size for e in entries)
    # Each merged file's validation histograms lie beside it (no reference named: not certified either way).
    for entry in entries:
        assert entry.validation == f"{entry.location}.validation.json" and entry.certification is None
        validation = Validation.model_validate_json(Path(entry.validation.removeprefix("file://")).read_text())
        assert validation.events == entry.events
        assert {h.name for h in validation.histograms} >= {"nhits", "edep_sum", "mean(hit_edep)"}
        assert Path(entry.location.removeprefix("file://") + ".validation.png").read_bytes()[:4] == b"\x89PNG"


def test_the_preproduction_dag_passes_records_and_cleans_up(tmp_path: Path) -> None:
    from event_service.cli.airflow_demo import REPO, airflow_environment

    (tmp_path / "tasks").mkdir()
    env = airflow_environment(tmp_path, tmp_path / "tasks", REPO / "dags")
    env["AIRFLOW__EVENT_SERVICE__PREPRODUCTION_FOLDER"] = str(tmp_path / "pre")
    airflow = str(Path(sys.executable).with_name("airflow"))
    for command in (["db", "migrate"], ["dags", "test", "es_preproduction"]):
        done = subprocess.run([airflow, *command], env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    got = subprocess.run([airflow, "variables", "get", "event_service_preproduction_result"], env=env,
                         capture_output=True, text=True, timeout=120)
    result = json.loads(got.stdout.strip().splitlines()[-1])
    assert result["passed"] is True and result["failing_step"] is None
    assert not [p for p in (tmp_path / "pre").rglob("*") if p.is_file()]  # objects, merged files, inputs: gone
    with Ledger(f"sqlite:///{tmp_path / 'ledger.sqlite'}") as ledger:
        assert ledger.task_names() == []

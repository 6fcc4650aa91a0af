"""The base install (core and worker, no Airflow) in a fresh virtualenv: a runner and a server run a small task."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from event_service.api.client import AdminClient
from event_service.inputs.generate import INPUTS_FILE
from event_service.statuses import RangeStatus, TaskState
from tests.servers import free_ports, log_tail, stop_process, wait_for_port

ROOT = Path(__file__).resolve().parents[1]
INSTALL_TIMEOUT_S = 900
TASK_TIMEOUT_S = 240
SOURCE = ("pyproject.toml", "README.md", "event_service", "payload_runner", "plugins")  # as in docker/runner.Dockerfile

pytestmark = pytest.mark.install


def run(command: list[str], env: dict[str, str], timeout: float = 120,
        check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
    if check and done.returncode != 0:
        raise AssertionError(f"{' '.join(command)} exited {done.returncode}:\n{done.stdout[-3000:]}"
                             f"\n{done.stderr[-3000:]}")
    return done


@pytest.fixture(scope="module")
def base_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtualenv with ``pip install <source>``: the package's base, no extras. The source is a copy of
    what the runner image copies, so that the build's folders do not land in the checkout."""
    root = tmp_path_factory.mktemp("base-install")
    source = root / "source"
    source.mkdir()
    for name in SOURCE:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(ROOT / name, source / name)
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "VIRTUAL_ENV"}}
    done = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet",
                           "--disable-pip-version-check", str(source)], env=env, capture_output=True, text=True,
                          timeout=INSTALL_TIMEOUT_S)
    assert done.returncode == 0, f"pip install of the base package failed:\n{done.stderr[-4000:]}"
    return venv


@pytest.fixture(scope="module")
def clean_env(base_venv: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The environment of a worker node: the virtualenv first on the PATH, nothing of the test process's own."""
    home = tmp_path_factory.mktemp("home")
    env = {k: v for k, v in os.environ.items()
           if k not in {"PYTHONPATH", "VIRTUAL_ENV", "AIRFLOW_HOME"} and not k.startswith(("EVENT_SERVICE_",
                                                                                       "AIRFLOW__"))}
    env.update(PATH=f"{base_venv / 'bin'}:/usr/bin:/bin", HOME=str(home), PYTHONNOUSERSITE="1")
    return env


def test_base_install_has_no_airflow_and_its_commands_run(base_venv: Path, clean_env: dict[str, str]) -> None:
    python = str(base_venv / "bin" / "python")
    found = run([python, "-c", "import importlib.util as u; print(u.find_spec('airflow') is None)"], clean_env)
    assert found.stdout.strip() == "True", "the base install pulled in Airflow"
    for command in ("payload-runner", "event-service", "toysim"):
        helped = run([str(base_venv / "bin" / command), "--help"], clean_env)
        assert "usage:" in helped.stdout
    loaded = run([python, "-c", "import sys, payload_runner.cli, event_service.cli.main, event_service.api.app; "
                  "print(sorted(m for m in sys.modules if m.split('.')[0] == 'airflow'))"], clean_env)
    assert loaded.stdout.strip() == "[]"


@pytest.fixture
def served(base_venv: Path, clean_env: dict[str, str], tmp_path: Path) -> Iterator[tuple[str, dict[str, str]]]:
    """``event-service serve`` from the base install on SQLite, on a free loopback port."""
    (port,) = free_ports(1)
    env = {**clean_env, "EVENT_SERVICE_ADMIN_TOKEN": "admin-" + os.urandom(8).hex()}
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        process = subprocess.Popen([str(base_venv / "bin" / "event-service"), "serve", "--db",
                                    f"sqlite:///{tmp_path / 'ledger.db'}", "--host", "127.0.0.1", "--port",
                                    str(port)], cwd=tmp_path, env=env, stdin=subprocess.DEVNULL, stdout=out,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for_port(process, port, time.monotonic() + 60, log)
        yield f"http://127.0.0.1:{port}", env
    finally:
        stop_process(process)


def test_base_install_runs_a_task_through_serve(base_venv: Path, served: tuple[str, dict[str, str]],
                                                tmp_path: Path) -> None:
    server, env = served
    bin_dir = base_venv / "bin"
    run([str(bin_dir / "event-service"), "make-input", "--events", "60", "--files", "2", "--out",
         str(tmp_path / "inputs")], env)
    inputs = yaml.safe_load((tmp_path / "inputs" / INPUTS_FILE).read_text())
    spec = {"name": "baseinstall", "inputs": inputs["inputs"], "events_per_range": 5,
            "payload": {"command": "toysim --cost-ms 1"},
            "object_store": {"url": f"file://{tmp_path / 'objects'}"},
            "merge": {"output_url": f"file://{tmp_path / 'results'}"}}
    (tmp_path / "task.yaml").write_text(yaml.safe_dump(spec))
    run([str(bin_dir / "event-service"), "create", str(tmp_path / "task.yaml"), "--server", server,
         "--token-file", str(tmp_path / "token")], env)
    runner_env = {k: v for k, v in env.items() if k != "EVENT_SERVICE_ADMIN_TOKEN"}
    runner_env["EVENT_SERVICE_TOKEN"] = (tmp_path / "token").read_text().strip()
    ran = run([str(bin_dir / "payload-runner"), "--server", server, "--task", "baseinstall", "--workers", "2",
               "--workdir", str(tmp_path / "work")], runner_env, timeout=TASK_TIMEOUT_S, check=False)
    assert ran.returncode == 0, f"payload-runner exited {ran.returncode}:\n{ran.stderr[-3000:]}"
    with AdminClient(server, env["EVENT_SERVICE_ADMIN_TOKEN"]) as admin:
        (status,) = [task for task in admin.tasks() if task.task == "baseinstall"]
    assert status.counts.get(RangeStatus.FINISHED) == 12, (status, log_tail(tmp_path / "serve.log"))
    assert status.state == TaskState.DONE

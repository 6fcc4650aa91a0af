"""The hooks turn Airflow connections into a ledger and object stores."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from event_service.spec import StoreLocation
from event_service.stores import LocalStore, S3Store
from event_service_airflow.hooks import LedgerHook, ObjectStoreHook


def test_ledger_hook_on_sqlite(connections: Path) -> None:
    hook = LedgerHook()
    assert hook.url == f"sqlite:///{connections}"
    with hook.get_conn() as ledger:
        assert ledger.task_names() == []
    assert connections.exists()


def test_ledger_hook_on_postgres(monkeypatch: pytest.MonkeyPatch, pg_url: str) -> None:
    from sqlalchemy.engine import make_url

    parsed = make_url(pg_url)
    monkeypatch.setenv("AIRFLOW_CONN_PG_LEDGER", json.dumps({
        "conn_type": "postgres", "host": parsed.host, "port": parsed.port, "login": parsed.username,
        "password": "p@ss/word", "schema": parsed.database}))
    url = LedgerHook("pg_ledger").url
    assert url == f"postgresql://{parsed.username}:p%40ss%2Fword@{parsed.host}:{parsed.port}/{parsed.database}"


def test_ledger_hook_refuses_other_connection_types(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_WRONG", json.dumps({"conn_type": "mysql", "host": "db"}))
    with pytest.raises(ValueError, match="needs a postgres or sqlite connection"):
        _ = LedgerHook("wrong").url


def test_store_hook_takes_s3_credentials_and_endpoint_from_an_aws_connection(monkeypatch: pytest.MonkeyPatch,
                                                                              tmp_path: Path) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_EVENT_SERVICE_STORE", json.dumps({
        "conn_type": "aws", "login": "AKIDEXAMPLE", "password": "secret-key-example",
        "extra": {"endpoint_url": "http://127.0.0.1:8333", "region_name": "eu-west-1"}}))
    hook = ObjectStoreHook()
    assert hook.get_conn() == {"access_key": "AKIDEXAMPLE", "secret_key": "secret-key-example",
                               "endpoint_url": "http://127.0.0.1:8333", "region": "eu-west-1"}
    stores = hook.get_stores(StoreLocation(url="s3://outputs/demo"), StoreLocation(url=tmp_path.as_uri()))
    assert isinstance(stores[None], S3Store) and isinstance(stores[tmp_path.as_uri()], LocalStore)


def test_store_hook_without_a_connection_uses_the_default_chain(tmp_path: Path) -> None:
    hook = ObjectStoreHook("no_such_connection")
    assert hook.get_conn() == {}
    assert isinstance(hook.get_store(tmp_path.as_uri()), LocalStore)


def test_pilots_get_the_store_connections_keys_as_aws_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    from event_service_airflow.operators import RunPilotOperator

    monkeypatch.setenv("AIRFLOW_CONN_EVENT_SERVICE_STORE", json.dumps({
        "conn_type": "aws", "login": "AKIDEXAMPLE", "password": "secret-key-example",
        "extra": {"endpoint_url": "http://127.0.0.1:8333", "region_name": "eu-west-1"}}))
    pilot = RunPilotOperator(task_id="run_pilot", task_name="demo", slot=0)
    assert pilot._store_credentials() == {"AWS_ACCESS_KEY_ID": "AKIDEXAMPLE",
                                          "AWS_SECRET_ACCESS_KEY": "secret-key-example",
                                          "AWS_DEFAULT_REGION": "eu-west-1"}
    assert RunPilotOperator(task_id="p2", task_name="demo", slot=0, store_conn_id=None)._store_credentials() == {}

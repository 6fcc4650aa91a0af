"""The Airflow plugin: the dispatch API and its monitor page, mounted on Airflow's API server at /event-service."""

from __future__ import annotations

import threading
from typing import Any

from airflow.plugins_manager import AirflowPlugin

from event_service.api.app import create_app
from event_service.ledger import Ledger
from event_service.settings import ADMIN_TOKEN, DB, MONITOR_TOKEN, PANDA_TOKEN
from event_service_airflow import settings
from event_service_airflow.hooks import LedgerHook, ObjectStoreHook
from event_service_airflow.monitor import EXTERNAL_VIEWS, airflow_ui_user

URL_PREFIX = "/event-service"


class _LedgerOnFirstUse:
    """Opens the ledger when the first request needs it, not when the API server imports plugins."""

    def __init__(self) -> None:
        self._ledger: Ledger | None = None
        self._lock = threading.Lock()

    def __call__(self) -> Ledger:
        with self._lock:
            if self._ledger is None:
                url = DB.get() or LedgerHook(settings.load().ledger_conn_id).url
                self._ledger = Ledger(url)
            return self._ledger


def dispatch_app() -> Any:
    """The dispatch API for Airflow's API server. Airflow does not protect plugin apps: the API keeps its own
    auth (task tokens, and the admin token from $EVENT_SERVICE_ADMIN_TOKEN or [event_service] admin_token)."""
    config = settings.load()
    app = create_app(_LedgerOnFirstUse(), ADMIN_TOKEN.get() or config.admin_token,
                     panda_token=PANDA_TOKEN.get() or config.panda_token,
                     monitor_token=MONITOR_TOKEN.get() or config.monitor_token)
    app.state.reader_checks.append(airflow_ui_user)  # the monitor: whoever Airflow lets into its UI
    store_conn_id = config.store_conn_id
    # The monitor reads validation sets from normal storage with the store connection's credentials.
    app.state.open_location = lambda url, endpoint_url: ObjectStoreHook(store_conn_id).get_store(url, endpoint_url)
    return app


class EventServicePlugin(AirflowPlugin):
    """Registers the event service with Airflow."""

    name = "event_service"
    fastapi_apps = [{"app": dispatch_app(), "url_prefix": URL_PREFIX, "name": "Event Service dispatch API"}]
    external_views = EXTERNAL_VIEWS  # the monitor page in the navigation, and a tab on each DAG run

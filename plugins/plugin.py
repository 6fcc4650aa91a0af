"""The Airflow plugin: the dispatch API and its monitor page, mounted on Airflow's API server at /event-service."""

from __future__ import annotations

import os
import threading
from typing import Any

from airflow.configuration import conf
from airflow.plugins_manager import AirflowPlugin

from event_service.api.app import ADMIN_TOKEN_ENV, DB_ENV, create_app
from event_service.api.auth import MONITOR_TOKEN_ENV
from event_service.api.panda.router import PANDA_TOKEN_ENV
from event_service.ledger import Ledger
from event_service_airflow.hooks import ObjectStoreHook
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
                url = os.environ.get(DB_ENV)
                if not url:
                    from event_service_airflow.hooks import LedgerHook

                    url = LedgerHook(str(conf.get("event_service", "ledger_conn_id",
                                                  fallback=LedgerHook.default_conn_name))).url
                self._ledger = Ledger(url)
            return self._ledger


def dispatch_app() -> Any:
    """The dispatch API for Airflow's API server. Airflow does not protect plugin apps: the API keeps its own
    auth (task tokens, and the admin token from $EVENT_SERVICE_ADMIN_TOKEN or [event_service] admin_token)."""
    admin = os.environ.get(ADMIN_TOKEN_ENV) or conf.get("event_service", "admin_token", fallback=None) or None
    panda = os.environ.get(PANDA_TOKEN_ENV) or conf.get("event_service", "panda_token", fallback=None) or None
    monitor = (os.environ.get(MONITOR_TOKEN_ENV) or conf.get("event_service", "monitor_token", fallback=None)
               or None)
    app = create_app(_LedgerOnFirstUse(), admin, panda_token=panda, monitor_token=monitor)
    app.state.reader_checks.append(airflow_ui_user)  # the monitor: whoever Airflow lets into its UI
    store_conn_id = str(conf.get("event_service", "store_conn_id", fallback=ObjectStoreHook.default_conn_name))
    # The monitor reads validation sets from normal storage with the store connection's credentials.
    app.state.open_location = lambda url, endpoint_url: ObjectStoreHook(store_conn_id).get_store(url, endpoint_url)
    return app


class EventServicePlugin(AirflowPlugin):
    """Registers the event service with Airflow."""

    name = "event_service"
    fastapi_apps = [{"app": dispatch_app(), "url_prefix": URL_PREFIX, "name": "Event Service dispatch API"}]
    external_views = EXTERNAL_VIEWS  # the monitor page in the navigation, and a tab on each DAG run

"""The ledger hook: a ``postgres`` or ``sqlite`` Airflow connection turned into an event ledger."""

from __future__ import annotations

from functools import cached_property
from typing import Any
from urllib.parse import quote

from airflow.sdk import BaseHook

from event_service.ledger import Ledger


class LedgerHook(BaseHook):
    """Opens the event ledger that an Airflow connection names (PostgreSQL, or SQLite for one machine).

    :param ledger_conn_id: the Airflow connection: ``postgres``, or ``sqlite`` with the database file as its host
    :param kwargs: passed on to ``BaseHook``
    """

    conn_name_attr = "ledger_conn_id"
    default_conn_name = "event_service_ledger"
    conn_type = "postgres"
    hook_name = "Event Service ledger"

    def __init__(self, ledger_conn_id: str = default_conn_name, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.ledger_conn_id = ledger_conn_id

    @cached_property
    def url(self) -> str:
        """The ledger's SQLAlchemy URL, built from the connection."""
        conn = self.get_connection(self.ledger_conn_id)
        kind = (conn.conn_type or "").lower()
        if kind == "sqlite":
            path = conn.host or conn.schema
            if not path:
                raise ValueError(f"connection {self.ledger_conn_id!r} (sqlite) names no database file in its host")
            return f"sqlite:///{path}"
        if kind in ("postgres", "postgresql"):
            if not conn.host:
                raise ValueError(f"connection {self.ledger_conn_id!r} (postgres) names no host")
            auth = quote(conn.login or "", safe="")
            if conn.password:
                auth += ":" + quote(conn.password, safe="")
            port = f":{conn.port}" if conn.port else ""
            database = conn.schema or "postgres"
            return f"postgresql://{auth + '@' if auth else ''}{conn.host}{port}/{database}"
        raise ValueError(f"connection {self.ledger_conn_id!r} is of type {conn.conn_type!r}; the event ledger "
                         "needs a postgres or sqlite connection")

    def get_conn(self) -> Ledger:
        """A new Ledger on the connection's database (the caller closes it)."""
        return Ledger(self.url)

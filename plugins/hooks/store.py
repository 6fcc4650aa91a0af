"""The object-store hook: object stores opened with credentials from an ``aws`` Airflow connection."""

from __future__ import annotations

from typing import Any

from airflow.sdk import BaseHook
from airflow.sdk.exceptions import AirflowNotFoundException

from event_service.spec import StoreLocation
from event_service.stores import ObjectStore, open_store


class ObjectStoreHook(BaseHook):
    """Opens object stores (local directory, S3 through boto3, XRootD) for the store URLs of a task.

    S3 credentials and, for servers other than AWS, ``endpoint_url`` come from an ``aws`` connection
    (login: access key id, password: secret key, extra: ``{"endpoint_url": …, "region_name": …}``). Without
    the connection, boto3's own chain applies (environment variables, ~/.aws, instance roles).

    :param store_conn_id: the ``aws`` Airflow connection with the S3 credentials (it need not exist)
    :param kwargs: passed on to ``BaseHook``
    """

    conn_name_attr = "store_conn_id"
    default_conn_name = "event_service_store"
    conn_type = "aws"
    hook_name = "Event Service object store"

    def __init__(self, store_conn_id: str = default_conn_name, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.store_conn_id = store_conn_id

    def _s3_options(self) -> dict[str, Any]:
        try:
            conn = self.get_connection(self.store_conn_id)
        except AirflowNotFoundException:
            return {}
        extra = conn.extra_dejson
        options: dict[str, Any] = {}
        if conn.login:
            options["access_key"] = conn.login
        if conn.password:
            options["secret_key"] = conn.password
        if extra.get("endpoint_url"):
            options["endpoint_url"] = extra["endpoint_url"]
        if extra.get("region_name"):
            options["region"] = extra["region_name"]
        return options

    def get_store(self, url: str, endpoint_url: str | None = None) -> ObjectStore:
        """The store at ``url``; an endpoint named by the task wins over the connection's."""
        options = self._s3_options() if url.startswith("s3://") else {}
        if endpoint_url:
            options["endpoint_url"] = endpoint_url
        return open_store(url, **options)

    def get_stores(self, location: StoreLocation,
                   failover: StoreLocation | None = None) -> dict[str | None, ObjectStore]:
        """A task's stores keyed as the ledger names them: None for its own store, a URL for its failover."""
        stores: dict[str | None, ObjectStore] = {None: self.get_store(location.url, location.endpoint_url)}
        if failover is not None:
            stores[failover.url] = self.get_store(failover.url, failover.endpoint_url)
        return stores

    def get_conn(self) -> dict[str, Any]:
        """The S3 options this hook would use (credentials included): what Airflow calls the connection."""
        return self._s3_options()

"""register_output and cleanup: merged files into normal storage and the catalog, then tidy up."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from airflow.sdk import Asset, BaseOperator, Context
from airflow.sdk.exceptions import AirflowException

from event_service import settings
from event_service.merge.part import MergedFile
from event_service.merge.register import cleanup_range_outputs, register_output
from event_service_airflow.hooks import LedgerHook, ObjectStoreHook
from event_service_airflow.operators.merge import STAGING


class RegisterOutputOperator(BaseOperator):
    """Writes each merged file to normal storage (no overwrite of a different file, checksum read back),
    records it in the catalog, marks its ranges ``merged``, and emits one Asset event for the dataset.

    Files are fetched from the staging area into a temporary folder under $EVENT_SERVICE_WORKDIR (default: the
    system's).

    :param task_name: the event-service task (templated)
    :param dataset_asset: the Asset of the task's dataset: the task's outlet, its event carries the files' facts
    :param merge_task_id: the task id of the mapped merge whose results are registered
    :param ledger_conn_id: the Airflow connection of the ledger
    :param store_conn_id: the Airflow connection of the object store and of normal storage
    :param kwargs: passed on to ``BaseOperator`` (``outlets`` defaults to ``[dataset_asset]``)
    """

    template_fields = ("task_name",)

    def __init__(self, *, task_name: str, dataset_asset: Asset, merge_task_id: str = "merge",
                 ledger_conn_id: str = LedgerHook.default_conn_name,
                 store_conn_id: str = ObjectStoreHook.default_conn_name, **kwargs: Any) -> None:
        kwargs.setdefault("outlets", [dataset_asset])
        super().__init__(**kwargs)
        self.task_name = task_name
        self.dataset_asset = dataset_asset
        self.merge_task_id = merge_task_id
        self.ledger_conn_id = ledger_conn_id
        self.store_conn_id = store_conn_id

    def execute(self, context: Context) -> dict[str, Any]:
        parts = context["ti"].xcom_pull(task_ids=[self.merge_task_id], key="return_value")  # a list, even of one
        merged_parts = sorted((p for p in (parts or []) if p), key=lambda p: p["index"])
        hook = ObjectStoreHook(self.store_conn_id)
        entries = []
        with LedgerHook(self.ledger_conn_id).get_conn() as ledger:
            spec = ledger.task_spec(self.task_name)
            staging = hook.get_store(spec.object_store.url, spec.object_store.endpoint_url)
            storage = hook.get_store(spec.merge.output_url, spec.merge.endpoint_url)
            try:
                with tempfile.TemporaryDirectory(prefix=f"register-{self.task_name}-",
                                                 dir=settings.WORKDIR.get()) as tmp:
                    for part in merged_parts:
                        local = Path(tmp) / part["file_name"]
                        staging.get(part["key"], local)
                        merged = MergedFile.from_dict({**part, "path": str(local)})
                        validation = []
                        for key in part.get("validation_keys", []):
                            validation.append(Path(tmp) / key.rsplit("/", 1)[-1])
                            staging.get(key, validation[-1])
                        entry = register_output(ledger, self.task_name, merged, storage, spec.dataset,
                                                validation=validation, certification=part.get("certification"))
                        entries.append(entry)
                        for path in (local, *validation):
                            path.unlink()
                        self.log.info("registered %s: %d events, adler32 %s, %d bytes", entry.location,
                                      entry.events, entry.adler32, entry.size)
            finally:
                staging.close()
                storage.close()
            status = ledger.status(self.task_name)
        if not entries:
            raise AirflowException(f"task {self.task_name!r}: the merge produced no file to register")
        outputs = [{"url": e.location, "events": e.events, "adler32": e.adler32, "size": e.size,
                    "certification": e.certification, "validation": e.validation} for e in entries]
        facts = {"task": self.task_name, "dataset": spec.dataset, "ranges": status.ranges,
                 "ranges_finished": status.counts["finished"] + status.counts["merged"],
                 "events_merged": sum(e.events for e in entries), "outputs": outputs}
        context["outlet_events"][self.dataset_asset].extra = facts
        return facts


class CleanupOperator(BaseOperator):
    """Deletes the per-range objects of merged ranges and the staged merged files.

    :param task_name: the event-service task (templated)
    :param ledger_conn_id: the Airflow connection of the ledger
    :param store_conn_id: the Airflow connection of the task's object stores
    :param kwargs: passed on to ``BaseOperator``
    """

    template_fields = ("task_name",)

    def __init__(self, *, task_name: str, ledger_conn_id: str = LedgerHook.default_conn_name,
                 store_conn_id: str = ObjectStoreHook.default_conn_name, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.task_name = task_name
        self.ledger_conn_id = ledger_conn_id
        self.store_conn_id = store_conn_id

    def execute(self, context: Context) -> int:
        with LedgerHook(self.ledger_conn_id).get_conn() as ledger:
            spec = ledger.task_spec(self.task_name)
            stores = ObjectStoreHook(self.store_conn_id).get_stores(spec.object_store, spec.object_store.failover)
            try:
                removed = cleanup_range_outputs(ledger, self.task_name, stores)
                staged = list(stores[None].list(f"{self.task_name}/{STAGING}/"))
                for item in staged:
                    stores[None].delete(item.key)
            finally:
                for store in stores.values():
                    store.close()
        self.log.info("removed %d range outputs and %d staged merged files", removed, len(staged))
        return removed

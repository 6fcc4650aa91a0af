"""merge: build one merged file from verified range outputs (mapped over the parts of the merge plan)."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from airflow.sdk import BaseOperator, Context
from airflow.sdk.exceptions import AirflowException, AirflowFailException

from event_service import settings
from event_service.merge.certify import certify_merged
from event_service.merge.errors import CorruptedOutputsError
from event_service.merge.part import merge_part, report_corrupted
from event_service.merge.plan import plan_task_merge
from event_service_airflow.hooks import LedgerHook, ObjectStoreHook

STAGING = "_merged"


def staging_key(task_name: str, file_name: str) -> str:
    """Where a merged file waits in the task's object store until register_output takes it."""
    return f"{task_name}/{STAGING}/{file_name}"


class MergeOperator(BaseOperator):
    """Merges part ``part`` of the task's merge plan and stages the file in the task's object store.

    Every input is checked against the ledger's adler32 and size first; bad ones are marked ``corrupted``
    (they go back to ready) and the merge fails naming them, for the next run to redo. The merged file is
    read back and checked to hold exactly its ranges' events, each once. Re-running gives the same file.

    :param task_name: the event-service task (templated)
    :param part: the 0-based index of the part in the task's merge plan (templated; mapped from the sensor)
    :param ledger_conn_id: the Airflow connection of the ledger
    :param store_conn_id: the Airflow connection of the task's object stores
    :param workdir_root: the folder for the temporary work folder (default: $EVENT_SERVICE_WORKDIR, else the system's)
    :param kwargs: passed on to ``BaseOperator``
    """

    template_fields = ("task_name", "part")

    def __init__(self, *, task_name: str, part: int | str, ledger_conn_id: str = LedgerHook.default_conn_name,
                 store_conn_id: str = ObjectStoreHook.default_conn_name, workdir_root: str | None = None,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.task_name = task_name
        self.part = part
        self.ledger_conn_id = ledger_conn_id
        self.store_conn_id = store_conn_id
        self.workdir_root = workdir_root

    def execute(self, context: Context) -> dict[str, Any]:
        index = int(self.part)
        with LedgerHook(self.ledger_conn_id).get_conn() as ledger:
            spec = ledger.task_spec(self.task_name)
            parts = {p.index: p for p in plan_task_merge(ledger, spec)}  # the plan the sensor mapped over
            if index not in parts:
                raise AirflowFailException(f"task {self.task_name!r}: the merge plan has parts {sorted(parts)}, "
                                           f"not {index}; the ledger changed since the plan was made")
            part = parts[index]
            stores = ObjectStoreHook(self.store_conn_id).get_stores(spec.object_store, spec.object_store.failover)
            root = self.workdir_root or settings.WORKDIR.get()
            try:
                with tempfile.TemporaryDirectory(prefix=f"merge-{self.task_name}-", dir=root) as tmp:
                    try:
                        merged = merge_part(part, stores, Path(tmp), spec.merge.command)
                    except CorruptedOutputsError as exc:
                        report_corrupted(ledger, exc)
                        raise AirflowException(f"{exc}\nThese ranges were sent back to ready: run the DAG again "
                                               "to redo them.") from None
                    hook = ObjectStoreHook(self.store_conn_id)
                    certified = certify_merged(merged.path, Path(tmp) / "validation", spec.merge,
                                               lambda url: hook.get_store(url, spec.merge.endpoint_url))
                    key = staging_key(self.task_name, merged.file_name)
                    # The work folder goes away: a local store on its file system takes the file as it is.
                    stored = stores[None].put(key, merged.path, move=True)
                    validation_keys = []
                    for path in certified[1] if certified else []:
                        validation_keys.append(staging_key(self.task_name, path.name))
                        stores[None].put(validation_keys[-1], path)
            finally:
                for store in stores.values():
                    store.close()
        self.log.info("merged %s: %d events from %d ranges, adler32 %s, %d bytes; staged as %s",
                      merged.file_name, merged.events, len(merged.range_ids), stored.adler32, stored.size, key)
        certification = certified[0].certification if certified else None
        if certified and certified[0].comparisons:
            failed = [f"{c.name} (p = {c.p_value:.3g})" for c in certified[0].comparisons if not c.passed]
            self.log.info("%s is %s against %s%s", merged.file_name, certification, certified[0].reference,
                          f": {', '.join(failed)} below {certified[0].min_p_value}" if failed else "")
        return {**merged.to_dict(), "key": key, "validation_keys": validation_keys, "certification": certification}

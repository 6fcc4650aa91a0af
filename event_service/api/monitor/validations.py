"""The validation sets of merged files, read from normal storage for the monitor page, and kept once read."""

from __future__ import annotations

import tempfile
import threading
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

from event_service.ledger import Ledger
from event_service.merge.certify import JSON_SUFFIX, Validation, parse_validation
from event_service.merge.register import catalog_entries
from event_service.stores import ObjectNotFoundError, ObjectStore
from event_service.stores import open_location as default_open_location

KEPT = 256  # validation sets kept in memory (a few kB each)

OpenLocation = Callable[[str, str | None], ObjectStore]


class ValidationCache:
    """Reads ``<file>.validation.json`` beside a task's merged file; a set is read again only when the file was
    registered again (its catalog time changed)."""

    def __init__(self) -> None:
        self._kept: OrderedDict[tuple[str, str, float], Validation] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, ledger: Ledger, task: str, file_name: str,
            open_location: OpenLocation | None = None) -> Validation:
        """The validation set of ``file_name`` of ``task``; LookupError when there is none, OSError when the
        storage cannot be read."""
        entry = next((e for e in catalog_entries(ledger, task=task) if e.file_name == file_name), None)
        if entry is None:
            raise LookupError(f"task {task!r} has no merged file {file_name!r} in the catalog")
        if entry.validation is None:
            raise LookupError(f"{file_name} of task {task!r} has no validation set")
        ident = (task, file_name, entry.registered_at)
        with self._lock:
            if ident in self._kept:
                self._kept.move_to_end(ident)
                return self._kept[ident]
        spec = ledger.task_spec(task)
        opener = open_location or default_open_location
        with opener(spec.merge.output_url, spec.merge.endpoint_url) as storage, \
                tempfile.TemporaryDirectory(prefix="es-validation-") as scratch:
            local = Path(scratch) / "validation.json"
            try:
                storage.get(file_name + JSON_SUFFIX, local)
            except ObjectNotFoundError:
                raise LookupError(f"no validation set stored at {entry.validation}") from None
            try:
                validation = parse_validation(local.read_bytes(), entry.validation)
            except ValueError as exc:
                raise LookupError(f"no readable validation set: {exc}") from None
        with self._lock:
            self._kept[ident] = validation
            while len(self._kept) > KEPT:
                self._kept.popitem(last=False)
        return validation

"""Pre-signed stage-out: the dispatch API signs each upload, so worker nodes need no object-store credentials."""

from __future__ import annotations

import threading
from collections.abc import Callable

from event_service.api.errors import NoPresignedUploadsError, UploadRefusedError
from event_service.ledger import Ledger
from event_service.messages import UploadGrant, UploadRequest
from event_service.spec import StoreLocation
from event_service.statuses import IN_FLIGHT
from event_service.stores import (
    ObjectStore,
    StoreCredentialsError,
    object_key,
    open_location,
)

# S3 checks a URL's expiry when the upload starts, so a long upload outlives it; a short life bounds what a
# grant is worth after the lease lapses or the task is cancelled.
UPLOAD_EXPIRES_S = 120


class UploadGrants:
    """Signs uploads for the tasks of one ledger, with one store client per task store (opened on first use,
    with this server's credentials)."""

    def __init__(self, open_ledger: Callable[[], Ledger]) -> None:
        self._open_ledger = open_ledger
        self._stores: dict[tuple[str, str | None], ObjectStore] = {}
        self._lock = threading.Lock()

    def grant(self, task: str, request: UploadRequest) -> UploadGrant:
        """A pre-signed PUT of the range's output to ``<task>/<range_id>/<attempt>/<file_name>``, bound to the
        adler32, size and MD5 the worker computed and to the key being new; only for the worker that holds the
        range in that attempt."""
        ledger = self._open_ledger()
        key = object_key(task, request.range_id, request.attempt, request.file_name)  # InvalidKeyError: 422
        held = ledger.range_info(task, request.range_id)  # RangeNotFoundError: 404
        if held.status not in IN_FLIGHT or held.worker != request.worker or held.attempt != request.attempt:
            raise UploadRefusedError(
                f"range {request.range_id!r} of task {task!r} is {held.status} (attempt {held.attempt}, worker "
                f"{held.worker!r}); worker {request.worker!r} does not hold it in attempt {request.attempt}")
        spec = ledger.task_spec(task)
        location: StoreLocation = spec.object_store
        if request.failover:
            if spec.object_store.failover is None:
                raise UploadRefusedError(f"task {task!r} names no failover store")
            location = spec.object_store.failover
        upload = None
        if location.url.startswith("s3://"):  # only S3 signs; other stores are not even opened here
            try:
                upload = self._store(location).presign_put(key, adler32=request.adler32, size=request.size,
                                                           content_md5=request.content_md5,
                                                           expires_s=UPLOAD_EXPIRES_S)
            except StoreCredentialsError as exc:
                raise NoPresignedUploadsError(
                    f"the dispatch API holds no credentials for the store {location.url} of task {task!r}, so "
                    f"it cannot sign uploads ({exc}); give the server credentials, or runners their own") from None
        if upload is None:
            raise NoPresignedUploadsError(
                f"the store {location.url} of task {task!r} cannot sign uploads; runners of this task need "
                "their own access to it")
        return UploadGrant(key=key, url=upload.url, method="PUT", headers=upload.headers,
                           expires_s=upload.expires_s, store=location.url if request.failover else None)

    def _store(self, location: StoreLocation) -> ObjectStore:
        ident = (location.url, location.endpoint_url)
        with self._lock:
            store = self._stores.get(ident)
            if store is None:
                store = self._stores[ident] = open_location(location.url, location.endpoint_url)
            return store

    def close(self) -> None:
        with self._lock:
            for store in self._stores.values():
                store.close()
            self._stores.clear()

"""Stage-out through uploads that the dispatch API pre-signs, for worker nodes with no object-store credentials."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Protocol
from urllib.parse import urlsplit

import requests

from event_service.api.errors import DispatchError
from event_service.checksums import upload_checksums
from event_service.messages import UploadGrant, UploadRequest
from event_service.stores import ObjectStoreError, StoredObject, StoreUnavailableError
from payload_runner.errors import UploadNotGrantedError

log = logging.getLogger(__name__)

UPLOAD_TIMEOUT_S = (10.0, 300.0)  # connect, then the longest silence while sending or awaiting the answer


class Granter(Protocol):
    """Who signs uploads: the runner's connection to the dispatch API."""

    def grant_upload(self, request: UploadRequest) -> UploadGrant: ...

    def ping(self) -> None: ...


class GrantedUploads:
    """A stage-out target (``url``, ``put``, ``head``, ``close``, as an ObjectStore offers them) whose uploads
    go to pre-signed URLs from the dispatch API. The runner computes each output's adler32 and size first; the
    signature binds them, with the key, so the store keeps exactly what the worker reported."""

    def __init__(self, granter: Granter, task: str, worker: str, store_url: str, *, failover: bool = False) -> None:
        self.url = store_url
        self._granter = granter
        self._task = task
        self._worker = worker
        self._failover = failover
        self._session = requests.Session()
        self._endpoint: str | None = None

    def put(self, key: str, path: Path, *, move: bool = False) -> StoredObject:
        """Upload ``path`` as ``key`` (``<task>/<range_id>/<attempt>/<file>``, as the stage-out builds it); the
        file stays where it is (``move`` changes nothing for an upload)."""
        parts = key.split("/")
        if len(parts) != 4 or parts[0] != self._task or not parts[2].isdigit():
            raise ValueError(f"{key!r} is not an output key <task>/<range_id>/<attempt>/<file> of task {self._task!r}")
        adler32, size, content_md5 = upload_checksums(path)
        request = UploadRequest(worker=self._worker, range_id=parts[1], attempt=int(parts[2]), file_name=parts[3],
                                adler32=adler32, size=size, content_md5=content_md5, failover=self._failover)
        try:
            grant = self._granter.grant_upload(request)
        except DispatchError as exc:
            if exc.status in (403, 404, 409, 422):
                raise UploadNotGrantedError(f"no upload of {key} granted: {exc.detail}") from exc
            raise
        if grant.key != key:
            raise UploadNotGrantedError(f"the server granted {grant.key!r} for output {key!r}")
        self._endpoint = "{0.scheme}://{0.netloc}/".format(urlsplit(grant.url))
        try:
            with open(path, "rb") as body:
                response = self._session.request(grant.method, grant.url, data=body, headers=grant.headers,
                                                 timeout=UPLOAD_TIMEOUT_S)
        except (requests.ConnectionError, requests.Timeout) as exc:
            raise StoreUnavailableError(self.url, key, f"pre-signed upload to {self._endpoint}: {exc}") from exc
        if response.status_code == 412:
            # The grant creates only: an object is already at this key, which only a grant for this range's
            # attempt (this runner's, whose answer was lost) can have written; the merge verifies it.
            log.info("%s is already in the store (an earlier upload of this output got through)", key)
        elif response.status_code >= 300:
            raise ObjectStoreError(self.url, key, f"pre-signed upload answered HTTP {response.status_code}: "
                                                  f"{response.text[:300]}")
        return StoredObject(key=key, size=size, adler32=adler32, url=f"{self.url.rstrip('/')}/{key}")

    def head(self, key: str) -> None:
        """Probe: does the store (or, before any upload was granted, the dispatch API) answer at all?"""
        if self._endpoint is None:
            self._granter.ping()
            return None
        try:
            self._session.head(self._endpoint, timeout=10)
        except (requests.ConnectionError, requests.Timeout) as exc:
            raise StoreUnavailableError(self.url, key, f"{self._endpoint} does not answer: {exc}") from exc
        return None

    def close(self) -> None:
        self._session.close()

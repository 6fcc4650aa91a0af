"""The XRootD object store (``root://host[:port]//abs/dir``) through the ``xrootd`` Python client (an extra).

A put writes ``<dir>/.<name>.<hex>.upload`` (opened with POSC, so a client that dies mid-write leaves nothing),
sets the extended attributes ``adler32`` and ``size`` on it, asks the server for its adler32
(``FileSystem.query(QueryCode.CHECKSUM, path)``, which needs ``xrootd.chksum adler32`` in the server's config)
and its size, compares both with the source's, and only then moves it to its final name with a server-side
``mv``: the object appears complete, metadata included, or not at all. ``head``/``get`` use the recorded
attributes, so data changed behind the store's back is caught by ``get``; ``server_adler32`` asks the server.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

from event_service.checksums import normalize_adler32
from event_service.stores.base import (
    CHUNK_BYTES,
    Checksum,
    Download,
    ObjectStore,
    StoredObject,
    iter_source,
)
from event_service.stores.errors import (
    XROOTD_INSTALL_HINT,
    BackendNotInstalledError,
    ChecksumMismatchError,
    ObjectStoreError,
    StoreUnavailableError,
)
from event_service.stores.keys import is_valid_key, normalize_store_prefix
from event_service.urls import parse_storage_url

ATTR_ADLER32 = "adler32"
ATTR_SIZE = "size"
KXR_NOT_FOUND = 3011
KXR_ATTR_NOT_FOUND = 3027
# XrdCl status codes meaning the server could not be reached or did not answer (XrdClStatus.hh).
UNREACHABLE_CODES = frozenset({101, 102, 103, 104, 105, 106, 107, 108, 109, 110, 202, 206})


def xrootd_client() -> tuple[ModuleType, ModuleType]:
    """``XRootD.client`` and ``XRootD.client.flags``, or BackendNotInstalledError saying what to install."""
    try:
        import XRootD.client
        import XRootD.client.flags
    except ImportError as exc:
        raise BackendNotInstalledError(
            f"the XRootD object store needs the xrootd Python client ({exc}); install it with: "
            f"{XROOTD_INSTALL_HINT}"
        ) from exc
    return XRootD.client, XRootD.client.flags


class XRootDStore(ObjectStore):
    """Objects as files below a directory of an XRootD server, with adler32 and size as extended attributes.

    ``timeout_s`` bounds each request once connected; how long to keep trying to connect is the XRootD
    client's own setting (``XRD_CONNECTIONWINDOW`` and ``XRD_CONNECTIONRETRY`` in the environment).
    """

    def __init__(self, url: str, *, timeout_s: int = 60) -> None:
        parsed = parse_storage_url(url, ("root",))
        self.host = parsed.netloc
        self.base = "/" + normalize_store_prefix(parsed.path)
        self.url = f"root://{self.host}/{self.base}"
        self.timeout_s = timeout_s
        self._client, self._flags = xrootd_client()
        self._fs = self._client.FileSystem(f"root://{self.host}")

    # ------------------------------------------------------------------ helpers

    def _path(self, key: str) -> str:
        return f"{self.base.rstrip('/')}/{key}"

    def _file_url(self, path: str) -> str:
        return f"root://{self.host}/{path}"

    def _check(self, status: Any, key: str | None, action: str, *, missing_ok: bool = False) -> bool:
        """True if ``status`` is a success, False if the path is missing and ``missing_ok``; raise otherwise."""
        if status.ok:
            return True
        message = f"{action}: {status.message.strip()}"
        if status.errno == KXR_NOT_FOUND:
            if missing_ok:
                return False
            if key is not None:
                raise self.not_found(key, message)
        if status.code in UNREACHABLE_CODES:
            raise StoreUnavailableError(self.url, key, f"{message} (server root://{self.host})")
        raise ObjectStoreError(self.url, key, message)

    def _stat(self, key: str, path: str) -> Any | None:
        status, info = self._fs.stat(path, timeout=self.timeout_s)
        return info if self._check(status, key, f"stat {path}", missing_ok=True) else None

    def _attributes(self, key: str, path: str, actual_size: int) -> Checksum | None:
        """The ``adler32``/``size`` attributes of ``path`` (size defaults to ``actual_size``); None when it has
        no ``adler32``."""
        status, items = self._fs.get_xattr(path, [ATTR_ADLER32, ATTR_SIZE], timeout=self.timeout_s)
        if not self._check(status, key, f"read the attributes of {path}", missing_ok=True):
            return None
        values: dict[str, str] = {}
        for name, value, item_status in items:
            if item_status["ok"]:
                values[name] = value
            elif item_status["errno"] not in (KXR_ATTR_NOT_FOUND, KXR_NOT_FOUND):
                raise ObjectStoreError(self.url, key, f"read attribute {name} of {path}: "
                                                      f"{item_status['message'].strip()}")
        if ATTR_ADLER32 not in values:
            return None
        try:
            return Checksum(normalize_adler32(values[ATTR_ADLER32]), int(values.get(ATTR_SIZE, actual_size)))
        except ValueError as exc:
            raise ObjectStoreError(self.url, key, f"malformed attributes {values!r} on {path}: {exc}") from exc

    def _object(self, key: str, path: str, size: int) -> StoredObject | None:
        meta = self._attributes(key, path, size)
        if meta is None:
            return None
        return StoredObject(key, size, meta.adler32, self._file_url(path))

    def _query_adler32(self, key: str, path: str) -> str:
        status, response = self._fs.query(self._flags.QueryCode.CHECKSUM, path, timeout=self.timeout_s)
        self._check(status, key, f"checksum query for {path}")
        text = (response or b"").decode(errors="replace").strip("\x00 \n")
        algorithm, _, value = text.partition(" ")
        if algorithm.lower() != "adler32" or not value:
            raise ObjectStoreError(self.url, key, f"the server answered the checksum query with {text!r}, not "
                                                  "'adler32 <hex>'; configure the server with 'xrootd.chksum adler32'")
        value = value.strip()
        return normalize_adler32(value.zfill(8) if len(value) < 8 else value)

    def _remove(self, key: str, path: str) -> None:
        status, _ = self._fs.rm(path, timeout=self.timeout_s)
        self._check(status, key, f"remove {path}", missing_ok=True)

    def _close(self, handle: Any, key: str, path: str) -> None:
        status, _ = handle.close(timeout=self.timeout_s)
        self._check(status, key, f"close {path}")

    # ------------------------------------------------------------------ public extras

    def server_adler32(self, key: str) -> str:
        """The adler32 the server computes now for the data under ``key`` (not the recorded one)."""
        obj = self.head(key)
        if obj is None:
            raise self.not_found(key)
        return self._query_adler32(key, self._path(key))

    # ------------------------------------------------------------------ backend hooks

    def _put(self, key: str, source: Path | bytes, expected: Checksum) -> StoredObject:
        path = self._path(key)
        directory, _, name = path.rpartition("/")
        temp = f"{directory}/.{name}.{uuid.uuid4().hex}.upload"
        try:
            self._write(key, temp, source)
            self._record_and_verify(key, temp, expected)
            status, _ = self._fs.mv(temp, path, timeout=self.timeout_s)
            self._check(status, key, f"move {temp} to {path}")
        except BaseException as exc:
            try:
                self._remove(key, temp)
            except ObjectStoreError as cleanup:
                exc.add_note(f"removing the temporary file failed too: {cleanup}")
            raise
        return StoredObject(key, expected.size, expected.adler32, self._file_url(path))

    def _write(self, key: str, temp: str, source: Path | bytes) -> None:
        """Write ``source`` to the new file ``temp`` (POSC: it vanishes if this client dies before closing it)."""
        flags = self._flags.OpenFlags
        handle = self._client.File()
        status, _ = handle.open(self._file_url(temp), flags.NEW | flags.MAKEPATH | flags.POSC,
                                timeout=self.timeout_s)
        self._check(status, key, f"create {temp}")
        try:
            offset = 0
            for chunk in iter_source(source):
                status, _ = handle.write(chunk, offset, timeout=self.timeout_s)
                self._check(status, key, f"write {temp} at offset {offset}")
                offset += len(chunk)
        except BaseException as exc:
            status, _ = handle.close(timeout=self.timeout_s)
            if not status.ok:
                exc.add_note(f"closing {temp} after the failure failed too: {status.message.strip()}")
            raise
        self._close(handle, key, temp)

    def _record_and_verify(self, key: str, temp: str, expected: Checksum) -> None:
        """Set the metadata attributes on ``temp``, then check its size and the server's adler32 of it."""
        status, results = self._fs.set_xattr(
            temp, [(ATTR_ADLER32, expected.adler32), (ATTR_SIZE, str(expected.size))], timeout=self.timeout_s)
        self._check(status, key, f"set the attributes of {temp}")
        for attribute, item_status in results:
            if not item_status["ok"]:
                raise ObjectStoreError(self.url, key, f"set attribute {attribute} of {temp}: "
                                                      f"{item_status['message'].strip()}")
        stage = "after upload, in the server's report on the temporary file"
        info = self._stat(key, temp)
        found_size = info.size if info is not None else "no file"
        if found_size != expected.size:
            raise ChecksumMismatchError(self.url, key, "size", expected.size, found_size, stage)
        found_adler32 = self._query_adler32(key, temp)  # a new file: the server computes it afresh
        if found_adler32 != expected.adler32:
            raise ChecksumMismatchError(self.url, key, "adler32", expected.adler32, found_adler32, stage)

    def _head(self, key: str) -> StoredObject | None:
        path = self._path(key)
        info = self._stat(key, path)
        if info is None or info.flags & self._flags.StatInfoFlags.IS_DIR:
            return None
        return self._object(key, path, info.size)

    @contextlib.contextmanager
    def _download(self, key: str) -> Iterator[Download]:
        path = self._path(key)
        info = self._stat(key, path)
        meta = self._attributes(key, path, info.size) if info is not None else None
        if info is None or meta is None or info.flags & self._flags.StatInfoFlags.IS_DIR:
            raise self.not_found(key, f"no complete object at {path}")
        obj = StoredObject(key, info.size, meta.adler32, self._file_url(path))
        handle = self._client.File()
        status, _ = handle.open(self._file_url(path), self._flags.OpenFlags.READ, timeout=self.timeout_s)
        self._check(status, key, f"open {path}")
        try:
            yield Download(obj, meta.size, self._chunks(handle, key, path))
        except BaseException as exc:
            status, _ = handle.close(timeout=self.timeout_s)
            if not status.ok:
                exc.add_note(f"closing {path} after the failure failed too: {status.message.strip()}")
            raise
        self._close(handle, key, path)

    def _chunks(self, handle: Any, key: str, path: str) -> Iterator[bytes]:
        offset = 0
        while True:
            status, data = handle.read(offset, CHUNK_BYTES, timeout=self.timeout_s)
            self._check(status, key, f"read {path} at offset {offset}")
            if not data:
                return
            yield data
            offset += len(data)

    def _list(self, prefix: str) -> Iterator[StoredObject]:
        directory, _, name_start = prefix.rpartition("/")
        start = self._path(directory) if directory else self.base
        flags = self._flags.DirListFlags
        status, listing = self._fs.dirlist(start, flags.STAT | flags.RECURSIVE, timeout=self.timeout_s)
        if not self._check(status, None, f"list {start}", missing_ok=True):
            return
        entries = sorted(((entry.name, entry.statinfo) for entry in listing), key=lambda item: item[0])
        for name, info in entries:
            key = f"{directory}/{name}" if directory else name
            if (not key.startswith(prefix) or not is_valid_key(key)
                    or info is None or info.flags & self._flags.StatInfoFlags.IS_DIR):
                continue  # not an object's name, a directory, or gone since the listing
            obj = self._object(key, self._path(key), info.size)
            if obj is not None:
                yield obj

    def _delete(self, key: str) -> None:
        path = self._path(key)
        info = self._stat(key, path)
        if info is None or info.flags & self._flags.StatInfoFlags.IS_DIR:
            return
        self._remove(key, path)

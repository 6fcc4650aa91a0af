"""The object-store interface every backend implements: put with checksum metadata, head, get, list, delete,
and pre-signed URLs where the backend has them.

The public methods here check keys and checksums and make downloads atomic; a backend implements the
underscored hooks. A stored object is complete by construction: it is absent, or its data is under its final key
together with its adler32 and size metadata. Data without that metadata (a crash mid-put on a local store, an
object written by another tool) is not an object of the store: ``head`` says None, ``list`` skips it, ``get``
raises ObjectNotFoundError, ``delete`` removes it.
"""

from __future__ import annotations

import contextlib
import os
import re
import stat
import tempfile
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Self

from event_service.checksums import (
    CONTENT_MD5_PATTERN,
    adler32_bytes,
    adler32_file,
    adler32_update,
    format_adler32,
    normalize_adler32,
)
from event_service.stores.errors import ChecksumMismatchError, ObjectNotFoundError
from event_service.stores.keys import validate_key, validate_prefix

CHUNK_BYTES = 4 << 20
MAX_PRESIGN_SECONDS = 7 * 24 * 3600


@dataclass(frozen=True)
class StoredObject:
    """An object as the store holds it: its key, size in bytes, adler32 (8 lowercase hex digits) and URL."""

    key: str
    size: int
    adler32: str
    url: str


@dataclass(frozen=True)
class PresignedUpload:
    """A pre-signed upload: send ``method`` to ``url`` with exactly ``headers`` (they are part of the signature)
    and the object's bytes as the body, before ``expires_s`` seconds have passed since it was made."""

    url: str
    headers: dict[str, str] = field(default_factory=dict)
    method: str = "PUT"
    expires_s: int = 0


@dataclass(frozen=True)
class Checksum:
    """An adler32 and a size in bytes."""

    adler32: str
    size: int


@dataclass(frozen=True)
class Download:
    """What a backend hands ``get``: the object, the size its metadata records, and its bytes in chunks."""

    obj: StoredObject
    recorded_size: int
    chunks: Iterable[bytes]


def source_checksum(source: Path | bytes) -> Checksum:
    """The adler32 and size of a put's source: a file or a byte string."""
    if isinstance(source, bytes):
        return Checksum(adler32_bytes(source), len(source))
    if isinstance(source, Path):
        value, size = adler32_file(source)
        return Checksum(value, size)
    raise TypeError(f"a put source is a pathlib.Path or bytes, not {type(source).__name__}")


def iter_file(path: Path, chunk_bytes: int = CHUNK_BYTES) -> Iterator[bytes]:
    """The bytes of a file in chunks."""
    with open(path, "rb") as stream:
        while chunk := stream.read(chunk_bytes):
            yield chunk


def iter_source(source: Path | bytes, chunk_bytes: int = CHUNK_BYTES) -> Iterator[bytes]:
    """The bytes of a put's source in chunks."""
    if isinstance(source, bytes):
        for start in range(0, len(source), chunk_bytes):
            yield source[start:start + chunk_bytes]
    else:
        yield from iter_file(source, chunk_bytes)


def symlink_on_the_way(path: Path, below: Path) -> bool:
    """Whether ``below`` or an existing part of ``path`` under it is a symbolic link: an lstat per part up to the
    first missing one (nothing below a missing part exists to point anywhere), far cheaper than resolving the whole
    path from ``/``."""
    current = str(below)
    for part in ("", *path.relative_to(below).parts):
        current = os.path.join(current, part) if part else current
        try:
            if stat.S_ISLNK(os.lstat(current).st_mode):
                return True
        except FileNotFoundError:
            return False
    return False


def fsync_dir(path: Path) -> None:
    """Make a rename or unlink in directory ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _check_expires(expires_s: int) -> None:
    if isinstance(expires_s, bool) or not isinstance(expires_s, int) or not 0 < expires_s <= MAX_PRESIGN_SECONDS:
        raise ValueError(f"expires_s must be an int in 1..{MAX_PRESIGN_SECONDS}, got {expires_s!r}")


class ObjectStore(ABC):
    """An object store for range outputs; every object carries its adler32 and size as metadata."""

    url: str
    """The store's URL (``file:///dir``, ``s3://bucket/prefix``, ``root://host//dir``), named in every error."""

    remote: bool = True
    """Whether each call waits on a server: many objects are then looked at from several threads at once. A local
    directory's calls are a few system calls each, and threads only add their overhead (2.5x measured)."""

    # ------------------------------------------------------------------ public interface

    def put(self, key: str, source: Path | bytes, *, adler32: str | None = None,
            size: int | None = None, move: bool = False) -> StoredObject:
        """Store ``source`` under ``key`` atomically with its adler32 and size as metadata, and verify it.

        The source's adler32 and size are computed; ``adler32``/``size``, when given (say, as the payload
        reported them), must match them. After the upload the object is checked against what the store reports;
        on any mismatch ChecksumMismatchError is raised and nothing is left under ``key`` but a previous
        complete object (or nothing).

        With ``move``, a store that can take the file itself (a local directory on the source's file system)
        renames it into place instead of copying it, and the source is gone afterwards; any other store copies
        it and leaves it where it is.
        """
        key = validate_key(key)
        expected = source_checksum(source)
        if adler32 is not None and normalize_adler32(adler32) != expected.adler32:
            raise ChecksumMismatchError(self.url, key, "adler32", normalize_adler32(adler32), expected.adler32,
                                        "between the given value and the source, before upload")
        if size is not None and size != expected.size:
            raise ChecksumMismatchError(self.url, key, "size", size, expected.size,
                                        "between the given value and the source, before upload")
        if move and isinstance(source, Path):
            taken = self._take(key, source, expected)
            if taken is not None:
                return taken
        return self._put(key, source, expected)

    def head(self, key: str) -> StoredObject | None:
        """The object under ``key`` (its size as the store reports it, its recorded adler32), or None."""
        return self._head(validate_key(key))

    def get(self, key: str, dest: Path) -> StoredObject:
        """Download ``key`` to ``dest`` atomically (a temporary name in dest's directory, then a rename), after
        checking the downloaded bytes against the object's adler32 and size metadata. On a mismatch
        ChecksumMismatchError is raised and ``dest`` is left as it was."""
        key = validate_key(key)
        dest = Path(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        partial = dest.parent / f".{dest.name}.{uuid.uuid4().hex}.part"
        with self._download(key) as download:
            try:
                value, size = 1, 0
                with open(partial, "xb") as out:
                    for chunk in download.chunks:
                        value = adler32_update(chunk, value)
                        size += len(chunk)
                        out.write(chunk)
                    out.flush()
                    os.fsync(out.fileno())
                if size != download.recorded_size:
                    raise ChecksumMismatchError(self.url, key, "size", download.recorded_size, size,
                                                "after download")
                if format_adler32(value) != download.obj.adler32:
                    raise ChecksumMismatchError(self.url, key, "adler32", download.obj.adler32,
                                                format_adler32(value), "after download")
                os.replace(partial, dest)
            except BaseException:
                partial.unlink(missing_ok=True)
                raise
        return download.obj

    def adopt(self, key: str, *, adler32: str, size: int) -> StoredObject:
        """Give this store's metadata to an object another program wrote without it (a PanDA pilot's upload).

        An object that already has its metadata is returned as it is. Otherwise its bytes are read and must
        have ``adler32`` and ``size`` (ChecksumMismatchError if not, and the object is left untouched); then
        it is stored again with its metadata, so that ``head`` and ``get`` see it like any other object.
        ObjectNotFoundError when nothing is under ``key``.
        """
        key = validate_key(key)
        found = self._head(key)
        if found is not None:
            return found
        with tempfile.TemporaryDirectory(prefix="es-adopt-") as scratch:
            raw = Path(scratch) / "object"
            self._read_unrecorded(key, raw)
            return self.put(key, raw, adler32=adler32, size=size)

    def list(self, prefix: str = "") -> Iterator[StoredObject]:
        """Every object whose key starts with ``prefix`` (a plain string prefix, as in S3)."""
        return self._list(validate_prefix(prefix))

    def delete(self, key: str) -> None:
        """Remove ``key`` (data and metadata); removing an absent key is not an error."""
        self._delete(validate_key(key))

    def presign_put(self, key: str, *, adler32: str, size: int, content_md5: str,
                    expires_s: int) -> PresignedUpload | None:
        """A pre-signed upload of ``size`` bytes with adler32 ``adler32`` and MD5 ``content_md5`` (base64) to
        ``key``, or None where the backend has none. The uploader needs no credentials; the metadata, the MD5
        (the store refuses other bytes) and a create-only condition (it never overwrites) are in the
        signature."""
        key = validate_key(key)
        adler32 = normalize_adler32(adler32)
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise ValueError(f"size must be an int >= 0, got {size!r}")
        if not isinstance(content_md5, str) or not re.fullmatch(CONTENT_MD5_PATTERN, content_md5):
            raise ValueError(f"content_md5 must be the base64 of a 16-byte MD5 digest, got {content_md5!r}")
        _check_expires(expires_s)
        return self._presign_put(key, Checksum(adler32, size), content_md5, expires_s)

    def presign_get(self, key: str, expires_s: int) -> str | None:
        """A pre-signed download URL for ``key``, or None where the backend has none."""
        key = validate_key(key)
        _check_expires(expires_s)
        return self._presign_get(key, expires_s)

    def close(self) -> None:  # noqa: B027  (a hook: backends without connections keep this no-op)
        """Release network connections; the store can still be used afterwards (they are re-opened)."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r})"

    # ------------------------------------------------------------------ backend hooks (keys already checked)

    @abstractmethod
    def _put(self, key: str, source: Path | bytes, expected: Checksum) -> StoredObject:
        """Store ``source`` (whose checksum is ``expected``) atomically under ``key`` and verify it."""

    @abstractmethod
    def _head(self, key: str) -> StoredObject | None:
        """The complete object under ``key``, or None."""

    @abstractmethod
    def _download(self, key: str) -> contextlib.AbstractContextManager[Download]:
        """Open ``key`` for reading; raise ObjectNotFoundError (see ``not_found``) when it is absent."""

    @abstractmethod
    def _list(self, prefix: str) -> Iterator[StoredObject]:
        """The complete objects whose keys start with ``prefix``."""

    @abstractmethod
    def _delete(self, key: str) -> None:
        """Remove ``key``'s data and metadata if present."""

    def _take(self, key: str, source: Path, expected: Checksum) -> StoredObject | None:
        """Make the file ``source`` itself the object ``key`` (a rename), verified; None where the store cannot,
        and the put copies it instead."""
        return None

    def _presign_put(self, key: str, expected: Checksum, content_md5: str, expires_s: int) -> PresignedUpload | None:
        return None

    def _read_unrecorded(self, key: str, dest: Path) -> None:
        """Copy the bytes of an object that has no metadata to ``dest``; ObjectNotFoundError when there are none.
        Stores that only ever hold objects written through ``put`` have none."""
        raise self.not_found(key, "no object without metadata here (only objects written through this store)")

    def _presign_get(self, key: str, expires_s: int) -> str | None:
        return None

    def not_found(self, key: str, detail: str = "no such object") -> ObjectNotFoundError:
        """The error for an absent object."""
        return ObjectNotFoundError(self.url, key, detail)

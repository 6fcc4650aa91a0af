"""The local-directory object store (``file:///abs/dir``), the embedded default: metadata in an extended attribute.

An object ``<dir>/<name>`` carries its adler32 and size as JSON in its extended attribute
``user.event_service.meta``. A put writes ``<dir>/.<name>.<hex>.tmp``, sets the attribute on it, fsyncs and checks
it, renames it into place and fsyncs the directory: data and metadata appear together or not at all, and an
overwrite replaces both at once. On a file system without user extended attributes (NFSv3, tmpfs before Linux
6.6, some parallel file systems) the metadata goes into the JSON sidecar ``<dir>/.<name>.meta`` instead: the put
removes any old sidecar, renames the data into place and only then writes the new sidecar (itself through a
temporary file and a rename), fsyncing the directory after each step that changed it. Either way a crash leaves
the old complete object, nothing, or data without metadata, which ``head`` and ``list`` treat as absent (and a
later put replaces). Reads take the attribute first and the sidecar when there is none, so stores written either
way (or by earlier versions, which always used sidecars) read alike. Names starting with ``.`` are never keys, so
temporary and sidecar files never collide with objects and ``list`` skips them.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import secrets
import stat
from collections.abc import Iterator
from pathlib import Path

from event_service.checksums import adler32_file, adler32_stream, normalize_adler32
from event_service.stores.base import (
    Checksum,
    Download,
    ObjectStore,
    StoredObject,
    fsync_dir,
    iter_file,
    iter_source,
    symlink_on_the_way,
)
from event_service.stores.errors import (
    ChecksumMismatchError,
    InvalidKeyError,
    ObjectStoreError,
)
from event_service.stores.keys import is_valid_key

META_SUFFIX = ".meta"
META_XATTR = "user.event_service.meta"
NO_XATTRS = (errno.ENOTSUP, errno.EOPNOTSUPP)  # the file system keeps no user extended attributes

log = logging.getLogger(__name__)


def _meta_path(path: Path) -> Path:
    return path.parent / f".{path.name}{META_SUFFIX}"


def _temp_path(path: Path, what: str) -> Path:
    return path.parent / f".{path.name}.{what}{secrets.token_hex(16)}.tmp"


def _meta_json(checksum: Checksum) -> str:
    return json.dumps({"adler32": checksum.adler32, "size": checksum.size})


class LocalStore(ObjectStore):
    """Objects as files under a local directory, their metadata in an extended attribute (or a sidecar file)."""

    remote = False
    xattrs = True
    """Whether puts keep the metadata in an extended attribute; turned off, with a warning, the first time the file
    system refuses one (then puts write sidecars)."""

    def __init__(self, root: str | Path) -> None:
        root = Path(root)
        if not root.is_absolute():
            raise ValueError(f"a local object store needs an absolute directory, got {str(root)!r}")
        self.root = Path(os.path.normpath(root))
        self.url = self.root.as_uri()

    # ------------------------------------------------------------------ paths

    def _inside(self, key: str, path: Path) -> Path:
        """``path`` if, with symbolic links resolved, it stays below the root; else InvalidKeyError."""
        if not symlink_on_the_way(path, self.root):
            return path  # keys hold no '..' and no empty segment: only a symbolic link could lead out
        real_root = os.path.realpath(self.root)
        real = os.path.realpath(path)
        if real != real_root and not real.startswith(real_root.rstrip(os.sep) + os.sep):
            raise InvalidKeyError(key, f"resolves to {real}, outside the store's directory {real_root} "
                                       "(through a symbolic link)")
        return path

    def path(self, key: str) -> Path:
        """The file that holds (or would hold) ``key``'s data."""
        return self._inside(key, self.root.joinpath(*key.split("/")))

    def _read_meta(self, key: str, path: Path) -> Checksum | None:
        """The metadata of the object at ``path``: its extended attribute, else its sidecar; None without either."""
        try:
            raw = os.getxattr(path, META_XATTR, follow_symlinks=False)
        except FileNotFoundError:
            return None
        except OSError as exc:
            if exc.errno != errno.ENODATA and exc.errno not in NO_XATTRS:
                raise ObjectStoreError(self.url, key, f"cannot read the metadata attribute of {path}: {exc}") from exc
        else:
            return self._parse_meta(key, raw.decode("utf-8", "replace"), f"metadata attribute {META_XATTR} of {path}")
        meta = _meta_path(path)
        try:
            text = meta.read_text()
        except FileNotFoundError:
            return None
        return self._parse_meta(key, text, f"metadata file {meta}")

    def _parse_meta(self, key: str, text: str, where: str) -> Checksum:
        try:
            data = json.loads(text)
            adler32 = normalize_adler32(data["adler32"])
            size = data["size"]
            if isinstance(size, bool) or not isinstance(size, int) or size < 0:
                raise ValueError(f"size {size!r} is not an int >= 0")
        except (ValueError, KeyError, TypeError) as exc:
            raise ObjectStoreError(self.url, key, f"{where} is malformed: {exc}") from exc
        return Checksum(adler32, size)

    def _set_meta_xattr(self, fd: int, checksum: Checksum) -> bool:
        """Give the open file its metadata attribute; False (and sidecars from now on) if the file system cannot."""
        if not self.xattrs:
            return False
        try:
            os.setxattr(fd, META_XATTR, _meta_json(checksum).encode())
        except OSError as exc:
            if exc.errno not in NO_XATTRS:
                raise
            self.xattrs = False
            log.warning("%s: the file system keeps no extended attributes (%s); metadata goes into sidecar files",
                        self.root, exc)
            return False
        return True

    def _write_meta(self, path: Path, checksum: Checksum) -> None:
        temp = _temp_path(path, "meta.")
        try:
            with open(temp, "x") as out:
                out.write(_meta_json(checksum))
                out.flush()
                os.fsync(out.fileno())
            os.replace(temp, _meta_path(path))
        except BaseException:
            temp.unlink(missing_ok=True)
            raise
        fsync_dir(path.parent)

    # ------------------------------------------------------------------ backend hooks

    def _put(self, key: str, source: Path | bytes, expected: Checksum) -> StoredObject:
        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        temp = _temp_path(path, "")
        try:
            with open(temp, "xb") as out:
                for chunk in iter_source(source):
                    out.write(chunk)
                out.flush()
                in_xattr = self._set_meta_xattr(out.fileno(), expected)
                os.fsync(out.fileno())
            found_adler32, found_size = adler32_file(temp)
            if found_size != expected.size:
                raise ChecksumMismatchError(self.url, key, "size", expected.size, found_size,
                                            "after upload, in the written file before its rename into place")
            if found_adler32 != expected.adler32:
                raise ChecksumMismatchError(self.url, key, "adler32", expected.adler32, found_adler32,
                                            "after upload, in the written file before its rename into place")
            if in_xattr:
                os.replace(temp, path)  # data and metadata together
                fsync_dir(path.parent)
                _meta_path(path).unlink(missing_ok=True)  # an older sidecar; the attribute is read first anyway
                return StoredObject(key, expected.size, expected.adler32, path.as_uri())
            try:
                _meta_path(path).unlink()  # an old object stops existing before its data changes
            except FileNotFoundError:
                pass  # a new key: nothing to make durable yet
            else:
                fsync_dir(path.parent)
            os.replace(temp, path)
            fsync_dir(path.parent)
        except BaseException:
            temp.unlink(missing_ok=True)
            raise
        self._write_meta(path, expected)
        return StoredObject(key, expected.size, expected.adler32, path.as_uri())

    def _take(self, key: str, source: Path, expected: Checksum) -> StoredObject | None:
        """Rename ``source`` into place as ``key``, its metadata attribute set, fsynced and its adler32 read again
        first. None (the put copies instead) when the file is not a regular file with one link, the file system
        keeps no extended attributes, or the store is on another file system."""
        if not self.xattrs:
            return None
        path = self.path(key)
        try:
            fd = os.open(source, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError:
            return None  # a symbolic link, or gone: the copy says what is wrong
        with open(fd, "rb") as stream:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1 or not self._set_meta_xattr(fd, expected):
                return None
            os.fsync(fd)
            found_adler32, found_size = adler32_stream(stream)
        try:
            if found_size != expected.size:  # the file changed since the put read it
                raise ChecksumMismatchError(self.url, key, "size", expected.size, found_size,
                                            f"in {source} while it was moved into the store")
            if found_adler32 != expected.adler32:
                raise ChecksumMismatchError(self.url, key, "adler32", expected.adler32, found_adler32,
                                            f"in {source} while it was moved into the store")
            path.parent.mkdir(parents=True, exist_ok=True)
            os.replace(source, path)  # data and metadata together, as for a copy
        except BaseException as exc:
            os.removexattr(source, META_XATTR)  # the source stays as it was
            if isinstance(exc, OSError) and exc.errno == errno.EXDEV:
                return None  # another file system: copied instead
            raise
        fsync_dir(path.parent)
        _meta_path(path).unlink(missing_ok=True)
        return StoredObject(key, expected.size, expected.adler32, path.as_uri())

    def _complete(self, key: str, path: Path) -> tuple[StoredObject, Checksum] | None:
        """The object at ``path`` and its recorded metadata, if both data and sidecar are there."""
        meta = self._read_meta(key, path)
        if meta is None:
            return None
        try:
            info = path.stat(follow_symlinks=False)
        except FileNotFoundError:
            return None
        if not stat.S_ISREG(info.st_mode):
            return None
        return StoredObject(key, info.st_size, meta.adler32, path.as_uri()), meta

    def _head(self, key: str) -> StoredObject | None:
        found = self._complete(key, self.path(key))
        return found[0] if found else None

    @contextlib.contextmanager
    def _download(self, key: str) -> Iterator[Download]:
        path = self.path(key)
        found = self._complete(key, path)
        if found is None:
            raise self.not_found(key, f"no complete object at {path}")
        obj, meta = found
        yield Download(obj, meta.size, iter_file(path))

    def _list(self, prefix: str) -> Iterator[StoredObject]:
        directory, _, name_start = prefix.rpartition("/")
        start = self.root.joinpath(*directory.split("/")) if directory else self.root
        self._inside(prefix, start)
        if start.is_dir() and not start.is_symlink():
            yield from self._walk(start, directory, name_start)

    def _walk(self, directory: Path, relative: str, name_start: str) -> Iterator[StoredObject]:
        with os.scandir(directory) as scan:
            entries = sorted(scan, key=lambda entry: entry.name)
        for entry in entries:
            if entry.name.startswith(".") or not entry.name.startswith(name_start):
                continue
            key = f"{relative}/{entry.name}" if relative else entry.name
            if entry.is_dir(follow_symlinks=False):
                yield from self._walk(Path(entry.path), key, "")
            elif entry.is_file(follow_symlinks=False) and is_valid_key(key):
                obj = self._head(key)
                if obj is not None:
                    yield obj

    def _delete(self, key: str) -> None:
        path = self.path(key)
        if path.is_dir() and not path.is_symlink():
            return
        _meta_path(path).unlink(missing_ok=True)  # the object stops existing first
        path.unlink(missing_ok=True)
        if path.parent.is_dir():
            fsync_dir(path.parent)

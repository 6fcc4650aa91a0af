"""Archive outputs: several ranges' files in one tar or zip (as PanDA pilots upload them), read safely.

A range whose output sits in an archive records the archive as its output object (key, adler32, size)
and names its own file in ``member``: either the member's exact path in the archive, or a token that the
file name carries (PanDA pilots keep the payload's file names, which hold the event range id). Members are
never extracted by their own paths: each is copied, by content, to a path the caller chooses, so an
archive with ``../`` or absolute names cannot write outside the scratch directory.
"""

from __future__ import annotations

import re
import tarfile
import zipfile
from collections.abc import Iterable
from pathlib import Path, PurePosixPath
from types import TracebackType
from typing import IO, Self

from event_service.merge.errors import ArchiveError

COPY_CHUNK = 1 << 20
MAX_MEMBER_BYTES = 16 * 1024**3  # no range output is near this; a bomb stops here


def find_member(names: Iterable[str], wanted: str) -> str:
    """The archive member for ``wanted``: the member of that exact path, else the one regular file whose
    name holds ``wanted`` as a whole token (not followed or preceded by a letter or digit)."""
    names = list(names)
    if wanted in names:
        return wanted
    token = re.compile(rf"(?<![A-Za-z0-9]){re.escape(wanted)}(?![A-Za-z0-9])")
    matches = [name for name in names if token.search(PurePosixPath(name).name)]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        shown = ", ".join(sorted(names)[:10]) + (" …" if len(names) > 10 else "")
        raise ArchiveError(f"no member named {wanted!r} or holding it in its file name (members: {shown or 'none'})")
    raise ArchiveError(f"{len(matches)} members hold {wanted!r} in their names: {', '.join(sorted(matches))}")


class ArchiveReader:
    """Reads a tar (any compression) or zip archive's regular files by name."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._tar: tarfile.TarFile | None = None
        self._zip: zipfile.ZipFile | None = None
        try:
            if zipfile.is_zipfile(path):
                self._zip = zipfile.ZipFile(path)
            else:
                self._tar = tarfile.open(path, "r:*")
        except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError) as exc:
            raise ArchiveError(f"{path.name} is not a readable tar or zip archive: {exc}") from None

    def names(self) -> list[str]:
        """The paths of the archive's regular files (directories, links and devices are left out)."""
        try:
            if self._zip is not None:
                return [info.filename for info in self._zip.infolist() if not info.is_dir()]
            assert self._tar is not None
            return [info.name for info in self._tar.getmembers() if info.isreg()]
        except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError) as exc:
            raise ArchiveError(f"{self.path.name}: cannot list its members: {exc}") from None

    def _open(self, name: str) -> IO[bytes]:
        if self._zip is not None:
            return self._zip.open(name)
        assert self._tar is not None
        info = self._tar.getmember(name)
        if not info.isreg():
            raise ArchiveError(f"{self.path.name}: member {name!r} is not a regular file")
        handle = self._tar.extractfile(info)
        if handle is None:
            raise ArchiveError(f"{self.path.name}: member {name!r} has no content")
        return handle

    def extract(self, name: str, dest: Path) -> Path:
        """Copy member ``name`` to ``dest`` (its content only; the member's own path is not used). Anything the
        archive's reading raises (a bad stream, an encrypted or unsupported member) and a member over
        MAX_MEMBER_BYTES (a decompression bomb) are ArchiveError; errors writing ``dest`` are the disk's."""
        copied = 0
        try:
            with open(dest, "wb") as sink:
                try:
                    source = self._open(name)
                except Exception as exc:  # the archive libraries raise many kinds
                    raise ArchiveError(f"{self.path.name}: cannot read member {name!r}: {exc}") from None
                with source:
                    while True:
                        try:
                            chunk = source.read(COPY_CHUNK)
                        except Exception as exc:  # zlib.error, lzma.LZMAError, RuntimeError, ...
                            raise ArchiveError(f"{self.path.name}: cannot read member {name!r}: {exc}") from None
                        if not chunk:
                            break
                        copied += len(chunk)
                        if copied > MAX_MEMBER_BYTES:
                            raise ArchiveError(f"{self.path.name}: member {name!r} is larger than "
                                               f"{MAX_MEMBER_BYTES} bytes; not extracted")
                        sink.write(chunk)
        except BaseException:
            dest.unlink(missing_ok=True)
            raise
        return dest

    def close(self) -> None:
        if self._zip is not None:
            self._zip.close()
        if self._tar is not None:
            self._tar.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()

"""Storage URLs the project understands (file://, s3://, root://, http(s)://) and their checks."""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from event_service.errors import StorageURLError

_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_HOST = re.compile(r"^[A-Za-z0-9.-]+(:[0-9]{1,5})?$")

STORE_SCHEMES = ("file", "s3", "root")
INPUT_SCHEMES = ("file", "s3", "root", "http", "https")


@dataclass(frozen=True)
class StorageURL:
    """A parsed storage URL: scheme, host or bucket, and the path or key prefix inside it."""

    scheme: str
    netloc: str
    path: str
    url: str


def _check_path(path: str, url: str) -> None:
    decoded = unquote(path)
    if "\x00" in decoded or "\\" in decoded:
        raise StorageURLError(f"{url!r} holds a NUL or backslash character")
    if any(part == ".." for part in decoded.split("/")):
        raise StorageURLError(f"{url!r} contains a '..' segment")


def parse_storage_url(url: str, schemes: tuple[str, ...] = STORE_SCHEMES) -> StorageURL:
    """Parse and check a storage URL; raise StorageURLError (a ValueError) saying what is wrong with it."""
    if not isinstance(url, str) or not url.strip():
        raise StorageURLError("a URL is required")
    if url != url.strip() or any(c.isspace() for c in url):
        raise StorageURLError(f"{url!r} contains whitespace")
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in schemes:
        allowed = ", ".join(f"{s}://" for s in schemes)
        raise StorageURLError(f"{url!r} has an unsupported scheme; use one of {allowed}")
    if parts.query or parts.fragment:
        raise StorageURLError(f"{url!r} must not carry a query or fragment")
    _check_path(parts.path, url)
    if scheme == "file":
        return _file_url(parts.netloc, parts.path, url)
    if scheme == "s3":
        if not _BUCKET.match(parts.netloc):
            raise StorageURLError(f"{url!r}: {parts.netloc!r} is not a valid S3 bucket name")
        return StorageURL("s3", parts.netloc, parts.path.strip("/"), url)
    if not parts.netloc or not _HOST.match(parts.netloc):
        raise StorageURLError(f"{url!r} names no valid host")
    if scheme == "root" and not parts.path.startswith("//"):
        raise StorageURLError(f"{url!r}: an XRootD URL is root://host//absolute/path")
    if len(parts.path.strip("/")) == 0:
        raise StorageURLError(f"{url!r} names no path")
    return StorageURL(scheme, parts.netloc, parts.path, url)


def _file_url(netloc: str, path: str, url: str) -> StorageURL:
    if netloc not in ("", "localhost"):
        raise StorageURLError(f"{url!r}: a file URL names no host (file:///absolute/path)")
    if not path.startswith("/") or path == "/":
        raise StorageURLError(f"{url!r}: a file URL needs an absolute path below / (file:///absolute/path)")
    return StorageURL("file", "", unquote(path).rstrip("/") or "/", url)


def _place(url: StorageURL) -> tuple[str, str, str]:
    return url.scheme, url.netloc.lower(), url.path.strip("/")


def same_store(a: str, b: str) -> bool:
    """Whether two store URLs name the same place (``file://localhost/x/`` and ``file:///x`` do)."""
    try:
        return _place(parse_storage_url(a)) == _place(parse_storage_url(b))
    except ValueError:
        return False

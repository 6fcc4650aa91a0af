"""Object keys: built from task, range and attempt, and checked so that none escapes its store's prefix.

A key is ``/``-separated segments, each 1-255 characters of ``A-Z a-z 0-9 _ . + = @ , : ~ -`` starting with a
letter, digit or underscore, 1024 bytes at most in all. So a key is never absolute, never holds ``..``, ``.``,
empty segments, backslashes, NUL or whitespace, and no segment starts with ``.``: names starting with ``.`` are
reserved for the stores' own temporary and metadata files.
"""

from __future__ import annotations

import re

from event_service.stores.errors import InvalidKeyError

MAX_KEY_BYTES = 1024
_SEGMENT = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+=@,:~-]{0,254}")


def _check_segment(key: object, segment: str, role: str) -> None:
    if not segment:
        raise InvalidKeyError(key, f"{role} is empty (absolute key, '//' or a trailing '/')")
    if segment in (".", ".."):
        raise InvalidKeyError(key, f"{role} {segment!r} is a relative path step")
    if "\\" in segment or "\x00" in segment:
        raise InvalidKeyError(key, f"{role} {segment!r} holds a backslash or NUL")
    if segment.startswith("."):
        raise InvalidKeyError(key, f"{role} {segment!r} starts with '.', reserved for the store's own files")
    if not _SEGMENT.fullmatch(segment):
        raise InvalidKeyError(
            key, f"{role} {segment!r} must be 1-255 characters of A-Z a-z 0-9 _ . + = @ , : ~ - "
                 "starting with a letter, digit or underscore"
        )


def validate_key(key: object) -> str:
    """Return ``key`` if it is a well-formed object key, else raise InvalidKeyError saying why."""
    if not isinstance(key, str):
        raise InvalidKeyError(key, f"a key is a str, not {type(key).__name__}")
    if not key:
        raise InvalidKeyError(key, "a key cannot be empty")
    if len(key.encode()) > MAX_KEY_BYTES:
        raise InvalidKeyError(key, f"longer than {MAX_KEY_BYTES} bytes")
    for segment in key.split("/"):
        _check_segment(key, segment, "segment")
    return key


def is_valid_key(key: str) -> bool:
    """Whether ``key`` is a well-formed object key (for skipping foreign names while listing)."""
    return (0 < len(key.encode()) <= MAX_KEY_BYTES
            and all(_SEGMENT.fullmatch(segment) for segment in key.split("/")))


def validate_prefix(prefix: object) -> str:
    """Return ``prefix`` if it is a valid listing prefix: ``""``, whole segments, and a last segment that may
    be partial or empty (a trailing ``/``)."""
    if not isinstance(prefix, str):
        raise InvalidKeyError(prefix, f"a prefix is a str, not {type(prefix).__name__}")
    if not prefix:
        return prefix
    if len(prefix.encode()) > MAX_KEY_BYTES:
        raise InvalidKeyError(prefix, f"longer than {MAX_KEY_BYTES} bytes")
    *whole, last = prefix.split("/")
    for segment in whole:
        _check_segment(prefix, segment, "prefix segment")
    if last:
        _check_segment(prefix, last, "prefix segment")
    return prefix


def object_key(task: str, range_id: str, attempt: int, filename: str) -> str:
    """The key of one attempt's output of one event range: ``<task>/<range_id>/<attempt>/<filename>``.

    Every part must be a single valid segment (no ``/``), ``attempt`` an int >= 0.
    """
    parts = {"task": task, "range_id": range_id, "filename": filename}
    for role, value in parts.items():
        if not isinstance(value, str):
            raise InvalidKeyError(value, f"{role} must be a str, not {type(value).__name__}")
        if "/" in value:
            raise InvalidKeyError(value, f"{role} must be a single key segment without '/'")
        _check_segment(value, value, role)
    if isinstance(attempt, bool) or not isinstance(attempt, int) or attempt < 0:
        raise InvalidKeyError(attempt, "attempt must be an int >= 0")
    return validate_key(f"{task}/{range_id}/{attempt}/{filename}")


def join_key(prefix: str, key: str) -> str:
    """``key`` below a store's ``prefix`` (``""`` for none), ``/``-joined."""
    return f"{prefix}/{key}" if prefix else key


def normalize_store_prefix(prefix: str) -> str:
    """A store's own prefix (bucket prefix, exported directory) without leading/trailing ``/``; its segments
    may be any names but ``.``/``..``/empty, and it holds no backslash or NUL."""
    stripped = prefix.strip("/")
    if not stripped:
        return ""
    for segment in stripped.split("/"):
        if segment in ("", ".", "..") or "\\" in segment or "\x00" in segment:
            raise InvalidKeyError(prefix, f"store prefix segment {segment!r} is empty, a path step, "
                                          "or holds a backslash or NUL")
    return stripped

"""Errors raised by the object stores, each an EventServiceError and the builtin that fits, naming store and key."""

from __future__ import annotations

from event_service.errors import EventServiceError

XROOTD_INSTALL_HINT = "pip install 'airflow-event-service[xrootd]'"


class InvalidKeyError(EventServiceError, ValueError):
    """An object key (or listing prefix) is malformed or would escape the store's prefix."""

    def __init__(self, key: object, reason: str) -> None:
        super().__init__(key, reason)
        self.key = key
        self.reason = reason

    def __str__(self) -> str:
        return f"invalid object key {self.key!r}: {self.reason}"


class ObjectStoreError(EventServiceError, OSError):
    """An object-store operation failed; ``store`` is the store's URL, ``key`` the object's key (if any)."""

    def __init__(self, store: str, key: str | None, message: str) -> None:
        super().__init__(message)
        self.store = store
        self.key = key
        self.message = message

    def __str__(self) -> str:
        where = f"{self.store}: {self.key!r}" if self.key is not None else self.store
        return f"{where}: {self.message}"


class ObjectNotFoundError(ObjectStoreError, FileNotFoundError):
    """No complete object (data and its checksum metadata) is stored under the key."""


class StoreCredentialsError(ObjectStoreError, PermissionError):
    """This process holds no (or incomplete) credentials for the store: retrying will not help."""


class StoreUnavailableError(ObjectStoreError, ConnectionError):
    """The store could not be reached (connection refused, timed out, ...) even after retries."""


class ChecksumMismatchError(ObjectStoreError):
    """What a store holds (or what was downloaded) does not match the expected adler32 or size."""

    def __init__(self, store: str, key: str, what: str, expected: str | int, found: str | int,
                 stage: str) -> None:
        super().__init__(store, key, f"{what} mismatch {stage}: expected {expected}, found {found}")
        self.what = what
        self.expected = expected
        self.found = found
        self.stage = stage


class BackendNotInstalledError(EventServiceError, ImportError):
    """The Python package a store backend needs is not installed."""

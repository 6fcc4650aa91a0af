"""Object stores for range outputs: one interface (ObjectStore), a backend per kind of store, and open_store."""

from __future__ import annotations

from typing import Any

from event_service.stores.base import ObjectStore, PresignedUpload, StoredObject
from event_service.stores.errors import (
    BackendNotInstalledError,
    ChecksumMismatchError,
    InvalidKeyError,
    ObjectNotFoundError,
    ObjectStoreError,
    StoreCredentialsError,
    StoreUnavailableError,
)
from event_service.stores.keys import object_key, validate_key, validate_prefix
from event_service.stores.local import LocalStore
from event_service.stores.s3 import S3Store
from event_service.stores.xrootd import XRootDStore
from event_service.urls import STORE_SCHEMES, parse_storage_url

__all__ = [
    "BackendNotInstalledError",
    "ChecksumMismatchError",
    "InvalidKeyError",
    "LocalStore",
    "ObjectNotFoundError",
    "ObjectStore",
    "ObjectStoreError",
    "PresignedUpload",
    "S3Store",
    "StoreCredentialsError",
    "StoreUnavailableError",
    "StoredObject",
    "XRootDStore",
    "object_key",
    "open_location",
    "open_store",
    "validate_key",
    "validate_prefix",
]


def open_store(url: str, **options: Any) -> ObjectStore:
    """The store a URL names: ``file:///abs/dir`` (LocalStore), ``s3://bucket[/prefix]`` (S3Store; options
    such as ``endpoint_url``, ``region``, ``access_key``, ``secret_key``), ``root://host[:port]//abs/dir``
    (XRootDStore; needs the ``xrootd`` extra). ``options`` go to the backend's constructor."""
    parsed = parse_storage_url(url, STORE_SCHEMES)
    if parsed.scheme == "file":
        return LocalStore(parsed.path, **options)
    if parsed.scheme == "s3":
        return S3Store(parsed.netloc, parsed.path, **options)
    return XRootDStore(url, **options)


def open_location(url: str, endpoint_url: str | None = None) -> ObjectStore:
    """The store at ``url`` as a spec names it: through ``endpoint_url`` when that is given for an S3 store."""
    return open_store(url, **({"endpoint_url": endpoint_url} if endpoint_url and url.startswith("s3://") else {}))

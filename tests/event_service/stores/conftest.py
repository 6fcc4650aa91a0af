"""The object-store backends under test, each with ways to reach behind the store's back (real servers only)."""

from __future__ import annotations

import dataclasses
import os
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from event_service.stores import LocalStore, ObjectStore, S3Store, XRootDStore
from tests.servers import S3Server, XRootDServer

BACKENDS = [
    pytest.param("local", id="local"),
    pytest.param("s3", id="s3", marks=pytest.mark.s3),
    pytest.param("xrootd", id="xrootd", marks=pytest.mark.xrootd),
]


@dataclasses.dataclass
class Backend:
    """A store under test and direct access to where it keeps its data."""

    name: str
    store: ObjectStore
    overwrite_data: Callable[[str, bytes], None]
    """Replace the data under a key without the store (its metadata stays as it was)."""
    write_bare: Callable[[str, bytes], None]
    """Write data under a key without the store and without any checksum metadata."""
    raw_names: Callable[[], set[str]]
    """Every file or S3 key the backend holds for this store, temporary and metadata files included."""


def _files_under(root: Path) -> set[str]:
    return {str(path.relative_to(root)) for path in root.rglob("*") if path.is_file()} if root.exists() else set()


def _overwrite_file(path: Path, data: bytes) -> None:
    """Rewrite a file in place (inode, owner and extended attributes kept)."""
    with open(path, "r+b") as stream:
        stream.write(data)
        stream.truncate()


def local_backend(root: Path) -> Backend:
    store = LocalStore(root)

    def write_bare(key: str, data: bytes) -> None:
        path = root / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)

    return Backend("local", store, lambda key, data: _overwrite_file(root / key, data), write_bare,
                   lambda: _files_under(root))


def s3_store(server: S3Server, bucket: str, prefix: str = "outputs", **options: Any) -> S3Store:
    """An S3Store on the test server."""
    return S3Store(bucket, prefix, endpoint_url=server.endpoint_url, region=server.region,
                   access_key=server.access_key, secret_key=server.secret_key, **options)


def s3_backend(server: S3Server, bucket: str, client: Any) -> Backend:
    store = s3_store(server, bucket)

    def overwrite_data(key: str, data: bytes) -> None:
        full = f"outputs/{key}"
        metadata = client.head_object(Bucket=bucket, Key=full)["Metadata"]
        client.put_object(Bucket=bucket, Key=full, Body=data, Metadata=metadata)

    def write_bare(key: str, data: bytes) -> None:
        client.put_object(Bucket=bucket, Key=f"outputs/{key}", Body=data)

    def raw_names() -> set[str]:
        pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket)
        return {item["Key"] for page in pages for item in page.get("Contents", [])}

    return Backend("s3", store, overwrite_data, write_bare, raw_names)


def xrootd_backend(server: XRootDServer) -> Backend:
    directory = f"store-{secrets.token_hex(4)}"
    root = server.local_path(directory)
    store = XRootDStore(server.url(directory), timeout_s=30)

    def write_bare(key: str, data: bytes) -> None:
        path = root / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        while path != root.parent:  # the server's OS user must be able to replace and remove it later
            os.chown(path, *server.owner)
            path = path.parent

    return Backend("xrootd", store, lambda key, data: _overwrite_file(root / key, data), write_bare,
                   lambda: _files_under(root))


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    """Each backend in turn, with a store of its own (a temp dir, a fresh bucket, a fresh XRootD directory)."""
    if request.param == "local":
        made = local_backend(tmp_path / "store")
        yield made
    elif request.param == "s3":
        server: S3Server = request.getfixturevalue("s3_server")
        made = s3_backend(server, request.getfixturevalue("s3_bucket"), request.getfixturevalue("s3_client"))
        with made.store:
            yield made
    else:
        made = xrootd_backend(request.getfixturevalue("xrootd_server"))
        yield made


@pytest.fixture
def store(backend: Backend) -> ObjectStore:
    """The store of ``backend``."""
    return backend.store

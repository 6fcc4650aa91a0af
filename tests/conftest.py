"""Shared pytest fixtures: a PostgreSQL server with a fresh schema per test, and SQLite ledger URLs."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import pg

PG_FIXTURES = frozenset({"pg_server", "pg_url"})


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test that (directly or through other fixtures) needs PostgreSQL with ``postgres``."""
    for item in items:
        if PG_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.postgres)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[str]:
    """Base SQLAlchemy URL of the session's PostgreSQL server (a running one, or a throw-away cluster)."""
    with contextlib.ExitStack() as stack:
        try:
            url = stack.enter_context(pg.server())
        except pg.PgUnavailable as exc:
            pytest.fail(str(exc), pytrace=False)
        yield url


@pytest.fixture
def pg_url(pg_server: str) -> Iterator[str]:
    """SQLAlchemy URL whose connections use a fresh schema ``t_<hex>`` (search_path); dropped after the test."""
    with pg.fresh_schema(pg_server) as schema:
        yield schema.url


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """SQLAlchemy URL of a not-yet-existing SQLite ledger file in the test's temp dir."""
    return f"sqlite:///{tmp_path / 'ledger.sqlite'}"


# --------------------------------------------------------------------------- object-store servers (S3, XRootD)

import secrets  # noqa: E402  (this section was appended below the PostgreSQL fixtures)
from typing import Any  # noqa: E402

from tests import servers  # noqa: E402

S3_FIXTURES = frozenset({"s3_server", "s3_client", "s3_bucket"})
XROOTD_FIXTURES = frozenset({"xrootd_server"})


def pytest_itemcollected(item: pytest.Item) -> None:
    """Mark every test that needs the S3 server with ``s3``, and the XRootD server with ``xrootd``."""
    names = getattr(item, "fixturenames", ())
    if S3_FIXTURES.intersection(names):
        item.add_marker(pytest.mark.s3)
    if XROOTD_FIXTURES.intersection(names):
        item.add_marker(pytest.mark.xrootd)


@pytest.fixture(scope="session")
def s3_server() -> Iterator[servers.S3Server]:
    """A SeaweedFS server (``weed mini``) on free ports of 127.0.0.1: endpoint_url, access_key, secret_key."""
    with contextlib.ExitStack() as stack:
        try:
            server = stack.enter_context(servers.seaweedfs())
        except servers.ServerUnavailable as exc:
            pytest.fail(str(exc), pytrace=False)
        yield server


@pytest.fixture(scope="session")
def s3_client(s3_server: servers.S3Server) -> Iterator[Any]:
    """A boto3 S3 client with the test server's admin credentials, shared by the session's tests."""
    client = s3_server.client()
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def s3_bucket(s3_client: Any) -> Iterator[str]:
    """The name of a fresh, empty bucket on the S3 server; it is emptied and removed after the test."""
    name = f"test-{secrets.token_hex(6)}"
    s3_client.create_bucket(Bucket=name)
    yield name
    servers.remove_bucket(s3_client, name)


@pytest.fixture(scope="session")
def xrootd_server() -> Iterator[servers.XRootDServer]:
    """An xrootd on a free port (loopback clients only) exporting a temp dir with adler32 checksums."""
    with contextlib.ExitStack() as stack:
        try:
            server = stack.enter_context(servers.xrootd())
        except servers.ServerUnavailable as exc:
            pytest.fail(str(exc), pytrace=False)
        yield server

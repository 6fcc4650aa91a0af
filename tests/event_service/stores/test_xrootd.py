"""XRootDStore against a real xrootd: the server's checksum query, attributes, temporary names, errors."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from event_service.checksums import adler32_bytes
from event_service.stores import XRootDStore, object_key, open_store
from tests.servers import XRootDServer, free_ports

KEY = object_key("task", "task.1.1-10", 1, "out.root")
ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture
def directory() -> str:
    """A fresh directory name on the server."""
    return f"xrd-{secrets.token_hex(4)}"


@pytest.fixture
def store(xrootd_server: XRootDServer, directory: str) -> Iterator[XRootDStore]:
    """An XRootDStore in a fresh directory of the test server."""
    with XRootDStore(xrootd_server.url(directory), timeout_s=30) as made:
        yield made


def test_the_server_checksum_query_answers_adler32_and_a_nul(store: XRootDStore, directory: str) -> None:
    from XRootD import client
    from XRootD.client.flags import QueryCode

    store.put(KEY, b"hello")
    status, answer = client.FileSystem(f"root://{store.host}").query(QueryCode.CHECKSUM, f"/{directory}/{KEY}")
    assert status.ok
    assert answer == b"adler32 062c0215\x00"
    assert store.server_adler32(KEY) == "062c0215"


def test_checksum_and_size_are_extended_attributes_moved_with_the_file(store: XRootDStore,
                                                                         directory: str) -> None:
    from XRootD import client

    stored = store.put(KEY, b"hello")
    status, attributes = client.FileSystem(f"root://{store.host}").get_xattr(f"/{directory}/{KEY}",
                                                                            ["adler32", "size"])
    assert status.ok
    assert [(name, value) for name, value, _ in attributes] == [("adler32", "062c0215"), ("size", "5")]
    assert stored.url == f"root://{store.host}//{directory}/{KEY}"


def test_recorded_checksum_survives_a_change_the_server_checksum_sees(
        store: XRootDStore, xrootd_server: XRootDServer, directory: str) -> None:
    store.put(KEY, b"original")
    path = xrootd_server.local_path(f"{directory}/{KEY}")
    with open(path, "r+b") as stream:
        stream.write(b"changed!")
    # xrootd caches computed checksums in an extended attribute, valid while the file's mtime (whole seconds)
    # is unchanged: a change within the same second would still answer the old checksum.
    info = path.stat()
    os.utime(path, (info.st_atime, info.st_mtime + 10))
    head = store.head(KEY)
    assert head is not None and head.adler32 == adler32_bytes(b"original")
    assert store.server_adler32(KEY) == adler32_bytes(b"changed!")


def test_temporary_upload_names_are_not_objects(store: XRootDStore, xrootd_server: XRootDServer,
                                                directory: str) -> None:
    store.put(KEY, b"complete")
    leftover = xrootd_server.local_path(f"{directory}/{KEY}").parent / ".out.root.0123abcd.upload"
    leftover.write_bytes(b"a put that died")
    assert [obj.key for obj in store.list()] == [KEY]
    files = sorted(p.name for p in xrootd_server.local_path(directory).rglob("*") if p.is_file())
    assert files == [".out.root.0123abcd.upload", "out.root"]


def test_open_store_builds_an_xrootd_store(xrootd_server: XRootDServer, directory: str) -> None:
    store = open_store(xrootd_server.url(f"{directory}/outputs"), timeout_s=10)
    assert isinstance(store, XRootDStore)
    assert store.url == f"root://{xrootd_server.host}//{directory}/outputs"
    assert store.put("k", b"v").url == f"root://{xrootd_server.host}//{directory}/outputs/k"


def _run(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120,
                          env={**os.environ, **env}, check=False)


def test_an_unreachable_server_is_a_connection_error() -> None:
    # XRootD's connection retries are process-wide client settings, so this runs in a child process.
    code = (
        "from event_service.stores import XRootDStore, StoreUnavailableError\n"
        f"store = XRootDStore('root://127.0.0.1:{free_ports(1)[0]}//nowhere', timeout_s=5)\n"
        "try:\n"
        "    store.head('k')\n"
        "except StoreUnavailableError as exc:\n"
        "    assert isinstance(exc, ConnectionError)\n"
        "    print('unavailable:', exc)\n"
    )
    done = _run(code, XRD_CONNECTIONRETRY="1", XRD_CONNECTIONWINDOW="1")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("unavailable: root://127.0.0.1:") and "//nowhere" in done.stdout


def test_without_the_xrootd_package_the_error_says_what_to_install() -> None:
    code = (
        "import sys\n"
        "sys.modules['XRootD'] = None  # as if the package were not installed\n"
        "from event_service.stores import open_store, BackendNotInstalledError\n"
        "try:\n"
        "    open_store('root://127.0.0.1:1094//data')\n"
        "except BackendNotInstalledError as exc:\n"
        "    assert isinstance(exc, ImportError)\n"
        "    print(exc)\n"
    )
    done = _run(code)
    assert done.returncode == 0, done.stderr
    assert "pip install 'airflow-event-service[xrootd]'" in done.stdout


def test_importing_the_stores_does_not_import_the_xrootd_client() -> None:
    done = _run("import sys, event_service.stores; print('XRootD' in sys.modules, 'boto3' in sys.modules)")
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False", "False"]

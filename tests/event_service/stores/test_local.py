"""LocalStore: the sidecar metadata, crash consistency of a put, and keys that try to leave the directory."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from event_service.stores import InvalidKeyError, LocalStore, ObjectStoreError, object_key, open_store

KEY = object_key("task", "task.1.1-10", 1, "out.root")


class SimulatedCrash(BaseException):
    """Stands for the process dying at that point."""


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "objects"


@pytest.fixture
def store(root: Path) -> LocalStore:
    return LocalStore(root)


def test_metadata_is_a_json_sidecar_beside_the_object(store: LocalStore, root: Path) -> None:
    stored = store.put(KEY, b"hello")
    data, sidecar = root / KEY, root / "task/task.1.1-10/1/.out.root.meta"
    assert data.read_bytes() == b"hello"
    assert json.loads(sidecar.read_text()) == {"adler32": "062c0215", "size": 5}
    assert sorted(p.name for p in data.parent.iterdir()) == [".out.root.meta", "out.root"]
    assert stored.url == data.as_uri() and store.url == root.as_uri()


def test_a_crash_before_the_sidecar_leaves_no_object(store: LocalStore, root: Path) -> None:
    # What a put leaves if it dies after renaming the data into place and before writing the sidecar.
    store.put(KEY, b"complete")
    (root / "task/task.1.1-10/1/.out.root.meta").unlink()
    assert store.head(KEY) is None
    assert list(store.list()) == []
    assert store.put(KEY, b"again").adler32 == store.head(KEY).adler32  # type: ignore[union-attr]


def test_a_crash_mid_write_leaves_only_an_invisible_temporary_file(store: LocalStore, root: Path) -> None:
    store.put(KEY, b"old object")
    directory = root / "task/task.1.1-10/1"
    (directory / ".out.root.0123456789abcdef0123456789abcdef.tmp").write_bytes(b"half a new obj")
    (directory / ".out.root.meta.0123456789abcdef0123456789abcdef.tmp").write_text("{")
    head = store.head(KEY)
    assert head is not None and head.size == len(b"old object")
    assert [obj.key for obj in store.list()] == [KEY]


def test_an_overwrite_removes_the_old_sidecar_before_the_data_changes(store: LocalStore, root: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    # Stop the put right after its rename (as a crash would): the old metadata must already be gone.
    store.put(KEY, b"old")
    real_replace = os.replace

    def crash_after_data_rename(src: str | Path, dst: str | Path) -> None:
        real_replace(src, dst)
        if Path(dst).name == "out.root":
            raise SimulatedCrash(dst)

    monkeypatch.setattr(os, "replace", crash_after_data_rename)
    with pytest.raises(SimulatedCrash):
        store.put(KEY, b"new data")
    monkeypatch.undo()
    assert (root / KEY).read_bytes() == b"new data"
    assert store.head(KEY) is None


def test_a_malformed_sidecar_is_an_error_naming_the_file(store: LocalStore, root: Path) -> None:
    store.put(KEY, b"x")
    (root / "task/task.1.1-10/1/.out.root.meta").write_text('{"adler32": "nothex!!", "size": 1}')
    with pytest.raises(ObjectStoreError, match=r"\.out\.root\.meta is malformed"):
        store.head(KEY)


def test_a_symbolic_link_out_of_the_directory_is_refused(store: LocalStore, root: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    root.mkdir()
    (root / "escape").symlink_to(outside, target_is_directory=True)
    with pytest.raises(InvalidKeyError, match="outside the store's directory"):
        store.put("escape/obj", b"x")
    with pytest.raises(InvalidKeyError):
        store.head("escape/obj")
    with pytest.raises(InvalidKeyError):
        list(store.list("escape/"))
    assert list(outside.iterdir()) == []
    (root / "file-link").symlink_to(outside / "target")
    with pytest.raises(InvalidKeyError):
        store.put("file-link", b"x")
    assert list(store.list()) == []


def test_files_that_are_not_keys_are_skipped(store: LocalStore, root: Path) -> None:
    store.put(KEY, b"x")
    (root / "task" / "name with spaces").write_bytes(b"foreign")
    (root / ".hidden").write_bytes(b"foreign")
    assert [obj.key for obj in store.list()] == [KEY]


def test_an_object_key_may_not_also_be_a_directory(store: LocalStore) -> None:
    store.put("a/b", b"x")
    with pytest.raises(OSError):
        store.put("a", b"y")
    with pytest.raises(OSError):
        store.put("a/b/c", b"z")
    store.delete("a")  # a directory is not an object: nothing to delete
    assert [obj.key for obj in store.list()] == ["a/b"]


def test_the_root_must_be_absolute() -> None:
    with pytest.raises(ValueError, match="absolute"):
        LocalStore("relative/dir")


def test_open_store_file_url(tmp_path: Path) -> None:
    store = open_store(f"file://{tmp_path}/objects")
    assert isinstance(store, LocalStore) and store.root == tmp_path / "objects"
    with pytest.raises(ValueError):
        open_store("file://host/objects")
    with pytest.raises(ValueError):
        open_store("ftp://host/objects")


def test_head_on_a_missing_directory_is_none(store: LocalStore) -> None:
    assert store.head(KEY) is None
    assert list(store.list()) == []
    assert list(store.list("task/")) == []

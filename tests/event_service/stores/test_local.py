"""LocalStore: metadata in an extended attribute or a sidecar, crash consistency of a put, keys that try to leave."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest

from event_service.checksums import adler32_bytes
from event_service.stores import InvalidKeyError, LocalStore, ObjectStoreError, object_key, open_store
from event_service.stores.base import Checksum
from event_service.stores.errors import ChecksumMismatchError
from event_service.stores.local import META_XATTR

KEY = object_key("task", "task.1.1-10", 1, "out.root")


class SimulatedCrash(BaseException):
    """Stands for the process dying at that point."""


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "objects"


@pytest.fixture
def store(root: Path) -> LocalStore:
    return LocalStore(root)


def crash_after_renaming_the_data(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the next put stop right after its rename of the data into place, as a crash would."""
    real_replace = os.replace

    def crash_after_data_rename(src: str | Path, dst: str | Path) -> None:
        real_replace(src, dst)
        if Path(dst).name == "out.root":
            raise SimulatedCrash(dst)

    monkeypatch.setattr(os, "replace", crash_after_data_rename)


def without_xattrs(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make setxattr fail as on a file system without user extended attributes (NFSv3, older tmpfs)."""
    def refuse(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOTSUP, "Operation not supported")

    monkeypatch.setattr(os, "setxattr", refuse)


@pytest.fixture
def sidecar_store(root: Path, monkeypatch: pytest.MonkeyPatch) -> LocalStore:
    without_xattrs(monkeypatch)
    return LocalStore(root)


def test_metadata_is_an_extended_attribute_of_the_object(store: LocalStore, root: Path) -> None:
    stored = store.put(KEY, b"hello")
    data = root / KEY
    assert data.read_bytes() == b"hello"
    assert json.loads(os.getxattr(data, META_XATTR)) == {"adler32": "062c0215", "size": 5}
    assert [p.name for p in data.parent.iterdir()] == ["out.root"]  # one file per object, no sidecar
    assert stored.url == data.as_uri() and store.url == root.as_uri()
    assert store.head(KEY) == stored


def test_data_without_its_attribute_is_no_object(store: LocalStore, root: Path) -> None:
    store.put(KEY, b"complete")
    os.removexattr(root / KEY, META_XATTR)
    assert store.head(KEY) is None
    assert list(store.list()) == []
    assert store.put(KEY, b"again").adler32 == store.head(KEY).adler32  # type: ignore[union-attr]


def test_an_overwrite_replaces_data_and_attribute_in_one_rename(store: LocalStore, root: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    # Stop the put right after its rename (as a crash would): the new object is complete, data and metadata.
    store.put(KEY, b"old")
    crash_after_renaming_the_data(monkeypatch)
    with pytest.raises(SimulatedCrash):
        store.put(KEY, b"new data")
    monkeypatch.undo()
    head = store.head(KEY)
    assert (root / KEY).read_bytes() == b"new data"
    assert head is not None and head.size == 8 and head.adler32 == store.put(KEY, b"new data").adler32


def test_a_malformed_attribute_is_an_error_naming_it(store: LocalStore, root: Path) -> None:
    store.put(KEY, b"x")
    os.setxattr(root / KEY, META_XATTR, b'{"adler32": "00000002", "size": -1}')
    with pytest.raises(ObjectStoreError, match=r"metadata attribute user\.event_service\.meta of .*out\.root is "
                                               r"malformed: size -1"):
        store.head(KEY)


def test_without_extended_attributes_metadata_is_a_json_sidecar(sidecar_store: LocalStore, root: Path,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    stored = sidecar_store.put(KEY, b"hello")
    data, sidecar = root / KEY, root / "task/task.1.1-10/1/.out.root.meta"
    assert json.loads(sidecar.read_text()) == {"adler32": "062c0215", "size": 5}
    assert sorted(p.name for p in data.parent.iterdir()) == [".out.root.meta", "out.root"]
    assert sidecar_store.xattrs is False and "keeps no extended attributes" in caplog.text
    assert sidecar_store.head(KEY) == stored
    assert sidecar_store.put(KEY, b"again").size == 5  # later puts go straight to the sidecar


def test_a_crash_before_the_sidecar_leaves_no_object(sidecar_store: LocalStore, root: Path) -> None:
    # What a put leaves if it dies after renaming the data into place and before writing the sidecar.
    sidecar_store.put(KEY, b"complete")
    (root / "task/task.1.1-10/1/.out.root.meta").unlink()
    assert sidecar_store.head(KEY) is None
    assert list(sidecar_store.list()) == []
    assert sidecar_store.put(KEY, b"again").adler32 == sidecar_store.head(KEY).adler32  # type: ignore[union-attr]


@pytest.mark.parametrize("xattrs", [True, False], ids=["attribute", "sidecar"])
def test_a_crash_mid_write_leaves_only_an_invisible_temporary_file(root: Path, xattrs: bool,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    if not xattrs:
        without_xattrs(monkeypatch)
    store = LocalStore(root)
    store.put(KEY, b"old object")
    directory = root / "task/task.1.1-10/1"
    (directory / ".out.root.0123456789abcdef0123456789abcdef.tmp").write_bytes(b"half a new obj")
    (directory / ".out.root.meta.0123456789abcdef0123456789abcdef.tmp").write_text("{")
    head = store.head(KEY)
    assert head is not None and head.size == len(b"old object")
    assert [obj.key for obj in store.list()] == [KEY]


def test_an_overwrite_removes_the_old_sidecar_before_the_data_changes(sidecar_store: LocalStore, root: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    # Stop the put right after its rename (as a crash would): the old metadata must already be gone.
    sidecar_store.put(KEY, b"old")
    crash_after_renaming_the_data(monkeypatch)
    with pytest.raises(SimulatedCrash):
        sidecar_store.put(KEY, b"new data")
    assert (root / KEY).read_bytes() == b"new data"
    assert sidecar_store.head(KEY) is None


def test_a_malformed_sidecar_is_an_error_naming_the_file(sidecar_store: LocalStore, root: Path) -> None:
    sidecar_store.put(KEY, b"x")
    (root / "task/task.1.1-10/1/.out.root.meta").write_text('{"adler32": "nothex!!", "size": 1}')
    with pytest.raises(ObjectStoreError, match=r"\.out\.root\.meta is malformed"):
        sidecar_store.head(KEY)


def test_objects_with_sidecars_read_alike_and_an_overwrite_drops_the_sidecar(root: Path,
                                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    # A store written with sidecars (an earlier version, or another mount of the same directory) read where
    # extended attributes work: objects are found as they are; one put again keeps its metadata in the attribute.
    without_xattrs(monkeypatch)
    old = LocalStore(root)
    first, second = old.put(KEY, b"first"), old.put("task/task.1.11-20/1/out.root", b"second")
    monkeypatch.undo()
    store = LocalStore(root)
    assert store.head(KEY) == first and [obj.key for obj in store.list()] == [KEY, second.key]
    rewritten = store.put(KEY, b"rewritten")
    assert store.head(KEY) == rewritten and not (root / "task/task.1.1-10/1/.out.root.meta").exists()
    assert json.loads(os.getxattr(root / KEY, META_XATTR))["size"] == len(b"rewritten")
    store.delete(second.key)
    assert [obj.key for obj in store.list()] == [KEY]
    assert sorted(p.name for p in (root / "task/task.1.11-20/1").iterdir()) == []


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


def test_a_moving_put_takes_the_file_itself(store: LocalStore, root: Path, tmp_path: Path) -> None:
    source = tmp_path / "payload" / "out.root"
    source.parent.mkdir()
    source.write_bytes(b"an output")
    inode = source.stat().st_ino
    stored = store.put(KEY, source, move=True)
    assert not source.exists() and (root / KEY).stat().st_ino == inode  # renamed, not copied
    assert store.head(KEY) == stored and (root / KEY).read_bytes() == b"an output"
    assert json.loads(os.getxattr(root / KEY, META_XATTR)) == {"adler32": stored.adler32, "size": 9}


def test_a_moving_put_copies_what_it_cannot_take(root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = LocalStore(root)
    linked = tmp_path / "linked.root"
    linked.write_bytes(b"two names")
    os.link(linked, tmp_path / "other-name.root")  # the stored object would share its bytes with another path
    assert store.put("task/a/1/linked.root", linked, move=True).size == 9
    assert linked.read_bytes() == b"two names" and (root / "task/a/1/linked.root").stat().st_ino != linked.stat().st_ino
    assert META_XATTR not in os.listxattr(linked)
    without_xattrs(monkeypatch)
    sidecar = LocalStore(tmp_path / "sidecar-objects")
    plain = tmp_path / "plain.root"
    plain.write_bytes(b"no attributes here")
    assert sidecar.put("task/b/1/plain.root", plain, move=True).size == 18
    assert plain.exists() and (tmp_path / "sidecar-objects/task/b/1/.plain.root.meta").exists()


def test_a_moving_put_to_another_file_system_copies(store: LocalStore, root: Path) -> None:
    shm = Path("/dev/shm")
    if not shm.is_dir() or shm.stat().st_dev == root.parent.stat().st_dev:
        pytest.skip("needs /dev/shm on another file system than the test's directory")
    source = shm / f"es-test-move-{os.getpid()}.root"
    source.write_bytes(b"elsewhere")
    try:
        stored = store.put(KEY, source, move=True)
        assert source.read_bytes() == b"elsewhere" and store.head(KEY) == stored  # copied, left where it was
        assert META_XATTR not in os.listxattr(source)
    finally:
        source.unlink(missing_ok=True)


def test_a_file_that_changes_while_it_is_moved_stays_where_it_is(store: LocalStore, root: Path,
                                                                   tmp_path: Path) -> None:
    source = tmp_path / "out.root"
    source.write_bytes(b"the payload is still writing")
    as_read = Checksum(adler32_bytes(b"the payload is still"), len(b"the payload is still"))  # read half-way
    with pytest.raises(ChecksumMismatchError, match="size mismatch in .*out.root while it was moved"):
        store._take(KEY, source, as_read)
    assert source.read_bytes() == b"the payload is still writing" and META_XATTR not in os.listxattr(source)
    assert store.head(KEY) is None and not (root / KEY).exists()

"""The object-store contract, run against every backend on real storage: local directory, SeaweedFS, XRootD."""

from __future__ import annotations

import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from event_service.checksums import adler32_bytes
from event_service.stores import (
    ChecksumMismatchError,
    InvalidKeyError,
    ObjectNotFoundError,
    ObjectStore,
    PresignedUpload,
    StoredObject,
    object_key,
)
from event_service.stores.base import Checksum
from tests.event_service.stores.conftest import Backend

KEY = object_key("task_1", "task_1.3.21-30", 1, "HITS.pool.root.1")
HELLO_MD5 = "XUFAKrxLKna5cZ2REBfFkg=="  # Content-MD5 of b"hello"
EMPTY_MD5 = "1B2M2Y8AsgTpgAmY7PhCfg=="  # and of no bytes
BAD_KEYS = ["", "/abs/key", "a/../b", "..", "../x", "a/./b", "a//b", "a/", "a\\b", "a\x00b", ".hidden",
            "a/.meta", "a b", "x" * 256, "a/" * 600 + "b"]


def keys_of(store: ObjectStore, prefix: str = "") -> list[str]:
    return sorted(obj.key for obj in store.list(prefix))


def test_put_head_get_list_delete(backend: Backend, tmp_path: Path) -> None:
    data = b"event range output\n" * 1000
    stored = backend.store.put(KEY, data)
    assert stored == StoredObject(KEY, len(data), adler32_bytes(data), stored.url)
    assert stored.url.endswith(f"/{KEY}")
    assert backend.store.head(KEY) == stored
    assert list(backend.store.list()) == [stored]

    got = backend.store.get(KEY, tmp_path / "out.root")
    assert got == stored
    assert (tmp_path / "out.root").read_bytes() == data
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "store") == ["out.root"]

    backend.store.delete(KEY)
    assert backend.store.head(KEY) is None
    assert list(backend.store.list()) == []
    with pytest.raises(ObjectNotFoundError) as raised:
        backend.store.get(KEY, tmp_path / "again.root")
    assert isinstance(raised.value, FileNotFoundError)
    assert KEY in str(raised.value) and backend.store.url in str(raised.value)
    assert not (tmp_path / "again.root").exists()


@pytest.mark.parametrize(("data", "adler32"), [(b"", "00000001"), (b"a", "00620062"), (b"hello", "062c0215")])
def test_adler32_metadata_is_zero_padded_lowercase_hex(backend: Backend, data: bytes, adler32: str,
                                                       tmp_path: Path) -> None:
    assert backend.store.put("k/obj", data).adler32 == adler32
    head = backend.store.head("k/obj")
    assert head is not None and (head.adler32, head.size) == (adler32, len(data))
    assert backend.store.get("k/obj", tmp_path / "obj").size == len(data)
    assert (tmp_path / "obj").read_bytes() == data


def test_put_from_a_file_equals_put_from_bytes(backend: Backend, tmp_path: Path) -> None:
    data = bytes(range(256)) * 20_000  # 5 MB: more than one 4 MiB chunk
    source = tmp_path / "source.bin"
    source.write_bytes(data)
    from_file = backend.store.put("a/file", source)
    from_bytes = backend.store.put("a/bytes", data)
    assert (from_file.adler32, from_file.size) == (from_bytes.adler32, from_bytes.size) == (
        f"{zlib.adler32(data) & 0xFFFFFFFF:08x}", len(data))
    backend.store.get("a/file", tmp_path / "back.bin")
    assert (tmp_path / "back.bin").read_bytes() == data


def test_given_checksum_and_size_are_checked_against_the_source(backend: Backend) -> None:
    data = b"payload output"
    with pytest.raises(ChecksumMismatchError) as raised:
        backend.store.put(KEY, data, adler32="deadbeef")
    error = raised.value
    assert (error.what, error.expected, error.found, error.key) == ("adler32", "deadbeef", adler32_bytes(data), KEY)
    assert isinstance(error, OSError) and "deadbeef" in str(error) and KEY in str(error)
    with pytest.raises(ChecksumMismatchError, match="size mismatch"):
        backend.store.put(KEY, data, size=len(data) + 1)
    assert backend.store.head(KEY) is None
    assert backend.raw_names() == set()

    stored = backend.store.put(KEY, data, adler32=adler32_bytes(data).upper(), size=len(data))
    assert stored.adler32 == adler32_bytes(data)


def test_a_failing_source_leaves_nothing_under_the_key(backend: Backend, tmp_path: Path) -> None:
    backend.store.put("other/obj", b"unrelated")
    before = backend.raw_names()
    with pytest.raises(FileNotFoundError):
        backend.store.put(KEY, tmp_path / "missing.root")
    with pytest.raises(IsADirectoryError):
        backend.store.put(KEY, tmp_path)
    with pytest.raises(TypeError, match="pathlib.Path or bytes"):
        backend.store.put(KEY, str(tmp_path / "x"))  # type: ignore[arg-type]
    assert backend.store.head(KEY) is None
    assert backend.raw_names() == before


def _change_source_after_checksum(store: ObjectStore, monkeypatch: pytest.MonkeyPatch, new_data: bytes) -> None:
    """Make the next put's source file change after put() took its checksum and before the upload."""
    upload = store._put

    def changed_then_uploaded(key: str, source: Path | bytes, expected: Checksum) -> StoredObject:
        assert isinstance(source, Path)
        source.write_bytes(new_data)
        return upload(key, source, expected)

    monkeypatch.setattr(store, "_put", changed_then_uploaded)


def test_a_size_change_during_upload_is_caught_and_leaves_nothing(backend: Backend, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    source = tmp_path / "growing.root"
    source.write_bytes(b"output as checksummed")
    _change_source_after_checksum(backend.store, monkeypatch, b"output as checksummed, then appended")
    with pytest.raises(ChecksumMismatchError) as raised:
        backend.store.put(KEY, source)
    assert raised.value.what == "size" and raised.value.expected == len(b"output as checksummed")
    # S3 reads a small source once for its Content-MD5 and sees the change before sending anything.
    assert ("before upload" if backend.name == "s3" else "after upload") in str(raised.value)
    assert backend.store.head(KEY) is None
    assert backend.raw_names() == set()


def test_a_content_change_during_upload_is_caught(
        backend: Backend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = tmp_path / "changing.root"
    source.write_bytes(b"output as checksummed")
    _change_source_after_checksum(backend.store, monkeypatch, b"output as CHECKSUMMED")
    with pytest.raises(ChecksumMismatchError) as raised:
        backend.store.put(KEY, source)
    assert raised.value.what == "adler32"
    assert backend.store.head(KEY) is None
    assert backend.raw_names() == set()


def test_overwrite_replaces_data_and_metadata(backend: Backend, tmp_path: Path) -> None:
    backend.store.put(KEY, b"first attempt, longer")
    second = backend.store.put(KEY, b"second")
    assert backend.store.head(KEY) == second
    backend.store.get(KEY, tmp_path / "out")
    assert (tmp_path / "out").read_bytes() == b"second"
    assert keys_of(backend.store) == [KEY]


def test_get_detects_data_changed_behind_the_stores_back(backend: Backend, tmp_path: Path) -> None:
    backend.store.put(KEY, b"original bytes")
    backend.overwrite_data(KEY, b"corrupt! bytes")  # same size, other content
    dest = tmp_path / "dest.root"
    dest.write_bytes(b"previous download")
    with pytest.raises(ChecksumMismatchError) as raised:
        backend.store.get(KEY, dest)
    assert raised.value.what == "adler32"
    assert (raised.value.expected, raised.value.found) == (adler32_bytes(b"original bytes"),
                                                           adler32_bytes(b"corrupt! bytes"))
    assert "after download" in str(raised.value)
    assert dest.read_bytes() == b"previous download"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "store") == ["dest.root"]


def test_get_detects_a_size_change_behind_the_stores_back(backend: Backend, tmp_path: Path) -> None:
    backend.store.put(KEY, b"original bytes")
    backend.overwrite_data(KEY, b"short")
    with pytest.raises(ChecksumMismatchError, match="size"):
        backend.store.get(KEY, tmp_path / "dest")
    assert not (tmp_path / "dest").exists()


def test_data_without_checksum_metadata_is_not_an_object(backend: Backend, tmp_path: Path) -> None:
    backend.write_bare(KEY, b"written by another tool, or a crash mid-put")
    assert backend.store.head(KEY) is None
    assert list(backend.store.list()) == []
    with pytest.raises(ObjectNotFoundError):
        backend.store.get(KEY, tmp_path / "dest")
    stored = backend.store.put(KEY, b"complete")
    assert backend.store.head(KEY) == stored
    backend.store.delete(KEY)
    backend.write_bare(KEY, b"bare again")
    backend.store.delete(KEY)
    assert backend.raw_names() == set()


def test_list_by_prefix_is_a_string_prefix(backend: Backend) -> None:
    keys = ["t/r1/1/a", "t/r1/1/b", "t/r1/2/a", "t/r10/1/a", "t/r2/1/a", "u/r1/1/a"]
    for key in keys:
        backend.store.put(key, key.encode())
    assert keys_of(backend.store) == keys
    assert keys_of(backend.store, "t/") == keys[:5]
    assert keys_of(backend.store, "t/r1") == keys[:4]
    assert keys_of(backend.store, "t/r1/") == keys[:3]
    assert keys_of(backend.store, "t/r1/1/a") == ["t/r1/1/a"]
    assert keys_of(backend.store, "t/r3") == []
    assert keys_of(backend.store, "nothing/") == []
    for obj in backend.store.list("t/r2"):
        assert obj == backend.store.head(obj.key)


def test_keys_with_every_allowed_punctuation_character(backend: Backend, tmp_path: Path) -> None:
    key = "T_1/r.1:2,3=4+5@6~7-8/0/HITS_x.root.1"
    stored = backend.store.put(key, b"punctuated")
    assert backend.store.head(key) == stored
    assert [obj.key for obj in backend.store.list("T_1/r.1:")] == [key]
    assert backend.store.get(key, tmp_path / "out").key == key
    backend.store.delete(key)
    assert backend.store.head(key) is None


@pytest.mark.parametrize("bad", BAD_KEYS)
def test_every_method_refuses_a_key_that_could_escape(backend: Backend, bad: str, tmp_path: Path) -> None:
    store = backend.store
    calls = [
        lambda: store.put(bad, b"x"),
        lambda: store.head(bad),
        lambda: store.get(bad, tmp_path / "dest"),
        lambda: store.delete(bad),
        lambda: store.presign_put(bad, adler32="00000001", size=0, content_md5=EMPTY_MD5, expires_s=60),
        lambda: store.presign_get(bad, expires_s=60),
    ]
    for call in calls:
        with pytest.raises(InvalidKeyError):
            call()
    assert backend.raw_names() == set()
    assert not (tmp_path / "dest").exists()


@pytest.mark.parametrize("bad", ["/abs", "../", "a/../", "a//", "a\\", ".x", "a/.x"])
def test_list_refuses_a_prefix_that_could_escape(store: ObjectStore, bad: str) -> None:
    with pytest.raises(InvalidKeyError):
        store.list(bad)


def test_delete_of_an_absent_key_is_not_an_error(store: ObjectStore) -> None:
    store.delete(KEY)
    store.delete("never/there")


def test_presigned_urls_where_the_backend_has_them(backend: Backend) -> None:
    upload = backend.store.presign_put(KEY, adler32="062c0215", size=5, content_md5=HELLO_MD5,
                                       expires_s=60)
    download = backend.store.presign_get(KEY, expires_s=60)
    if backend.name == "s3":
        assert isinstance(upload, PresignedUpload) and upload.method == "PUT"
        assert isinstance(download, str) and download.startswith("http")
    else:
        assert upload is None and download is None
    with pytest.raises(ValueError, match="adler32"):
        backend.store.presign_put(KEY, adler32="xyz", size=5, content_md5=HELLO_MD5, expires_s=60)
    with pytest.raises(ValueError, match="expires_s"):
        backend.store.presign_get(KEY, expires_s=0)


def test_concurrent_puts_from_a_stage_out_pool(store: ObjectStore) -> None:
    keys = [object_key("task", f"task.1.{n}-{n}", 1, "out.root") for n in range(24)]
    with ThreadPoolExecutor(max_workers=6) as pool:
        stored = list(pool.map(lambda key: store.put(key, key.encode() * 100), keys))
    assert [obj.adler32 for obj in stored] == [adler32_bytes(key.encode() * 100) for key in keys]
    assert keys_of(store, "task/") == sorted(keys)

"""S3Store against a real SeaweedFS server: metadata on the wire, paging, multipart, pre-signed URLs, errors."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests

from event_service.checksums import adler32_bytes
from event_service.stores import (
    ObjectStoreError,
    S3Store,
    StoreUnavailableError,
    object_key,
    open_store,
)
from tests.event_service.stores.conftest import s3_store
from tests.servers import S3Server, free_ports

KEY = object_key("task", "task.1.1-10", 2, "out.root")


@pytest.fixture
def store(s3_server: S3Server, s3_bucket: str) -> Iterator[S3Store]:
    """An S3Store below ``outputs/`` in a fresh bucket."""
    with s3_store(s3_server, s3_bucket) as made:
        yield made


def test_checksum_and_size_travel_as_user_metadata(store: S3Store, s3_client: Any, s3_bucket: str) -> None:
    stored = store.put(KEY, b"hello")
    head = s3_client.head_object(Bucket=s3_bucket, Key=f"outputs/{KEY}")
    assert head["Metadata"] == {"adler32": "062c0215", "size": "5"}
    assert head["ResponseMetadata"]["HTTPHeaders"]["x-amz-meta-adler32"] == "062c0215"
    assert store.head(KEY) == stored and stored.url == f"s3://{s3_bucket}/outputs/{KEY}"


def test_listing_pages_past_1000_objects(store: S3Store, s3_client: Any, s3_bucket: str) -> None:
    keys = [object_key("big", f"big.{n}.{n}-{n}", 1, "o") for n in range(1100)]

    def upload(key: str) -> None:  # as store.put() stores them, in one request each to keep the test fast
        data = key.encode()
        s3_client.put_object(Bucket=s3_bucket, Key=f"outputs/{key}", Body=data,
                             Metadata={"adler32": adler32_bytes(data), "size": str(len(data))})

    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(upload, keys))
    pages = []
    store.client.meta.events.register("after-call.s3.ListObjectsV2", lambda **kwargs: pages.append(1))
    listed = list(store.list("big/"))
    assert len(pages) >= 2
    assert sorted(obj.key for obj in listed) == sorted(keys)
    assert all(obj.adler32 == adler32_bytes(obj.key.encode()) for obj in listed)


def test_a_store_prefix_is_a_directory_not_a_string_prefix(s3_server: S3Server, s3_bucket: str) -> None:
    with s3_store(s3_server, s3_bucket, "run") as run, s3_store(s3_server, s3_bucket, "run2") as run2:
        run.put("k", b"1")
        run2.put("k", b"2")
        assert [obj.url for obj in run.list()] == [f"s3://{s3_bucket}/run/k"]
        assert [obj.url for obj in run2.list()] == [f"s3://{s3_bucket}/run2/k"]


def test_large_files_go_up_as_multipart_uploads_with_their_metadata(
        s3_server: S3Server, s3_bucket: str, s3_client: Any, tmp_path: Path) -> None:
    data = bytes(range(251)) * (11 * 4177)  # about 11 MiB: three 5 MiB parts
    source = tmp_path / "merged.root"
    source.write_bytes(data)
    with s3_store(s3_server, s3_bucket, multipart_threshold=5 << 20, multipart_chunksize=5 << 20) as store:
        from_file = store.put("merged/file", source)
        from_bytes = store.put("merged/bytes", data)
        for key, stored in (("merged/file", from_file), ("merged/bytes", from_bytes)):
            head = s3_client.head_object(Bucket=s3_bucket, Key=f"outputs/{key}")
            assert head["ETag"].strip('"').endswith("-3")
            assert head["Metadata"] == {"adler32": adler32_bytes(data), "size": str(len(data))}
            assert store.get(key, tmp_path / "back").adler32 == stored.adler32 == adler32_bytes(data)
            assert (tmp_path / "back").read_bytes() == data


def md5_of(data: bytes) -> str:
    return base64.b64encode(hashlib.md5(data).digest()).decode()


def test_presigned_put_binds_checksum_and_size_into_the_signature(store: S3Store, s3_client: Any,
                                                                    s3_bucket: str, tmp_path: Path) -> None:
    data = b"range output uploaded by a worker without credentials"
    upload = store.presign_put(KEY, adler32=adler32_bytes(data), size=len(data), content_md5=md5_of(data),
                               expires_s=300)
    assert upload is not None and upload.method == "PUT"
    assert upload.headers == {"Content-Length": str(len(data)), "Content-MD5": md5_of(data), "If-None-Match": "*",
                              "x-amz-meta-adler32": adler32_bytes(data), "x-amz-meta-size": str(len(data))}
    with requests.Session() as http:
        tampered = {**upload.headers, "x-amz-meta-adler32": "00000001"}
        refused = http.put(upload.url, data=data, headers=tampered, timeout=30)
        assert refused.status_code == 403 and "SignatureDoesNotMatch" in refused.text
        without_headers = http.put(upload.url, data=data, timeout=30)
        assert without_headers.status_code == 403
        longer = http.put(upload.url, data=data + b"!", headers={**upload.headers,
                                                                 "Content-Length": str(len(data) + 1)}, timeout=30)
        assert longer.status_code == 403
        assert store.head(KEY) is None

        accepted = http.put(upload.url, data=data, headers=upload.headers, timeout=30)
        assert accepted.status_code == 200, accepted.text
        stored = store.head(KEY)
        assert stored is not None and (stored.adler32, stored.size) == (adler32_bytes(data), len(data))

        url = store.presign_get(KEY, expires_s=300)
        assert url is not None
        fetched = http.get(url, timeout=30)
        assert fetched.status_code == 200 and fetched.content == data


def test_a_grant_binds_the_bytes_and_never_overwrites(store: S3Store, tmp_path: Path) -> None:
    """A grant replayed within its lifetime with other bytes of the same size, or again after it was used."""
    data, other = b"the real output", b"a forged output"
    upload = store.presign_put(KEY, adler32=adler32_bytes(data), size=len(data), content_md5=md5_of(data),
                               expires_s=60)
    assert upload is not None
    with requests.Session() as http:
        forged = http.put(upload.url, data=other, headers=upload.headers, timeout=30)
        assert forged.status_code == 400 and "BadDigest" in forged.text
        assert store.head(KEY) is None
        unsigned = {k: v for k, v in upload.headers.items() if k not in ("Content-MD5", "If-None-Match")}
        assert http.put(upload.url, data=other, headers=unsigned, timeout=30).status_code == 403
        assert http.put(upload.url, data=data, headers=upload.headers, timeout=30).status_code == 200
        replayed = http.put(upload.url, data=data, headers=upload.headers, timeout=30)
        assert replayed.status_code == 412 and "PreconditionFailed" in replayed.text
    assert store.get(KEY, tmp_path / "out").adler32 == adler32_bytes(data)
    assert (tmp_path / "out").read_bytes() == data


def test_a_grant_cannot_replace_an_object_the_store_already_holds(store: S3Store, tmp_path: Path) -> None:
    (tmp_path / "first").write_bytes(b"first output")
    store.put(KEY, tmp_path / "first")
    data = b"other output"
    upload = store.presign_put(KEY, adler32=adler32_bytes(data), size=len(data), content_md5=md5_of(data),
                               expires_s=60)
    assert upload is not None
    with requests.Session() as http:
        assert http.put(upload.url, data=data, headers=upload.headers, timeout=30).status_code == 412
    assert store.get(KEY, tmp_path / "back").adler32 == adler32_bytes(b"first output")


def test_a_grant_needs_the_md5_of_the_bytes(store: S3Store) -> None:
    with pytest.raises(ValueError, match="content_md5 must be the base64 of a 16-byte MD5 digest"):
        store.presign_put(KEY, adler32="00000001", size=1, content_md5="not-an-md5", expires_s=60)


def test_requests_are_retried_in_standard_mode(store: S3Store) -> None:
    retries = store.client.meta.config.retries
    assert retries == {"mode": "standard", "total_max_attempts": 5}


def test_an_unreachable_endpoint_is_a_connection_error(s3_server: S3Server) -> None:
    endpoint = f"http://127.0.0.1:{free_ports(1)[0]}"
    with S3Store("nowhere", endpoint_url=endpoint, region="us-east-1", access_key="a", secret_key="b",
                 max_attempts=2, connect_timeout_s=1) as store:
        with pytest.raises(StoreUnavailableError) as raised:
            store.head(KEY)
    assert isinstance(raised.value, ConnectionError)
    assert "s3://nowhere" in str(raised.value) and endpoint in str(raised.value)


def test_wrong_credentials_are_an_error_not_an_absent_object(s3_server: S3Server, s3_bucket: str) -> None:
    with S3Store(s3_bucket, endpoint_url=s3_server.endpoint_url, region=s3_server.region,
                 access_key=s3_server.access_key, secret_key="wrong") as store:
        with pytest.raises(ObjectStoreError, match="403|SignatureDoesNotMatch|Forbidden"):
            store.head(KEY)
        with pytest.raises(ObjectStoreError, match="SignatureDoesNotMatch"):
            store.put(KEY, b"x")


def test_open_store_passes_options_and_credentials(s3_server: S3Server, s3_bucket: str) -> None:
    store = open_store(f"s3://{s3_bucket}/some/prefix", endpoint_url=s3_server.endpoint_url,
                       region=s3_server.region, access_key=s3_server.access_key, secret_key=s3_server.secret_key)
    with store:
        assert isinstance(store, S3Store) and store.url == f"s3://{s3_bucket}/some/prefix"
        assert store.addressing_style == "path"
        assert store.put("k", b"v").url == f"s3://{s3_bucket}/some/prefix/k"
    assert store.head("k") is not None  # a closed store reconnects
    store.close()


def test_credentials_come_from_the_environment_when_not_given(s3_server: S3Server, s3_bucket: str,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_server.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_server.secret_key)
    monkeypatch.setenv("AWS_DEFAULT_REGION", s3_server.region)
    with S3Store(s3_bucket, endpoint_url=s3_server.endpoint_url) as store:
        assert store.put("env/k", b"v").size == 1


@pytest.mark.parametrize("options", [{"max_attempts": 0}, {"multipart_chunksize": 1 << 20}])
def test_bad_options_are_refused(options: dict[str, int]) -> None:
    with pytest.raises(ValueError):
        S3Store("bucket", **options)  # type: ignore[arg-type]


def test_bucket_names_are_checked() -> None:
    with pytest.raises(ValueError, match="bucket"):
        S3Store("Not_A_Bucket")

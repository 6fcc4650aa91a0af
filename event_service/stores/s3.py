"""The S3 object store through boto3 (AWS, MinIO, Ceph, SeaweedFS, ...): adler32 and size as x-amz-meta-*.

An S3 PUT is atomic: the object appears complete under its key or not at all. Small sources go up in one PUT,
large ones (``multipart_threshold``) as a multipart upload that S3 assembles only at completion (and boto3
aborts on failure); the metadata travels with either. After the upload the object's size and metadata are read
back with a HEAD and compared; on a mismatch the object is deleted and ChecksumMismatchError raised. S3 itself
knows no adler32, so a ``get`` is where the data is checked against it.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import parse_qs, urlsplit

from event_service.checksums import adler32_bytes, normalize_adler32
from event_service.stores.base import (
    CHUNK_BYTES,
    Checksum,
    Download,
    ObjectStore,
    PresignedUpload,
    StoredObject,
)
from event_service.stores.errors import (
    ChecksumMismatchError,
    ObjectStoreError,
    StoreCredentialsError,
    StoreUnavailableError,
)
from event_service.stores.keys import is_valid_key, join_key, normalize_store_prefix
from event_service.urls import parse_storage_url

if TYPE_CHECKING:
    from boto3.s3.transfer import TransferConfig
    from botocore.client import BaseClient as S3Client

AddressingStyle = Literal["auto", "path", "virtual"]
META_ADLER32 = "adler32"
META_SIZE = "size"
SIGNED_UPLOAD_HEADERS = frozenset({"content-length", "content-md5", "if-none-match", f"x-amz-meta-{META_ADLER32}",
                                   f"x-amz-meta-{META_SIZE}"})
_NOT_FOUND_CODES = frozenset({"404", "NoSuchKey", "NotFound"})


# Objects up to this size are read into memory once, for their Content-MD5, and verified by the PUT itself;
# larger ones stream from their file and are verified by a HEAD afterwards.
IN_MEMORY_PUT_BYTES = 8 << 20


class S3Store(ObjectStore):
    """Objects in an S3 bucket below an optional key prefix.

    Credentials come from the arguments or, when they are None, from boto3's usual chain (environment,
    ``~/.aws``, instance roles). ``addressing_style`` None means ``path`` with an ``endpoint_url`` (what MinIO,
    Ceph and SeaweedFS expect) and boto3's ``auto`` without. Requests are retried in botocore's ``standard``
    mode, ``max_attempts`` times in all.
    """

    def __init__(self, bucket: str, prefix: str = "", *, endpoint_url: str | None = None,
                 region: str | None = None, access_key: str | None = None, secret_key: str | None = None,
                 session_token: str | None = None, addressing_style: AddressingStyle | None = None,
                 max_attempts: int = 5, connect_timeout_s: float = 10.0, read_timeout_s: float = 60.0,
                 multipart_threshold: int = 64 << 20, multipart_chunksize: int = 16 << 20,
                 max_concurrency: int = 8) -> None:
        parse_storage_url(f"s3://{bucket}", ("s3",))
        if max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, got {max_attempts}")
        if multipart_chunksize < 5 << 20:
            raise ValueError(f"multipart_chunksize must be at least 5 MiB (S3's minimum part), "
                             f"got {multipart_chunksize}")
        self.bucket = bucket
        self.prefix = normalize_store_prefix(prefix)
        self.url = f"s3://{bucket}/{self.prefix}" if self.prefix else f"s3://{bucket}"
        self.endpoint_url = endpoint_url
        self.region = region
        self.addressing_style: AddressingStyle = addressing_style or ("path" if endpoint_url else "auto")
        self.max_attempts = max_attempts
        self.connect_timeout_s = connect_timeout_s
        self.read_timeout_s = read_timeout_s
        self.multipart_threshold = multipart_threshold
        self.multipart_chunksize = multipart_chunksize
        self.max_concurrency = max_concurrency
        self._credentials = {"aws_access_key_id": access_key, "aws_secret_access_key": secret_key,
                             "aws_session_token": session_token}
        self._lock = threading.Lock()
        self._client: S3Client | None = None

    # ------------------------------------------------------------------ client

    @property
    def client(self) -> S3Client:
        """The boto3 S3 client, built on first use (thread-safe; boto3 clients may be shared by threads)."""
        with self._lock:
            if self._client is None:
                self._client = self._make_client()
            return self._client

    def _make_client(self) -> S3Client:
        import boto3.session
        from botocore.config import Config

        session = boto3.session.Session(region_name=self.region, **self._credentials)
        config = Config(
            retries={"mode": "standard", "total_max_attempts": self.max_attempts},
            connect_timeout=self.connect_timeout_s,
            read_timeout=self.read_timeout_s,
            signature_version="s3v4",
            s3={"addressing_style": self.addressing_style},
            max_pool_connections=max(10, 2 * self.max_concurrency),
            # Checksums only where S3 requires them: some S3-compatible servers refuse the trailing CRC headers.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        client: S3Client = session.client("s3", endpoint_url=self.endpoint_url, config=config)
        return client

    def _transfer_config(self) -> TransferConfig:
        from boto3.s3.transfer import TransferConfig

        return TransferConfig(multipart_threshold=self.multipart_threshold,
                              multipart_chunksize=self.multipart_chunksize, max_concurrency=self.max_concurrency)

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None

    # ------------------------------------------------------------------ helpers

    def _full_key(self, key: str) -> str:
        return join_key(self.prefix, key)

    def object_url(self, key: str) -> str:
        """``s3://bucket/<prefix>/<key>``."""
        return f"s3://{self.bucket}/{self._full_key(key)}"

    @contextlib.contextmanager
    def _translate(self, key: str | None, action: str) -> Iterator[None]:
        """Turn boto3/botocore errors into this package's errors, naming the store, key and action."""
        from boto3.exceptions import S3UploadFailedError
        from botocore.exceptions import (
            BotoCoreError,
            ClientError,
            HTTPClientError,
            NoCredentialsError,
            PartialCredentialsError,
        )
        from botocore.exceptions import ConnectionError as BotoConnectionError

        try:
            yield
        except (NoCredentialsError, PartialCredentialsError) as exc:
            raise StoreCredentialsError(self.url, key, f"{action}: {exc} (set the AWS variables, ~/.aws, or the "
                                                       "store's access_key and secret_key)") from exc
        except (HTTPClientError, BotoConnectionError) as exc:
            where = self.endpoint_url or "the S3 endpoint"
            raise StoreUnavailableError(self.url, key, f"{action}: cannot reach {where}: {exc}") from exc
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in _NOT_FOUND_CODES and key is not None:
                raise self.not_found(key, f"{action}: no such object") from exc
            raise ObjectStoreError(self.url, key, f"{action} failed: {exc}") from exc
        except (BotoCoreError, S3UploadFailedError) as exc:
            raise ObjectStoreError(self.url, key, f"{action} failed: {exc}") from exc

    def _metadata(self, key: str, response: dict[str, Any]) -> Checksum | None:
        """The adler32 and recorded size of a HEAD/GET response; None for an object without them."""
        meta = response.get("Metadata") or {}
        if META_ADLER32 not in meta:
            return None
        try:
            adler32 = normalize_adler32(meta[META_ADLER32])
            size = int(meta.get(META_SIZE, response["ContentLength"]))
        except ValueError as exc:
            raise ObjectStoreError(self.url, key, f"malformed object metadata {meta!r}: {exc}") from exc
        return Checksum(adler32, size)

    def _read_unrecorded(self, key: str, dest: Path) -> None:
        with self._translate(key, "GET (object without metadata)"):
            self.client.download_file(self.bucket, self._full_key(key), str(dest))

    def _head_response(self, key: str) -> dict[str, Any] | None:
        from botocore.exceptions import ClientError

        with self._translate(key, "HEAD"):
            try:
                response: dict[str, Any] = dict(self.client.head_object(Bucket=self.bucket,
                                                                        Key=self._full_key(key)))
            except ClientError as exc:
                if exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 404:
                    return None
                raise
        return response

    # ------------------------------------------------------------------ backend hooks

    def _put(self, key: str, source: Path | bytes, expected: Checksum) -> StoredObject:
        full_key = self._full_key(key)
        metadata = {META_ADLER32: expected.adler32, META_SIZE: str(expected.size)}
        in_memory = isinstance(source, bytes) and expected.size < self.multipart_threshold
        if in_memory or expected.size <= IN_MEMORY_PUT_BYTES:
            return self._put_single(key, full_key, source, expected, metadata)
        with self._translate(key, "upload"):
            if expected.size < self.multipart_threshold:
                with open(source, "rb") as body:
                    self.client.put_object(Bucket=self.bucket, Key=full_key, Body=body, Metadata=metadata)
            elif isinstance(source, bytes):
                self.client.upload_fileobj(io.BytesIO(source), self.bucket, full_key,
                                           ExtraArgs={"Metadata": metadata}, Config=self._transfer_config())
            else:
                self.client.upload_file(str(source), self.bucket, full_key,
                                        ExtraArgs={"Metadata": metadata}, Config=self._transfer_config())
        mismatch = self._check_upload(key, expected)
        if mismatch is not None:
            try:
                self._delete(key)  # nothing unverified stays under the key
            except ObjectStoreError as cleanup:
                mismatch.add_note(f"deleting the unverified object failed too: {cleanup}")
            raise mismatch
        return StoredObject(key, expected.size, expected.adler32, self.object_url(key))

    def _put_single(self, key: str, full_key: str, source: Path | bytes, expected: Checksum,
                    metadata: dict[str, str]) -> StoredObject:
        """One PUT verified in the same request: the server checks the body against Content-MD5 (BadDigest
        otherwise), SigV4 covers the metadata headers, and the returned ETag must be that MD5. Only when the
        ETag is not a plain MD5 (SSE-KMS, SSE-C) does a HEAD check the object instead."""
        body = source if isinstance(source, bytes) else source.read_bytes()
        found = Checksum(adler32_bytes(body), len(body))
        if found != expected:  # the file changed between its checksum and its upload
            what, wanted, got = (("size", expected.size, found.size) if found.size != expected.size
                                 else ("adler32", expected.adler32, found.adler32))
            raise ChecksumMismatchError(self.url, key, what, wanted, got, "in the source, before upload")
        digest = hashlib.md5(body, usedforsecurity=False)
        with self._translate(key, "upload"):
            response = self.client.put_object(Bucket=self.bucket, Key=full_key, Body=body, Metadata=metadata,
                                              ContentMD5=base64.b64encode(digest.digest()).decode())
        etag = str(response.get("ETag", "")).strip('"')
        if etag != digest.hexdigest():
            mismatch = self._check_upload(key, expected)
            if mismatch is not None:
                try:
                    self._delete(key)
                except ObjectStoreError as cleanup:
                    mismatch.add_note(f"deleting the unverified object failed too: {cleanup}")
                raise mismatch
        return StoredObject(key, expected.size, expected.adler32, self.object_url(key))

    def _check_upload(self, key: str, expected: Checksum) -> ChecksumMismatchError | None:
        """What is wrong with an uploaded object according to the store's HEAD, if anything."""
        stage = "after upload, in what the store reports"
        response = self._head_response(key)
        if response is None:
            return ChecksumMismatchError(self.url, key, "size", expected.size, "no object", stage)
        stored = self._metadata(key, response)
        checks: list[tuple[str, str | int, str | int]] = [
            ("size", expected.size, response["ContentLength"]),
            ("adler32", expected.adler32, stored.adler32 if stored else "no adler32 metadata"),
            ("size metadata", expected.size, stored.size if stored else "no size metadata"),
        ]
        for what, wanted, found in checks:
            if wanted != found:
                return ChecksumMismatchError(self.url, key, what, wanted, found, stage)
        return None

    def _head(self, key: str) -> StoredObject | None:
        response = self._head_response(key)
        if response is None:
            return None
        meta = self._metadata(key, response)
        if meta is None:
            return None
        return StoredObject(key, response["ContentLength"], meta.adler32, self.object_url(key))

    @contextlib.contextmanager
    def _download(self, key: str) -> Iterator[Download]:
        with self._translate(key, "download"):
            response = self.client.get_object(Bucket=self.bucket, Key=self._full_key(key))
            body = response["Body"]
            try:
                meta = self._metadata(key, response)
                if meta is None:
                    raise self.not_found(key, "the object carries no adler32 metadata")
                obj = StoredObject(key, response["ContentLength"], meta.adler32, self.object_url(key))
                yield Download(obj, meta.size, body.iter_chunks(CHUNK_BYTES))
            finally:
                body.close()

    def _list(self, prefix: str) -> Iterator[StoredObject]:
        base = f"{self.prefix}/" if self.prefix else ""
        paginator = self.client.get_paginator("list_objects_v2")
        with self._translate(None, f"list {prefix!r}"):
            for page in paginator.paginate(Bucket=self.bucket, Prefix=base + prefix):
                keys = [item["Key"][len(base):] for item in page.get("Contents", [])]
                keys = [key for key in keys if is_valid_key(key)]
                # S3 lists no user metadata: one HEAD per object, a few at a time, in listing order.
                with ThreadPoolExecutor(max_workers=self.max_concurrency) as pool:
                    for obj in pool.map(self._head, keys):
                        if obj is not None:
                            yield obj

    def _delete(self, key: str) -> None:
        with self._translate(key, "delete"):
            self.client.delete_object(Bucket=self.bucket, Key=self._full_key(key))

    def _presign_put(self, key: str, expected: Checksum, content_md5: str, expires_s: int) -> PresignedUpload:
        metadata = {META_ADLER32: expected.adler32, META_SIZE: str(expected.size)}
        with self._translate(key, "presign PUT"):
            url = self.client.generate_presigned_url(
                "put_object",
                Params={"Bucket": self.bucket, "Key": self._full_key(key), "Metadata": metadata,
                        "ContentLength": expected.size, "ContentMD5": content_md5, "IfNoneMatch": "*"},
                ExpiresIn=expires_s, HttpMethod="PUT",
            )
        signed = set(parse_qs(urlsplit(url).query).get("X-Amz-SignedHeaders", [""])[0].split(";"))
        if not SIGNED_UPLOAD_HEADERS <= signed:
            raise ObjectStoreError(self.url, key, f"the pre-signed URL signs only {sorted(signed)}, not "
                                                  f"{sorted(SIGNED_UPLOAD_HEADERS)}: the metadata would be unbound")
        headers = {"Content-Length": str(expected.size), "Content-MD5": content_md5, "If-None-Match": "*",
                   f"x-amz-meta-{META_ADLER32}": expected.adler32, f"x-amz-meta-{META_SIZE}": str(expected.size)}
        return PresignedUpload(url=url, headers=headers, method="PUT", expires_s=expires_s)

    def _presign_get(self, key: str, expires_s: int) -> str:
        with self._translate(key, "presign GET"):
            url: str = self.client.generate_presigned_url(
                "get_object", Params={"Bucket": self.bucket, "Key": self._full_key(key)}, ExpiresIn=expires_s)
        return url

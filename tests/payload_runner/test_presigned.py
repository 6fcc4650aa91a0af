"""Stage-out through pre-signed uploads against a real S3 server: the bytes are bound, a lost answer is harmless."""

from __future__ import annotations

from pathlib import Path

import pytest

from event_service.checksums import adler32_file
from event_service.messages import UploadGrant, UploadRequest
from event_service.stores import S3Store, object_key
from payload_runner.presigned import GrantedUploads
from tests.event_service.stores.conftest import s3_store
from tests.servers import S3Server

pytestmark = pytest.mark.s3


class StoreGranter:
    """Signs as the dispatch API does (``UploadGrants``), with a real store's credentials, minus the ledger."""

    def __init__(self, store: S3Store, task: str) -> None:
        self.store = store
        self.task = task
        self.requests: list[UploadRequest] = []

    def grant_upload(self, request: UploadRequest) -> UploadGrant:
        self.requests.append(request)
        key = object_key(self.task, request.range_id, request.attempt, request.file_name)
        upload = self.store.presign_put(key, adler32=request.adler32, size=request.size,
                                        content_md5=request.content_md5, expires_s=60)
        assert upload is not None
        return UploadGrant(key=key, url=upload.url, method="PUT", headers=upload.headers, expires_s=60)

    def ping(self) -> None:
        return None


def test_an_upload_whose_answer_was_lost_is_taken_as_stored(s3_server: S3Server, s3_bucket: str,
                                                            tmp_path: Path) -> None:
    with s3_store(s3_server, s3_bucket) as store:
        granter = StoreGranter(store, "pt")
        uploads = GrantedUploads(granter, "pt", "w1", store.url)
        output = tmp_path / "HITS.root"
        output.write_bytes(b"range output " * 1000)
        key = object_key("pt", "pt.1.0-9", 1, "HITS.root")
        first = uploads.put(key, output)
        again = uploads.put(key, output)  # the first PUT's answer never reached the runner: the retry gets 412
        assert first == again and (first.adler32, first.size) == adler32_file(output)
        assert granter.requests[0].content_md5 == granter.requests[1].content_md5
        stored = store.head(key)
        assert stored is not None and (stored.adler32, stored.size) == adler32_file(output)
        uploads.close()

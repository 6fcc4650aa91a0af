"""Adopting an object another program wrote (a PanDA pilot's upload): checked once, then recorded like any other."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from event_service.checksums import adler32_bytes
from event_service.stores import ChecksumMismatchError, LocalStore, ObjectNotFoundError
from tests.event_service.stores.conftest import s3_store
from tests.servers import S3Server

DATA = b"an archive of several ranges' outputs" * 100


@pytest.mark.s3
def test_an_s3_object_without_metadata_is_checked_then_recorded(s3_server: S3Server, s3_bucket: str,
                                                                s3_client: Any) -> None:
    store = s3_store(s3_server, s3_bucket)
    s3_client.put_object(Bucket=s3_bucket, Key="outputs/Q/EventService_premerge_1.tar", Body=DATA)
    key = "Q/EventService_premerge_1.tar"
    assert store.head(key) is None  # no metadata: not one of the store's complete objects yet
    with pytest.raises(ChecksumMismatchError):
        store.adopt(key, adler32="00000001", size=len(DATA))
    assert store.head(key) is None
    adopted = store.adopt(key, adler32=adler32_bytes(DATA), size=len(DATA))
    assert (adopted.adler32, adopted.size) == (adler32_bytes(DATA), len(DATA))
    assert store.head(key) == adopted
    assert store.adopt(key, adler32=adler32_bytes(DATA), size=len(DATA)) == adopted  # already recorded
    with pytest.raises(ObjectNotFoundError):
        store.adopt("Q/absent.tar", adler32="00000001", size=1)


def test_a_local_store_has_nothing_to_adopt(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "objects")
    with pytest.raises(ObjectNotFoundError, match="only objects written through this store"):
        store.adopt("a/b.tar", adler32="00000001", size=1)
    put = store.put("a/c.tar", DATA)
    assert store.adopt("a/c.tar", adler32=put.adler32, size=put.size) == store.head("a/c.tar")

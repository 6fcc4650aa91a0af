"""What a PanDA pilot reads about its queue and storage: the queue description and the storage endpoints.

Each object store that a task served to PanDA names (its ``object_store`` and its failover) becomes one
storage endpoint, named ``ES_OS_<id>`` with a stable numeric id derived from the store's URL: the pilot
reports that id as ``objstoreID`` with each archive it uploads. A queue's description points the pilot's
``es_events`` activity at the store of the newest running task assigned to the queue (``es_failover`` at
its failover store).

Where an archive lands (the pilot's own rules): an S3 store is described as a non-deterministic event
service store, so the pilot uploads ``<lfn>`` to ``<store>/<queue>/<lfn>`` with its ``s3`` copytool; an
XRootD store is described as deterministic, so ``xrdcp`` writes ``<store>/transient/<h>/<h>/<lfn>``
(Rucio's path of scope ``transient``). A local directory cannot be written by a pilot's copytools.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from event_service.api.errors import UnservableStoreError
from event_service.spec import StoreLocation, TaskSpec
from event_service.urls import parse_storage_url

STAGEOUT_SCOPE = "transient"  # the scope a pilot gives the archives it uploads
DEFAULT_S3_ENDPOINT = "https://s3.amazonaws.com"


@dataclass(frozen=True, slots=True)
class StorageEndpoint:
    """One object store as PanDA describes storage: name, numeric id, and how a pilot writes to it."""

    id: int
    name: str
    url: str
    endpoint: str
    path: str
    copytool: str
    deterministic: bool

    def describe(self, site: str) -> dict[str, Any]:
        protocol = {"endpoint": self.endpoint, "path": self.path, "flavour": self.copytool.upper(), "id": self.id}
        return {
            "id": self.id, "name": self.name, "type": "OS_ES", "is_deterministic": self.deterministic,
            "state": "ACTIVE", "site": site, "token": "", "resource": {}, "url": self.url,
            "rprotocols": {str(self.id): {**protocol, "settings": {}}},
            "arprotocols": {"write_lan": [protocol], "write_wan": [protocol], "read_lan": [protocol]},
        }

    def archive_key(self, queue: str, lfn: str) -> str:
        """The key (relative to the store's URL) under which a pilot of ``queue`` uploads archive ``lfn``."""
        if self.deterministic:
            digest = hashlib.md5(f"{STAGEOUT_SCOPE}:{lfn}".encode()).hexdigest()
            return "/".join([*STAGEOUT_SCOPE.split("."), digest[0:2], digest[2:4], lfn])
        return f"{queue}/{lfn}"


def store_id(url: str) -> int:
    """A stable positive id for a store URL (31 bits, as PanDA's ids are integers)."""
    return int.from_bytes(hashlib.sha256(url.encode()).digest()[:4], "big") & 0x7FFFFFFF or 1


def storage_endpoint(location: StoreLocation) -> StorageEndpoint:
    """How a pilot reaches ``location``; UnservableStoreError for a local directory."""
    parsed = parse_storage_url(location.url)
    ident = store_id(location.url)
    name = f"ES_OS_{ident}"
    if parsed.scheme == "s3":
        endpoint = location.endpoint_url or DEFAULT_S3_ENDPOINT
        path = "/" + "/".join(part for part in (parsed.netloc, parsed.path) if part)
        return StorageEndpoint(ident, name, location.url, endpoint, path, "s3", deterministic=False)
    if parsed.scheme in ("root", "xroot"):
        return StorageEndpoint(ident, name, location.url, f"{parsed.scheme}://{parsed.netloc}/",
                               "/" + parsed.path.lstrip("/"), "xrdcp", deterministic=True)
    raise UnservableStoreError(f"store {location.url} is a local directory; a PanDA pilot's copytools cannot "
                               "upload to it: give the task an S3 or XRootD object store")


def task_endpoints(spec: TaskSpec) -> list[StorageEndpoint]:
    """The task's store and its failover store, as storage endpoints."""
    failover = spec.object_store.failover
    locations = [spec.object_store] + ([failover] if failover is not None else [])
    return [storage_endpoint(location) for location in locations]


def queue_description(queue: str, endpoints: list[StorageEndpoint], *, zip_time_gap: int, cores: int,
                      max_disk_mb: int = 20_000) -> dict[str, Any]:
    """The queue as a pilot reads it from ``--queuedata-url`` (schedconfig form, not keyed by name)."""
    activities: dict[str, list[str]] = {}
    tools: dict[str, list[str]] = {}
    schemes: dict[str, list[str]] = {}
    for activity, endpoint in zip(("es_events", "es_failover"), endpoints, strict=False):
        activities[activity] = [endpoint.name]
        tools[activity] = [endpoint.copytool]
        schemes[activity] = [urlsplit(endpoint.endpoint).scheme]
    if endpoints:
        activities["pw"], tools["pw"], schemes["pw"] = activities["es_events"], tools["es_events"], schemes["es_events"]
    return {
        "nickname": queue, "panda_resource": queue, "atlas_site": queue, "name": queue, "siteid": queue,
        "state": "ACTIVE", "status": "online", "type": "production", "resource_type": "SCORE",
        "maxwdir": max_disk_mb, "timefloor": 0, "maxtime": 0, "corecount": cores, "catchall": "",
        "container_type": "", "container_options": "", "zip_time_gap": zip_time_gap,
        "copytools": {tool: {"setup": ""} for tool in sorted({e.copytool for e in endpoints})},
        "acopytools": tools, "astorages": activities, "acopytools_schemas": schemes,
        "params": {"internet_protocol_version": "IPv4"},
    }

"""The typed messages of the dispatch API: claims, updates, heartbeats, task status, uploads (pydantic)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from event_service.checksums import CONTENT_MD5_PATTERN, normalize_adler32
from event_service.statuses import RangeStatus, TaskState
from event_service.urls import STORE_SCHEMES, parse_storage_url

MAX_BATCH = 1000
# Bounds on the numbers a worker reports, checked before they reach the ledger (its columns are 64-bit).
MAX_OBJECT_BYTES = 5 * 1024**4  # 5 TiB: S3's largest object, and more than any range output
MAX_SECONDS = 1e9  # CPU or wall seconds of one range: 1,024 cores for 11 days is 1e9 CPU seconds
MAX_ATTEMPT = 10_000  # a range's attempts are bounded by max_attempts (at most 100) and re-dispatches
WORKER_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:@/+-]{0,127}$"
CLAIM_ID_PATTERN = r"^[A-Za-z0-9_-]{8,64}$"
# Documents an adler32's form in the OpenAPI schema; the field's validator checks it with a clearer message.
ADLER32_SCHEMA: dict[str, Any] = {"pattern": r"^\s*[0-9A-Fa-f]{8}\s*$"}


def refuse_nul(data: object, where: str = "") -> object:
    """``data`` as it is, or ValueError naming where a string holds a NUL character (no field may: PostgreSQL
    refuses such text)."""
    if isinstance(data, str):
        if "\x00" in data:
            raise ValueError(f"{where or 'the value'} holds a NUL character")
    elif isinstance(data, dict):
        for key, value in data.items():
            refuse_nul(key, f"{where}.{key}".lstrip(".") if isinstance(key, str) else where)
            refuse_nul(value, f"{where}.{key}".lstrip("."))
    elif isinstance(data, (list, tuple)):
        for index, value in enumerate(data):
            refuse_nul(value, f"{where}.{index}".lstrip("."))
    return data


class _Message(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _no_nul(cls, data: object) -> object:
        return refuse_nul(data)


def check_relative_path(path: str, what: str) -> str:
    """A relative '/'-separated path with no empty, '.' or '..' segment, no backslash and no NUL."""
    if path.startswith("/") or "\\" in path or "\x00" in path:
        raise ValueError(f"{what} {path!r} must be relative and hold no '\\' or NUL")
    if any(part in ("", ".", "..") for part in path.split("/")):
        raise ValueError(f"{what} {path!r} has an empty, '.' or '..' segment")
    return path


class OutputRef(_Message):
    """A range's output object: its key in the task's object store, adler32 and size in bytes.

    When several ranges' outputs travel in one archive (a tar, as PanDA pilots upload them), ``key``,
    ``adler32`` and ``size`` are the archive's and ``member`` names the range's file inside it.
    """

    key: str = Field(min_length=1, max_length=1024)
    adler32: str = Field(json_schema_extra=ADLER32_SCHEMA)
    size: int = Field(ge=0, le=MAX_OBJECT_BYTES, description="bytes, at most 5 TiB")
    store: str | None = Field(default=None, max_length=1024,
                              description="the store holding it, when not the task's own (a failover store)")
    member: str | None = Field(default=None, min_length=1, max_length=255,
                               description="the range's file inside the archive ``key``, when it is one")

    @field_validator("key")
    @classmethod
    def _key(cls, key: str) -> str:
        from event_service.stores.keys import (
            validate_key,  # the stores' own rule: a key they can hold
        )

        return validate_key(key)

    @field_validator("member")
    @classmethod
    def _member(cls, member: str | None) -> str | None:
        return None if member is None else check_relative_path(member, "archive member")

    @field_validator("adler32")
    @classmethod
    def _adler32(cls, value: str) -> str:
        return normalize_adler32(value)

    @field_validator("store")
    @classmethod
    def _store(cls, value: str | None) -> str | None:
        if value is not None:
            parse_storage_url(value, STORE_SCHEMES)
        return value


WorkerStatus = Literal["running", "finished", "failed", "fatal", "ready"]


class RangeUpdate(_Message):
    """One worker report on one range. ``ready`` gives back a range that was never started."""

    range_id: str = Field(min_length=1, max_length=256)
    status: WorkerStatus
    output: OutputRef | None = None
    cpu_s: float | None = Field(default=None, ge=0, le=MAX_SECONDS, allow_inf_nan=False)
    wall_s: float | None = Field(default=None, ge=0, le=MAX_SECONDS, allow_inf_nan=False)
    error_code: str | None = Field(default=None, max_length=64)
    error: str | None = Field(default=None, max_length=4096)
    attempt: int | None = Field(default=None, ge=1, le=MAX_ATTEMPT,
                                description="the attempt the report is for, if known")

    @field_validator("error_code", mode="before")
    @classmethod
    def _code_as_text(cls, value: object) -> object:
        return str(value) if isinstance(value, int) and not isinstance(value, bool) else value

    @model_validator(mode="after")
    def _output_only_when_finished(self) -> RangeUpdate:
        if self.status == "finished" and self.output is None:
            raise ValueError("a 'finished' update needs output {key, adler32, size}")
        if self.status != "finished" and self.output is not None:
            raise ValueError(f"a {self.status!r} update carries no output")
        return self


class ClaimRequest(_Message):
    worker: str = Field(pattern=WORKER_ID_PATTERN)
    n: int = Field(default=1, ge=1, le=MAX_BATCH)
    host: str | None = Field(default=None, max_length=255)
    claim_id: str | None = Field(default=None, pattern=CLAIM_ID_PATTERN, description=(
        "an id for this claim, the same on a retry: a claim whose reply was lost is answered again with the "
        "same ranges instead of new ones (which nobody would process while the worker's heartbeats keep them)"))


class UpdateRequest(_Message):
    worker: str = Field(pattern=WORKER_ID_PATTERN)
    updates: list[RangeUpdate] = Field(min_length=1, max_length=MAX_BATCH)

    @model_validator(mode="after")
    def _unique_ranges(self) -> UpdateRequest:
        seen: set[str] = set()
        for index, item in enumerate(self.updates):
            if item.range_id in seen:
                raise ValueError(f"updates.{index}.range_id: {item.range_id!r} appears twice in one batch")
            seen.add(item.range_id)
        return self


class HeartbeatRequest(_Message):
    worker: str = Field(pattern=WORKER_ID_PATTERN)
    host: str | None = Field(default=None, max_length=255)
    restarted: bool = Field(default=False, description=(
        "the worker starts afresh: ranges it held before go back to ready (the attempt counts), "
        "so that its new heartbeats do not keep alive work nobody does"))


class ClaimedRange(_Message):
    """An event range handed to a worker."""

    range_id: str
    lfn: str
    guid: str
    url: str
    first_event: int
    last_event: int
    attempt: int


class ClaimReply(_Message):
    lease_seconds: int
    ranges: list[ClaimedRange]
    state: TaskState


UpdateVerdict = Literal["accepted", "duplicate", "rejected"]


class UpdateResult(_Message):
    range_id: str
    result: UpdateVerdict
    status: RangeStatus = Field(description="the range's status after the update")
    reason: str | None = None


class UpdateReply(_Message):
    results: list[UpdateResult]


class HeartbeatReply(_Message):
    renewed: int = Field(description="ranges whose lease was renewed")
    released: int = Field(default=0, description="ranges given back because the worker restarted")
    lease_seconds: int
    state: TaskState
    command: Literal["stop"] | None = None


class TaskStatus(_Message):
    """A task's progress: ranges per status, events done and total, live workers."""

    task: str
    state: TaskState
    ranges: int
    counts: dict[RangeStatus, int]
    events_total: int
    events_done: int
    live_workers: int
    created_at: float


class RangeInfo(_Message):
    """One range as the ledger holds it now."""

    range_id: str
    status: RangeStatus
    attempt: int
    worker: str | None
    output: OutputRef | None


MAX_UPLOAD_BYTES = 5 * 1024**3  # one S3 PUT carries at most 5 GiB


class UploadRequest(_Message):
    """A worker asks for a pre-signed upload of one range's output, whose adler32 and size it has computed."""

    worker: str = Field(pattern=WORKER_ID_PATTERN)
    range_id: str = Field(min_length=1, max_length=256)
    attempt: int = Field(ge=1, le=MAX_ATTEMPT, description="the attempt the worker holds the range for")
    file_name: str = Field(min_length=1, max_length=255, description="the output's file name: one key segment")
    adler32: str = Field(json_schema_extra=ADLER32_SCHEMA)
    size: int = Field(ge=0, le=MAX_UPLOAD_BYTES)
    content_md5: str = Field(pattern=CONTENT_MD5_PATTERN, description=(
        "the output's MD5 as Content-MD5 writes it (base64 of the digest): the store refuses other bytes"))
    failover: bool = Field(default=False, description="upload to the task's failover store, not its own")

    @field_validator("adler32")
    @classmethod
    def _adler32(cls, value: str) -> str:
        return normalize_adler32(value)


class UploadGrant(_Message):
    """A pre-signed upload: send ``method`` to ``url`` with exactly ``headers`` (they are signed: the checksum
    metadata, the size, the bytes' MD5 and a create-only condition), then report ``key`` (and ``store``, when
    set) as the range's output."""

    key: str
    url: str
    method: Literal["PUT"]
    headers: dict[str, str]
    expires_s: int
    store: str | None = Field(default=None, description="the failover store's URL when the upload goes there")


class TaskCreated(_Message):
    task: str
    token: str
    ranges: int

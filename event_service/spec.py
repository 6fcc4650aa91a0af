"""The task spec: one validated pydantic model, loaded from YAML or JSON, cut into event ranges."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from event_service.errors import SpecError
from event_service.messages import refuse_nul
from event_service.urls import INPUT_SCHEMES, STORE_SCHEMES, parse_storage_url

TASK_NAME_PATTERN = r"^[a-z0-9_-]{1,64}$"
PANDA_QUEUE_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$"
LFN_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,254}$"
MAX_RANGES_PER_TASK = 10_000_000  # created in one transaction; a larger task is several tasks
MAX_EVENTS_PER_FILE = 2**40  # about 1.1e12: more than any file holds, far below the ledger's 64-bit columns
MAX_TASK_EVENTS = 2**53  # a task's events add up exactly in a double (JSON readers, the monitor page)


def _store_url(url: str) -> str:
    parse_storage_url(url, STORE_SCHEMES)
    return url


def _input_url(url: str) -> str:
    parse_storage_url(url, INPUT_SCHEMES)
    return url


StoreURL = Annotated[str, AfterValidator(_store_url)]
InputURL = Annotated[str, AfterValidator(_input_url)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)

    @model_validator(mode="before")
    @classmethod
    def _no_nul(cls, data: object) -> object:
        return refuse_nul(data)


class InputFile(_Strict):
    """One input file of a task: its logical name, where to read it, and how many events it holds."""

    lfn: str = Field(pattern=LFN_PATTERN, description="logical file name")
    url: InputURL = Field(description="file:///abs/path, s3://bucket/key, root://host//path or http(s)://")
    events: int = Field(gt=0, le=MAX_EVENTS_PER_FILE, description="number of events (entries) in the file")
    guid: str = Field(
        default_factory=lambda: str(uuid.uuid4()).upper(),
        description="file GUID; generated and kept when missing",
    )

    @field_validator("guid")
    @classmethod
    def _guid(cls, value: str) -> str:
        try:
            return str(uuid.UUID(value)).upper()
        except ValueError:
            raise ValueError(f"{value!r} is not a GUID (8-4-4-4-12 hexadecimal digits)") from None


class PayloadSpec(_Strict):
    """The payload program that processes event ranges."""

    command: str = Field(min_length=1, max_length=4096)


def _endpoint_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.path not in ("", "/") \
            or parts.query or parts.fragment:
        raise ValueError(f"{url!r} is not an endpoint URL like https://host[:port]")
    return url.rstrip("/")


class StoreLocation(_Strict):
    """One object store: its URL and, for S3 servers other than AWS, the endpoint to reach it."""

    url: StoreURL
    endpoint_url: Annotated[str, AfterValidator(_endpoint_url)] | None = Field(
        default=None, description="S3 endpoint such as https://s3.example.org (MinIO, Ceph, SeaweedFS)")


class ObjectStoreSpec(StoreLocation):
    """Where per-range outputs are streamed, and a second store to fail over to."""

    failover: StoreLocation | None = None


DEFAULT_MIN_P_VALUE = 0.001  # with ~8 histograms per file, about 1 good file in 100 is called suspect


class CertificationSpec(_Strict):
    """Certifying merged files: their validation histograms compared with a reference set."""

    reference: StoreURL = Field(description=(
        "the validation set (<file>.validation.json) of a merged file known to be good: file:///path, or an "
        "s3:// or root:// object written by the event service (reached with the merge's endpoint_url)"))
    min_p_value: float = Field(default=DEFAULT_MIN_P_VALUE, gt=0, lt=1, description=(
        "each histogram's chi-square p-value must reach this for the file to be certified"))


class MergeSpec(_Strict):
    """How range outputs are merged and where the merged files go."""

    output_url: StoreURL
    endpoint_url: Annotated[str, AfterValidator(_endpoint_url)] | None = Field(
        default=None, description="S3 endpoint of the normal storage, for S3 servers other than AWS")
    max_events_per_file: int = Field(default=100_000, gt=0, le=MAX_EVENTS_PER_FILE)
    dataset: str | None = Field(default=None, pattern=LFN_PATTERN,
                                description="catalog dataset of the merged files (default <name>.merged)")
    command: str | None = Field(default=None, min_length=1, max_length=4096, description=(
        "a merge program replacing the default ROOT merge; run as <command> --inputs LIST --output PATH"))
    cleanup: bool = Field(default=False, description="delete the per-range objects once the merge is registered")
    certification: CertificationSpec | None = Field(default=None, description=(
        "compare each merged file's validation histograms with a reference set: certified or suspect"))


class PandaSpec(_Strict):
    """Serving the task to PanDA pilots: the queues whose pilots may take it, and how they stage out."""

    queues: list[Annotated[str, Field(pattern=PANDA_QUEUE_PATTERN)]] = Field(
        min_length=1, description="PanDA queue names (the pilot's --queue) whose getJob may return this task")
    scope: str = Field(default="events", pattern=LFN_PATTERN, description="the scope given with each event range")
    zip_time_gap: int = Field(default=60, ge=1, le=86_400, description=(
        "seconds between a pilot's uploads of finished outputs (its queue's zip_time_gap); keep the lease longer"))
    cores: int = Field(default=1, ge=1, le=1024, description="coreCount of a consumer job (ranges asked per call: 2x)")


class TaskSpec(_Strict):
    """An event-service task: inputs, how to cut them, what to run, where outputs go."""

    name: str = Field(pattern=TASK_NAME_PATTERN, description="[a-z0-9_-]{1,64}, unique")
    inputs: list[InputFile] = Field(min_length=1)
    events_per_range: int = Field(gt=0, le=MAX_EVENTS_PER_FILE)
    max_attempts: int = Field(default=3, gt=0, le=100)
    lease_seconds: int = Field(default=60, gt=0, le=7 * 24 * 3600)
    payload: PayloadSpec
    workers: int = Field(default=1, gt=0, le=100_000)
    max_fatal_ranges: int = Field(default=0, ge=0, le=MAX_RANGES_PER_TASK,
                                  description="fatal ranges tolerated before the task fails")
    object_store: ObjectStoreSpec
    merge: MergeSpec
    panda: PandaSpec | None = Field(default=None, description="hand the task to PanDA pilots too")

    @model_validator(mode="after")
    def _unique_inputs(self) -> TaskSpec:
        seen: dict[str, int] = {}
        for index, item in enumerate(self.inputs):
            if item.lfn in seen:
                raise ValueError(f"inputs.{index}.lfn: {item.lfn!r} already names inputs.{seen[item.lfn]}")
            seen[item.lfn] = index
        guids: dict[str, int] = {}
        for index, item in enumerate(self.inputs):
            if item.guid in guids:
                raise ValueError(f"inputs.{index}.guid: {item.guid} already names inputs.{guids[item.guid]}")
            guids[item.guid] = index
        return self

    @model_validator(mode="after")
    def _bounded(self) -> TaskSpec:
        if self.total_events > MAX_TASK_EVENTS:
            raise ValueError(f"inputs: {self.total_events} events in all; at most {MAX_TASK_EVENTS} a task "
                             "(split the inputs over several tasks)")
        if self.total_ranges > MAX_RANGES_PER_TASK:
            raise ValueError(f"inputs and events_per_range: {self.total_events} events cut in ranges of "
                             f"{self.events_per_range} make {self.total_ranges} ranges; at most "
                             f"{MAX_RANGES_PER_TASK} a task (raise events_per_range, or split the inputs)")
        return self

    @property
    def dataset(self) -> str:
        """The catalog dataset the merged files belong to."""
        return self.merge.dataset or f"{self.name}.merged"

    @property
    def total_events(self) -> int:
        return sum(item.events for item in self.inputs)

    @property
    def total_ranges(self) -> int:
        per = self.events_per_range
        return sum(-(-item.events // per) for item in self.inputs)

    def event_ranges(self) -> Iterator[RangePlan]:
        """Cut the inputs into event ranges, in input order, first events 0-based and inclusive."""
        for number, item in enumerate(self.inputs, start=1):
            for first in range(0, item.events, self.events_per_range):
                last = min(first + self.events_per_range, item.events) - 1
                yield RangePlan(
                    range_id=f"{self.name}.{number}.{first}-{last}",
                    file_number=number,
                    lfn=item.lfn,
                    guid=item.guid,
                    url=item.url,
                    first_event=first,
                    last_event=last,
                )

    @classmethod
    def parse(cls, data: Any, source: str = "task spec") -> TaskSpec:
        """Validate a mapping as a task spec; SpecError names the source and every bad field."""
        if not isinstance(data, dict):
            raise SpecError(f"{source}: a task spec is a mapping of fields, got {type(data).__name__}")
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise SpecError(f"{source}: {describe_validation_error(exc)}") from None

    @classmethod
    def from_text(cls, text: str, source: str = "task spec") -> TaskSpec:
        """Parse YAML (or JSON, which is YAML too) text into a task spec."""
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            problem = getattr(exc, "problem", None) or str(exc)
            raise SpecError(f"{source}: not valid YAML or JSON{where}: {problem}") from None
        return cls.parse(data, source)

    @classmethod
    def from_file(cls, path: str | Path) -> TaskSpec:
        """Load a task spec from a .yaml, .yml or .json file."""
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise SpecError(f"{path}: cannot read the task spec: {exc.strerror or exc}") from None
        except UnicodeDecodeError as exc:
            raise SpecError(f"{path}: the task spec is not UTF-8 text ({exc.reason})") from None
        return cls.from_text(text, str(path))

    def to_json(self) -> str:
        """The normalized spec (generated GUIDs included) as JSON, as the ledger stores it."""
        return json.dumps(self.model_dump(mode="json"), sort_keys=True)


@dataclass(frozen=True, slots=True)
class RangePlan:
    """One event range as cut from a task spec, before it enters the ledger."""

    range_id: str
    file_number: int
    lfn: str
    guid: str
    url: str
    first_event: int
    last_event: int

    @property
    def events(self) -> int:
        return self.last_event - self.first_event + 1


def describe_validation_error(exc: ValidationError) -> str:
    """Render a pydantic ValidationError as '<field>: <problem>' lines naming each field."""
    lines = []
    for error in exc.errors(include_url=False):
        loc = ".".join(str(part) for part in error["loc"])
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            message = "unknown field"
        lines.append(f"{loc}: {message}" if loc else message)
    return "; ".join(lines)

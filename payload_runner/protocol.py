"""The payload protocol (AthenaMP's messages, over ZeroMQ): one typed class per message, parse() and dump()."""

from __future__ import annotations

# Event numbering. The ledger counts events as 0-based entry numbers in the input file, both ends
# inclusive (``first_event``/``last_event``). On the wire, ``startEvent``/``lastEvent`` follow
# AthenaMP and PanDA: 1-based positions in the file, both inclusive, so startEvent = first_event + 1.
# Build a range with ``EventRangeMessage.from_claimed`` and read it back with ``first_entry`` and
# ``last_entry``; nothing else should convert by hand.
#
# The messages:
#   payload -> runner   ``Ready for events``
#   runner  -> payload  ``[{"eventRangeID": ..., "LFN": ..., "GUID": ..., "startEvent": ..., "lastEvent": ...,
#                          "PFN": ..., "scope": ...}]`` (JSON, one range) or ``No more events``
#   payload -> runner   ``<output path>,ID:<eventRangeID>,CPU:<s>,WALL:<s>`` (older form without ``ID:``)
#                       or ``ERR_<NAME> <eventRangeID>: <message>``
import json
import math
import re
from dataclasses import dataclass, field
from typing import Any, ClassVar, Self

from payload_runner.errors import ProtocolError

RANGE_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,255}$")
ERROR_CODE_PATTERN = re.compile(r"^ERR_[A-Z][A-Z0-9_]{0,59}$")
_NUMBER = re.compile(r"^[0-9]+(\.[0-9]*)?([eE][+-]?[0-9]+)?$")
_ERROR_REPORT = re.compile(r"(ERR_[^ ]*) ([^ :]*): ?(.*)", re.DOTALL)
_RANGE_KEYS = ("eventRangeID", "LFN", "GUID", "startEvent", "lastEvent", "PFN", "scope")
_REQUIRED_RANGE_KEYS = ("eventRangeID", "LFN", "GUID", "startEvent", "lastEvent")


def check_range_id(range_id: object, message: str = "") -> str:
    """Check an event range id: 1-256 letters, digits and ``._+-``, never a comma, colon or blank."""
    if not isinstance(range_id, str) or not RANGE_ID_PATTERN.match(range_id):
        raise ProtocolError(f"event range id {range_id!r} is not 1-256 characters of [A-Za-z0-9._+-] "
                            "starting with a letter or digit", message or str(range_id))
    return range_id


def _seconds(text: str, label: str, message: str) -> int | float:
    if not _NUMBER.match(text):
        raise ProtocolError(f"{label} must be a non-negative number of seconds, got {text!r}", message)
    if "." in text or "e" in text or "E" in text:
        value = float(text)
        if not math.isfinite(value):
            raise ProtocolError(f"{label} must be finite, got {text!r}", message)
        return value
    return int(text)


def _check_seconds(value: object, label: str, message: str) -> int | float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ProtocolError(f"{label} must be a number of seconds, got {value!r}", message)
    if not math.isfinite(value) or value < 0:
        raise ProtocolError(f"{label} must be finite and non-negative, got {value!r}", message)
    return value


@dataclass(frozen=True, slots=True)
class ReadyForEvents:
    """The payload asks for an event range."""

    TEXT: ClassVar[str] = "Ready for events"

    @classmethod
    def parse(cls, text: str) -> Self:
        if text != cls.TEXT:
            raise ProtocolError(f"expected {cls.TEXT!r}", text)
        return cls()

    def dump(self) -> str:
        return self.TEXT


@dataclass(frozen=True, slots=True)
class NoMoreEvents:
    """The runner tells the payload that no ranges are left: finish and exit."""

    TEXT: ClassVar[str] = "No more events"

    @classmethod
    def parse(cls, text: str) -> Self:
        if text != cls.TEXT:
            raise ProtocolError(f"expected {cls.TEXT!r}", text)
        return cls()

    def dump(self) -> str:
        return self.TEXT


@dataclass(frozen=True, slots=True)
class EventRangeMessage:
    """One event range handed to the payload; ``start_event``/``last_event`` are 1-based and inclusive."""

    range_id: str
    lfn: str
    guid: str
    start_event: int
    last_event: int
    pfn: str | None = None
    scope: str | None = None

    def __post_init__(self) -> None:
        shown = repr(self)
        check_range_id(self.range_id, shown)
        for label, value in (("LFN", self.lfn), ("GUID", self.guid)):
            if not isinstance(value, str) or not value:
                raise ProtocolError(f"{label} must be a non-empty string, got {value!r}", shown)
        for label, value in (("PFN", self.pfn), ("scope", self.scope)):
            if value is not None and (not isinstance(value, str) or not value):
                raise ProtocolError(f"{label} must be a non-empty string or absent, got {value!r}", shown)
        for label, number in (("startEvent", self.start_event), ("lastEvent", self.last_event)):
            if isinstance(number, bool) or not isinstance(number, int) or number < 1:
                raise ProtocolError(f"{label} must be an integer >= 1 (events count from 1), got {number!r}",
                                    shown)
        if self.last_event < self.start_event:
            raise ProtocolError(f"lastEvent {self.last_event} is before startEvent {self.start_event}", shown)

    @classmethod
    def from_claimed(cls, range_id: str, lfn: str, guid: str, first_event: int, last_event: int,
                     pfn: str | None, scope: str | None = None) -> Self:
        """Build the message from a ledger range, whose first/last events are 0-based file entries."""
        if isinstance(first_event, bool) or not isinstance(first_event, int) or first_event < 0:
            raise ValueError(f"range {range_id!r}: first_event is a 0-based entry number >= 0, got {first_event!r}")
        if isinstance(last_event, bool) or not isinstance(last_event, int) or last_event < first_event:
            raise ValueError(f"range {range_id!r}: last_event must be an integer >= first_event {first_event}, "
                             f"got {last_event!r}")
        return cls(range_id=range_id, lfn=lfn, guid=guid, start_event=first_event + 1,
                   last_event=last_event + 1, pfn=pfn, scope=scope)

    @property
    def first_entry(self) -> int:
        """The range's first entry in the input file, 0-based (the ledger's ``first_event``)."""
        return self.start_event - 1

    @property
    def last_entry(self) -> int:
        """The range's last entry in the input file, 0-based and inclusive (the ledger's ``last_event``)."""
        return self.last_event - 1

    @property
    def events(self) -> int:
        """How many events the range holds."""
        return self.last_event - self.start_event + 1

    @classmethod
    def parse(cls, text: str) -> Self:
        try:
            data = json.loads(text, parse_constant=_refuse_constant)
        except ValueError as exc:
            raise ProtocolError(f"an event range is a JSON list holding one range ({exc})", text) from None
        except RecursionError:
            raise ProtocolError("an event range is a JSON list holding one range (nested too deeply)", text) from None
        if not isinstance(data, list) or len(data) != 1 or not isinstance(data[0], dict):
            raise ProtocolError("an event range is a JSON list holding exactly one range object", text)
        item: dict[str, Any] = data[0]
        missing = [key for key in _REQUIRED_RANGE_KEYS if key not in item]
        if missing:
            raise ProtocolError(f"the event range lacks {', '.join(missing)}", text)
        unknown = sorted(set(item) - set(_RANGE_KEYS))
        if unknown:
            raise ProtocolError(f"the event range has unknown keys {', '.join(unknown)}", text)
        try:
            return cls(range_id=item["eventRangeID"], lfn=item["LFN"], guid=item["GUID"],
                       start_event=item["startEvent"], last_event=item["lastEvent"],
                       pfn=item.get("PFN"), scope=item.get("scope"))
        except ProtocolError as exc:
            raise ProtocolError(exc.reason, text) from None

    def dump(self) -> str:
        return json.dumps([{"eventRangeID": self.range_id, "LFN": self.lfn, "GUID": self.guid,
                            "startEvent": self.start_event, "lastEvent": self.last_event,
                            "PFN": self.pfn, "scope": self.scope}])


def _refuse_constant(name: str) -> float:
    raise ValueError(f"{name} is not a JSON number")


@dataclass(frozen=True, slots=True)
class OutputReport:
    """The payload finished a range: where its output file is and the CPU and wall seconds it took.

    ``legacy`` says the message came in the older form ``<path>,<id>,CPU:<s>,WALL:<s>``; ``dump``
    always writes ``<path>,ID:<id>,CPU:<s>,WALL:<s>``. The path is absolute and holds no comma.
    """

    path: str
    range_id: str
    cpu_s: int | float
    wall_s: int | float
    legacy: bool = field(default=False, compare=False)

    def __post_init__(self) -> None:
        shown = repr(self)
        if not isinstance(self.path, str) or not self.path.startswith("/"):
            raise ProtocolError(f"the output path must be absolute, got {self.path!r}", shown)
        if "," in self.path or "\x00" in self.path or "\n" in self.path:
            raise ProtocolError(f"the output path {self.path!r} holds a comma, NUL or newline", shown)
        check_range_id(self.range_id, shown)
        _check_seconds(self.cpu_s, "CPU", shown)
        _check_seconds(self.wall_s, "WALL", shown)

    @classmethod
    def parse(cls, text: str) -> Self:
        parts = text.split(",")
        if len(parts) != 4:
            raise ProtocolError("an output report is '<path>,ID:<eventRangeID>,CPU:<s>,WALL:<s>' "
                                f"(4 comma-separated fields, got {len(parts)})", text)
        path, id_field, cpu_field, wall_field = parts
        legacy = not id_field.startswith("ID:")
        range_id = id_field if legacy else id_field.removeprefix("ID:")
        if not cpu_field.startswith("CPU:"):
            raise ProtocolError(f"the third field must be 'CPU:<s>', got {cpu_field!r}", text)
        if not wall_field.startswith("WALL:"):
            raise ProtocolError(f"the fourth field must be 'WALL:<s>', got {wall_field!r}", text)
        cpu_s = _seconds(cpu_field.removeprefix("CPU:"), "CPU", text)
        wall_s = _seconds(wall_field.removeprefix("WALL:"), "WALL", text)
        try:
            return cls(path=path, range_id=range_id, cpu_s=cpu_s, wall_s=wall_s, legacy=legacy)
        except ProtocolError as exc:
            raise ProtocolError(exc.reason, text) from None

    def dump(self) -> str:
        return f"{self.path},ID:{self.range_id},CPU:{_format_seconds(self.cpu_s)},WALL:{_format_seconds(self.wall_s)}"


def _format_seconds(value: int | float) -> str:
    return str(value) if isinstance(value, int) else repr(float(value))


@dataclass(frozen=True, slots=True)
class ErrorReport:
    """The payload failed a range: ``ERR_<NAME> <eventRangeID>: <message>`` (the message may be empty)."""

    code: str
    range_id: str
    message: str = ""

    def __post_init__(self) -> None:
        shown = repr(self)
        if not isinstance(self.code, str) or not ERROR_CODE_PATTERN.match(self.code):
            raise ProtocolError(f"error code {self.code!r} is not ERR_ and then up to 60 of [A-Z0-9_] "
                                "starting with a letter", shown)
        check_range_id(self.range_id, shown)
        if not isinstance(self.message, str):
            raise ProtocolError(f"the error message must be text, got {self.message!r}", shown)

    @classmethod
    def parse(cls, text: str) -> Self:
        match = _ERROR_REPORT.fullmatch(text)
        if match is None:
            raise ProtocolError("an error report is 'ERR_<NAME> <eventRangeID>: <message>'", text)
        code, range_id, message = match.group(1), match.group(2), match.group(3)
        try:
            return cls(code=code, range_id=range_id, message=message)
        except ProtocolError as exc:
            raise ProtocolError(exc.reason, text) from None

    def dump(self) -> str:
        return f"{self.code} {self.range_id}: {self.message}"


PayloadMessage = ReadyForEvents | OutputReport | ErrorReport
RunnerMessage = EventRangeMessage | NoMoreEvents


def parse_payload_message(text: str) -> PayloadMessage:
    """Parse what a payload sends: ``Ready for events``, an output report or an error report."""
    if not isinstance(text, str):
        raise TypeError(f"a payload message is text, got {type(text).__name__}")
    if text == ReadyForEvents.TEXT:
        return ReadyForEvents()
    if text.startswith("ERR_"):
        return ErrorReport.parse(text)
    if text.startswith("/"):
        return OutputReport.parse(text)
    raise ProtocolError("a payload message is 'Ready for events', an output report "
                        "'<absolute path>,ID:<eventRangeID>,CPU:<s>,WALL:<s>' "
                        "or 'ERR_<NAME> <eventRangeID>: <message>'", text)


def parse_runner_message(text: str) -> RunnerMessage:
    """Parse what the runner sends: a JSON list with one event range, or ``No more events``."""
    if not isinstance(text, str):
        raise TypeError(f"a runner message is text, got {type(text).__name__}")
    if text == NoMoreEvents.TEXT:
        return NoMoreEvents()
    if text.startswith("["):
        return EventRangeMessage.parse(text)
    raise ProtocolError("a runner message is 'No more events' or a JSON list holding one event range", text)

"""PanDA's wire forms: requests form-encoded or JSON (perhaps gzipped); replies JSON or url-encoded."""

from __future__ import annotations

import json
import zlib
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qsl, urlencode

from event_service.api.errors import PandaRequestError
from event_service.messages import refuse_nul

MAX_FIELD_CHARS = 1 << 20
MAX_INFLATED_BYTES = 8 << 20
MAX_JSON_DEPTH = 32  # a PanDA request nests four levels (updateEventRanges v1: list, zip, ranges, range)
MAX_INTEGER_DIGITS = 20  # every integer field is bounded below 2**64


def loads_json(text: str, what: str) -> Any:
    """JSON text as Python values, or PandaRequestError for bad syntax, deep nesting or numbers of huge size."""
    depth = _nesting(text)
    if depth > MAX_JSON_DEPTH:
        raise PandaRequestError(f"{what} nests more than {MAX_JSON_DEPTH} levels deep")
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise PandaRequestError(f"{what} is not valid JSON: {exc.msg} at character {exc.pos}") from None
    except (ValueError, RecursionError) as exc:  # an integer of thousands of digits, or nesting past the stack
        raise PandaRequestError(f"{what} is not valid JSON: {exc}") from None


def _nesting(text: str) -> int:
    """The deepest bracket nesting of JSON text, strings skipped (an upper bound on the parsed depth)."""
    depth = deepest = 0
    in_string = escaped = False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}":
            depth -= 1
    return deepest


def _inflate(body: bytes, encoding: str) -> bytes:
    """Undo gzip or deflate (by header, or by gzip's magic bytes), refusing anything inflating past 8 MiB."""
    if encoding in ("gzip", "x-gzip") or body[:2] == b"\x1f\x8b":
        inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    elif encoding == "deflate":
        inflater = zlib.decompressobj()
    else:
        return body
    try:
        data = inflater.decompress(body, MAX_INFLATED_BYTES + 1)
    except zlib.error as exc:
        raise PandaRequestError(f"the request body is not valid {encoding or 'gzip'} data: {exc}") from None
    if len(data) > MAX_INFLATED_BYTES or inflater.unconsumed_tail:
        raise PandaRequestError(f"the request body inflates to more than {MAX_INFLATED_BYTES} bytes")
    return data


def parse_request(body: bytes, content_type: str, content_encoding: str = "",
                  query: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The request's fields: a JSON object, or form fields (the last of repeated ones), over query fields."""
    fields: dict[str, Any] = dict(query or {})
    data = _inflate(body, content_encoding.strip().lower())
    if not data.strip():
        return _without_nul(fields, "")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PandaRequestError(f"the request body is not UTF-8 text: {exc.reason} at byte {exc.start}") from None
    if "json" in content_type.lower() or text.lstrip().startswith("{"):
        parsed = loads_json(text, "the request body")
        if not isinstance(parsed, dict):
            raise PandaRequestError(f"a JSON request body must be an object of fields, got {type(parsed).__name__}")
        fields.update(parsed)
        return _without_nul(fields, "")
    try:
        fields.update(parse_qsl(text, keep_blank_values=True, strict_parsing=True, max_num_fields=10_000))
    except ValueError as exc:
        raise PandaRequestError(f"the request body is not form-encoded fields: {exc}") from None
    return _without_nul(fields, "")


def wants_json(accept: str) -> bool:
    """Whether the client asked for JSON replies (PanDA answers url-encoded forms otherwise)."""
    return "application/json" in accept.lower()


def encode_form(reply: Mapping[str, Any]) -> str:
    """PanDA's url-encoded reply: strings as they are, everything else as JSON (None as 'NULL')."""
    def text(value: Any) -> str:
        if value is None:
            return "NULL"
        if isinstance(value, str):
            return value
        if isinstance(value, bool):
            return "True" if value else "False"
        if isinstance(value, (int, float)):
            return str(value)
        return json.dumps(value)
    return urlencode({key: text(value) for key, value in reply.items()})


def text_field(fields: Mapping[str, Any], name: str, *, required: bool = True, default: str | None = None,
               max_chars: int = 255) -> str | None:
    """A field as text (numbers are accepted as their text), bounded in length."""
    value = fields.get(name)
    if value is None or value == "":
        if required:
            raise PandaRequestError(f"field {name!r} is required")
        return default
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise PandaRequestError(f"field {name!r} must be text, got {type(value).__name__}")
    value = str(value)
    if len(value) > max_chars or "\x00" in value:
        raise PandaRequestError(f"field {name!r} is longer than {max_chars} characters or holds NUL")
    return value


def int_field(fields: Mapping[str, Any], name: str, *, required: bool = True, default: int | None = None,
              minimum: int = 0, maximum: int = 2**62) -> int | None:
    """A field as a bounded integer (given as a number or as its decimal text)."""
    value = fields.get(name)
    if value is None or value == "":
        if required:
            raise PandaRequestError(f"field {name!r} is required")
        return default
    if isinstance(value, bool):
        raise PandaRequestError(f"field {name!r} must be an integer, got {value!r}")
    if isinstance(value, str):
        digits = value.strip()
        if not digits.isdigit() or not digits.isascii():
            raise PandaRequestError(f"field {name!r} must be an integer, got {value[:50]!r}")
        if len(digits) > MAX_INTEGER_DIGITS:
            raise PandaRequestError(f"field {name!r} must be between {minimum} and {maximum}, got a number of "
                                    f"{len(digits)} digits")
        value = int(digits)
    if not isinstance(value, int):
        raise PandaRequestError(f"field {name!r} must be an integer, got {type(value).__name__}")
    if not minimum <= value <= maximum:
        raise PandaRequestError(f"field {name!r} must be between {minimum} and {maximum}, got {value}")
    return value


def json_field(fields: Mapping[str, Any], name: str) -> Any:
    """A field holding JSON: decoded from text (as forms carry it) or taken as is from a JSON body."""
    value = fields.get(name)
    if value is None or value == "":
        raise PandaRequestError(f"field {name!r} is required")
    if isinstance(value, str):
        if len(value) > MAX_INFLATED_BYTES:
            raise PandaRequestError(f"field {name!r} is too long")
        value = loads_json(value, f"field {name!r}")
    return _without_nul(value, name)


def _without_nul(value: Any, where: str) -> Any:
    try:
        return refuse_nul(value, where)
    except ValueError as exc:
        raise PandaRequestError(str(exc)) from None

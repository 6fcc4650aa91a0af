"""The OpenAPI description of the PanDA routes: their form or JSON requests and replies, and their refusals."""

from __future__ import annotations

from typing import Any

Responses = dict[int | str, dict[str, Any]]

# The PanDA routes answer in PanDA's forms: url-encoded fields, or JSON when the client accepts it.
_PANDA_REPLY = {"type": "object", "properties": {"StatusCode": {"type": "integer"}, "errorDialog": {"type": "string"}},
                "additionalProperties": True}
_PANDA_CONTENT = {"application/json": {"schema": _PANDA_REPLY},
                  "application/x-www-form-urlencoded": {"schema": {"type": "string"}}}


def _panda(description: str) -> dict[str, Any]:
    return {"description": description, "content": _PANDA_CONTENT}


PANDA_METHOD: Responses = {
    200: _panda("the method's reply: StatusCode 0 (done), 20 (no jobs) or 30 (refused, errorDialog says why)"),
    400: _panda("a malformed request (errorDialog names the field); nothing was changed"),
    401: _panda("no bearer token, or not the server's PanDA or admin token"),
    404: _panda("no such PanDA method"),
    503: _panda("the ledger is unavailable; retry later"),
}
PANDA_QUEUE: Responses = {404: {"description": "not a queue name",
                                "content": {"application/json": {"schema": {"type": "object"}}}}}
# What the PanDA methods read: form fields (or one JSON object), perhaps gzipped; each method takes some.
_PANDA_FIELD = {"anyOf": [{"type": "string"}, {"type": "integer"}]}
_PANDA_FIELDS = {"type": "object", "additionalProperties": True, "properties": {name: _PANDA_FIELD for name in (
    "siteName", "computingElement", "node", "prodSourceLabel", "jobId", "state", "nEvents", "pilotErrorCode",
    "pilotErrorDiag", "pandaID", "taskID", "jobsetID", "nRanges", "version", "eventRanges")}}
PANDA_REQUEST: dict[str, Any] = {"requestBody": {"required": False, "content": {
    "application/x-www-form-urlencoded": {"schema": _PANDA_FIELDS},
    "application/json": {"schema": _PANDA_FIELDS}}}}

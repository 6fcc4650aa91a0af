"""The documented error replies of the HTTP routes (OpenAPI ``responses=``), one dict per kind of refusal."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

Responses = dict[int | str, dict[str, Any]]


class ErrorReply(BaseModel):
    """Why a request was refused."""

    detail: str = Field(description="what is wrong, naming the field, task or range")
    reason: str | None = Field(default=None, description="for a refused task token: token_invalid or token_revoked")


class FieldError(BaseModel):
    """One bad field of a request."""

    loc: list[str]
    field: str = Field(description="the field's dotted path, e.g. body.updates.0.status")
    msg: str
    type: str


class ValidationReply(BaseModel):
    """A malformed request: every bad field, and one line naming them all."""

    detail: list[FieldError]
    message: str


# Every route: the body-size guard and the ledger's availability.
COMMON: Responses = {
    400: {"model": ErrorReply, "description": "the Content-Length header is not a number, or the body is not UTF-8"},
    413: {"model": ErrorReply, "description": "the request body is over the server's limit"},
    503: {"model": ErrorReply, "description": "the ledger database is unavailable; retry after Retry-After s"},
}
INVALID: Responses = {422: {"model": ValidationReply, "description": "a malformed request; nothing was changed"}}
ADMIN_ONLY: Responses = {
    401: {"model": ErrorReply, "description": "no bearer token"},
    403: {"model": ErrorReply, "description": "the token is not the admin token, or the server has none"},
}
TASK_TOKEN: Responses = {
    401: {"model": ErrorReply, "description": "no bearer token"},
    403: {"model": ErrorReply, "description": "the token is not the task's (or the admin token), or it was revoked"},
    404: {"model": ErrorReply, "description": "no such task"},
}
NOT_FOUND: Responses = {404: {"model": ErrorReply, "description": "no such task or range"}}
CONFLICT: Responses = {409: {"model": ErrorReply, "description": "a task of that name exists"}}

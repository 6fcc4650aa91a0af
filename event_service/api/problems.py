"""Errors as HTTP replies: one table from error classes to status, body and headers, and the handlers that apply it."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request, status
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from event_service.api.errors import NoPresignedUploadsError, UploadRefusedError
from event_service.ledger.errors import (
    LedgerUnavailableError,
    RangeNotFoundError,
    TaskExistsError,
    TaskNotFoundError,
    TokenRejectedError,
)
from event_service.stores import InvalidKeyError, ObjectStoreError

log = logging.getLogger(__name__)

RETRY_AFTER = {"Retry-After": "5"}  # an outage's 503: when to try again, in seconds
Body = Callable[[Exception], dict[str, Any]]


def detail(exc: Exception) -> dict[str, Any]:
    return {"detail": str(exc)}


def detail_and_message(exc: Exception) -> dict[str, Any]:
    """A refusal of the request's content, worded as a validation reply's one line is (``message``)."""
    return {"detail": str(exc), "message": str(exc)}


def token_refusal(exc: Exception) -> dict[str, Any]:
    """Why a task token was refused: ``reason`` tells a worker whether to stop (revoked) or not."""
    revoked = isinstance(exc, TokenRejectedError) and exc.revoked
    return {"detail": str(exc), "reason": "token_revoked" if revoked else "token_invalid"}


def store_unavailable(exc: Exception) -> dict[str, Any]:
    return {"detail": f"the server cannot sign for the task's store now: {exc}"}


def ledger_unavailable(_exc: Exception) -> dict[str, Any]:
    return {"detail": "the ledger database is unavailable; retry later"}  # the database's words stay in the log


@dataclass(frozen=True, slots=True)
class Problem:
    """How one kind of error is answered; ``log``: the server's trouble, logged as an error under this label."""

    status: int
    body: Body = detail
    headers: Mapping[str, str] | None = None
    log: str | None = None


# Every error a route lets through, and its reply; an error whose class is not listed gets its nearest listed base's.
PROBLEMS: dict[type[Exception], Problem] = {
    TaskNotFoundError: Problem(status.HTTP_404_NOT_FOUND),
    RangeNotFoundError: Problem(status.HTTP_404_NOT_FOUND),
    TaskExistsError: Problem(status.HTTP_409_CONFLICT),
    TokenRejectedError: Problem(status.HTTP_403_FORBIDDEN, token_refusal),
    UploadRefusedError: Problem(status.HTTP_409_CONFLICT),
    NoPresignedUploadsError: Problem(status.HTTP_422_UNPROCESSABLE_CONTENT, detail_and_message),
    InvalidKeyError: Problem(status.HTTP_422_UNPROCESSABLE_CONTENT, detail_and_message),
    ObjectStoreError: Problem(status.HTTP_503_SERVICE_UNAVAILABLE, store_unavailable, RETRY_AFTER, "object store"),
    LedgerUnavailableError: Problem(status.HTTP_503_SERVICE_UNAVAILABLE, ledger_unavailable, RETRY_AFTER,
                                    "ledger unavailable"),
}


def problem_of(exc: Exception) -> Problem:
    """The table's entry for the error: its class's, or its nearest listed base's (as Starlette picks handlers)."""
    return next(PROBLEMS[cls] for cls in type(exc).__mro__ if cls in PROBLEMS)


async def answer_problem(_request: Request, exc: Exception) -> Response:
    problem = problem_of(exc)
    if problem.log is not None:
        log.error("%s: %s", problem.log, exc)
    return JSONResponse(problem.body(exc), problem.status, headers=problem.headers)


def field_errors(exc: RequestValidationError) -> list[dict[str, object]]:
    """Each bad field of a request: its path (``loc``, and dotted as ``field``), what is wrong, the error type."""
    errors = []
    for error in exc.errors():
        loc = [str(part) for part in error.get("loc", ())]
        message = str(error.get("msg", "")).removeprefix("Value error, ")
        if error.get("type") == "extra_forbidden":
            message = "unknown field"
        elif error.get("type") == "json_invalid":  # loc is ("body", <character>)
            ctx = error.get("ctx") or {}
            message = f"not valid JSON: {ctx.get('error', 'decode error')} at character {loc[-1]}"
            loc = loc[:1]
        errors.append({"loc": loc, "field": ".".join(loc), "msg": message, "type": error.get("type")})
    return errors


async def answer_invalid(_request: Request, exc: Exception) -> Response:
    """A malformed request: every bad field, and one line naming them all."""
    assert isinstance(exc, RequestValidationError)
    errors = field_errors(exc)
    message = "; ".join(f"{e['field']}: {e['msg']}" for e in errors)
    return JSONResponse({"detail": errors, "message": message}, status.HTTP_422_UNPROCESSABLE_CONTENT)


async def answer_http_error(request: Request, exc: Exception) -> Response:
    """FastAPI's own refusals as FastAPI words them, but for a body that is not UTF-8 (it says only "There was an
    error parsing the body")."""
    assert isinstance(exc, StarletteHTTPException)
    cause = exc.__cause__
    if exc.status_code == status.HTTP_400_BAD_REQUEST and isinstance(cause, UnicodeDecodeError):
        return JSONResponse({"detail": f"the request body is not UTF-8 text ({cause.reason} at byte "
                                       f"{cause.start})"}, status.HTTP_400_BAD_REQUEST)
    return await http_exception_handler(request, exc)


def install_problems(app: FastAPI) -> None:
    """Answer every error of the table as it says, and FastAPI's own refusals as above."""
    app.add_exception_handler(StarletteHTTPException, answer_http_error)
    app.add_exception_handler(RequestValidationError, answer_invalid)
    for cls in PROBLEMS:
        app.add_exception_handler(cls, answer_problem)

"""Who may call what: the admin token, a task's own token, and read access (monitor token, or a host's own check)."""

from __future__ import annotations

import hmac
from collections.abc import Callable
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from event_service import settings
from event_service.api.state import ledger_of
from event_service.ledger import TaskRecord

# A host (the Airflow plugin) may let in its own users: each check gets the request and says yes or no.
ReaderCheck = Callable[[Request], bool]

_bearer = HTTPBearer(auto_error=False, description="a task token, or the admin token")
_reader_bearer = HTTPBearer(auto_error=False, description="the admin token or the read-only monitor token")
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]


def _matches(token: str, expected: str | None) -> bool:
    return expected is not None and hmac.compare_digest(token.encode(), expected.encode())


def _unauthorized(detail: str) -> HTTPException:
    return HTTPException(status.HTTP_401_UNAUTHORIZED, detail, headers={"WWW-Authenticate": "Bearer"})


def require_admin(request: Request, credentials: Credentials) -> None:
    """The admin token, needed to create, list and cancel tasks."""
    if credentials is None:
        raise _unauthorized("missing bearer token")
    if request.app.state.admin_token is None:
        raise HTTPException(status.HTTP_403_FORBIDDEN, f"this server has no admin token; set "
                                                       f"{settings.ADMIN_TOKEN.name} to create or cancel tasks")
    if not _matches(credentials.credentials, request.app.state.admin_token):
        raise HTTPException(status.HTTP_403_FORBIDDEN, "the admin token is required")


def task_access(task: str, request: Request, credentials: Credentials) -> TaskRecord:
    """The task's own token (or the admin token) for the task named in the path."""
    if credentials is None:
        raise _unauthorized("missing bearer token")
    ledger = ledger_of(request)
    token = credentials.credentials
    if _matches(token, request.app.state.admin_token):
        return ledger.task(task)
    return ledger.authorize(task, token)


def require_reader(request: Request,
                   credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_reader_bearer)]) -> None:
    """Read-only access: ``Authorization: Bearer`` with the admin or the monitor token, or a user the host lets
    in (``app.state.reader_checks``, e.g. someone logged into the Airflow UI). Never a task token."""
    checks: list[ReaderCheck] = getattr(request.app.state, "reader_checks", [])
    if credentials is not None:
        token = credentials.credentials
        if _matches(token, request.app.state.admin_token) or _matches(token, request.app.state.monitor_token):
            return
    if any(check(request) for check in checks):
        return
    if credentials is None:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "missing bearer token (the admin or the monitor token)",
                            headers={"WWW-Authenticate": "Bearer"})
    raise HTTPException(status.HTTP_403_FORBIDDEN, "the admin or the monitor token is required")


Admin = Annotated[None, Depends(require_admin)]
Task = Annotated[TaskRecord, Depends(task_access)]
Reader = Annotated[None, Depends(require_reader)]

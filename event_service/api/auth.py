"""Read access to the monitoring views: the admin token, the read-only monitor token, or a host's own check."""

from __future__ import annotations

import hmac
from collections.abc import Callable
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

# A host (the Airflow plugin) may let in its own users: each check gets the request and says yes or no.
ReaderCheck = Callable[[Request], bool]

_reader_bearer = HTTPBearer(auto_error=False, description="the admin token or the read-only monitor token")


def _matches(token: str, expected: str | None) -> bool:
    return expected is not None and hmac.compare_digest(token.encode(), expected.encode())


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


Reader = Annotated[None, Depends(require_reader)]

"""The monitoring routes: read-only JSON under /api/v1/monitor, and the page that shows it under /monitor/."""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import cache
from importlib.resources import files
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Query, Request, status
from fastapi.responses import RedirectResponse, Response

from event_service.api.auth import require_reader
from event_service.api.monitor.models import TaskDetail, TaskList
from event_service.api.monitor.queries import (
    DEFAULT_DURATION_BINS,
    DEFAULT_WINDOW_S,
    task_detail,
    task_list,
)
from event_service.api.monitor.validations import ValidationCache
from event_service.api.responses import ErrorReply, Responses
from event_service.ledger import Ledger
from event_service.merge.certify import Validation

API = "/api/v1/monitor"
PAGE = "/monitor"

# The page and its two assets; anything else under /monitor/ is 404. Nothing is loaded from elsewhere: the
# Content-Security-Policy lets the page talk to this server only.
ASSETS = {"index.html": "text/html; charset=utf-8", "app.js": "text/javascript; charset=utf-8",
          "style.css": "text/css; charset=utf-8", "icon.svg": "image/svg+xml"}
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                               "connect-src 'self'; frame-ancestors 'self'; base-uri 'none'; form-action 'none'",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",
    "Referrer-Policy": "same-origin",
}

WindowS = Annotated[float, Query(ge=10, le=86400, description="the rate window in seconds")]


@cache
def _asset(name: str) -> bytes:
    return files("event_service.api.monitor").joinpath("static", name).read_bytes()


def _now(request: Request) -> float:
    clock: Callable[[], float] = getattr(request.app.state, "monitor_clock", time.time)
    return clock()


def monitor_router(open_ledger: Callable[[], Ledger]) -> APIRouter:
    """Read-only monitoring routes over the ledger, for the admin token, the monitor token, or a user the host
    lets in (``app.state.reader_checks``). ``app.state.monitor_clock``, when set, replaces the wall clock."""
    reader: Responses = {
        401: {"model": ErrorReply, "description": "no credentials: the admin or the monitor token, or an Airflow UI "
                                                  "login"},
        403: {"model": ErrorReply, "description": "the token is neither the admin nor the monitor token (task "
                                                  "tokens never read the monitoring views)"},
        422: {"description": "a bad query parameter"},
    }
    no_task: Responses = {404: {"model": ErrorReply, "description": "no such task"}}
    router = APIRouter()
    guarded = [Depends(require_reader)]
    validations = ValidationCache()

    @router.get(f"{API}/tasks", tags=["monitoring"], responses=reader, dependencies=guarded)
    def monitor_tasks(request: Request, window_s: WindowS = DEFAULT_WINDOW_S) -> TaskList:
        """Every task: ranges per status, events done and total, current rate (events of ranges finished in the
        last ``window_s`` seconds, per second), ETA, live workers, state."""
        return task_list(open_ledger(), _now(request), window_s)

    @router.get(f"{API}/tasks/{{task}}", tags=["monitoring"], responses=reader | no_task,
                dependencies=guarded)
    def monitor_task(task: str, request: Request, window_s: WindowS = DEFAULT_WINDOW_S,
                     bin_s: Annotated[float | None, Query(ge=1, le=86400 * 30, description=(
                         "width of the rate series' bins in seconds; by default a round width giving at most "
                         "about 120 bins since the task was created (never more than 2,000 bins)"))] = None,
                     bins: Annotated[int, Query(ge=1, le=100, description="bins of the range duration histogram")]
                     = DEFAULT_DURATION_BINS) -> TaskDetail:
        """One task: its summary; events per second over time; range duration histogram; CPU efficiency (CPU /
        wall) per range; failures by error code and by worker host; attempts per range; workers with their last
        heartbeat; the merged outputs in the catalog."""
        return task_detail(open_ledger(), task, _now(request), window_s=window_s, bin_s=bin_s, duration_bins=bins)

    @router.get(f"{API}/tasks/{{task}}/outputs/{{file_name}}/validation", tags=["monitoring"],
                responses=reader | {404: {"model": ErrorReply, "description": "no such task, merged file, or "
                                                                             "validation set"},
                                    503: {"model": ErrorReply, "description": "normal storage cannot be read now"}},
                dependencies=guarded)
    def monitor_validation(task: str, file_name: str, request: Request) -> Validation:
        """The validation histograms of one merged file (and its certification against the task's reference),
        read from beside the file in normal storage."""
        open_location = getattr(request.app.state, "open_location", None)
        try:
            return validations.get(open_ledger(), task, file_name, open_location)
        except LookupError as exc:
            raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc.args[0])) from None
        except OSError as exc:  # the stores' errors
            raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, f"normal storage cannot be read now: {exc}",
                                headers={"Retry-After": "10"}) from None

    @router.get(PAGE, include_in_schema=False)
    def page_root() -> Response:
        return RedirectResponse("monitor/", status.HTTP_307_TEMPORARY_REDIRECT)

    @router.get(f"{PAGE}/", include_in_schema=False)
    def page() -> Response:
        return Response(_asset("index.html"), media_type=ASSETS["index.html"], headers=PAGE_HEADERS)

    @router.get(f"{PAGE}/{{name}}", include_in_schema=False)
    def asset(name: str) -> Response:
        if name not in ASSETS:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"no {name} here")
        return Response(_asset(name), media_type=ASSETS[name], headers=PAGE_HEADERS)

    return router

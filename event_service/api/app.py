"""The dispatch API: a FastAPI app over the ledger, with per-task bearer tokens and an admin token."""

from __future__ import annotations

import hmac
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Annotated

from fastapi import Depends, FastAPI, HTTPException, Request, status
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from event_service import __version__, settings
from event_service.api.limits import DEFAULT_MAX_BODY_BYTES, BodySizeLimit, NulGuard
from event_service.api.metrics import metrics_router
from event_service.api.monitor.router import monitor_router
from event_service.api.panda.router import panda_router
from event_service.api.panda.service import PandaSettings
from event_service.api.responses import (
    ADMIN_ONLY,
    COMMON,
    CONFLICT,
    INVALID,
    NOT_FOUND,
    TASK_TOKEN,
)
from event_service.api.uploads import (
    NoPresignedUploadsError,
    UploadGrants,
    UploadRefusedError,
)
from event_service.errors import (
    LedgerUnavailableError,
    RangeNotFoundError,
    TaskExistsError,
    TaskNotFoundError,
    TokenRejectedError,
)
from event_service.ledger import Ledger, TaskRecord
from event_service.messages import (
    ClaimReply,
    ClaimRequest,
    HeartbeatReply,
    HeartbeatRequest,
    RangeInfo,
    TaskCreated,
    TaskStatus,
    UpdateReply,
    UpdateRequest,
    UploadGrant,
    UploadRequest,
)
from event_service.spec import TaskSpec
from event_service.stores import InvalidKeyError, ObjectStoreError

log = logging.getLogger(__name__)

PREFIX = "/api/v1"

_bearer = HTTPBearer(auto_error=False, description="a task token, or the admin token")
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]


def _unauthorized(detail: str) -> HTTPException:
    return HTTPException(status.HTTP_401_UNAUTHORIZED, detail, headers={"WWW-Authenticate": "Bearer"})


def _json(reply: BaseModel) -> Response:
    return Response(reply.model_dump_json(), media_type="application/json")


def _field_errors(exc: RequestValidationError) -> list[dict[str, object]]:
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


def _ledger(request: Request) -> Ledger:
    opened: Ledger = request.app.state.open_ledger()
    return opened


def _is_admin(request: Request, token: str) -> bool:
    admin_token: str | None = request.app.state.admin_token
    return admin_token is not None and hmac.compare_digest(token.encode(), admin_token.encode())


def require_admin(request: Request, credentials: Credentials) -> None:
    """The admin token, needed to create, list and cancel tasks."""
    if credentials is None:
        raise _unauthorized("missing bearer token")
    if request.app.state.admin_token is None:
        raise HTTPException(status.HTTP_403_FORBIDDEN,
                            f"this server has no admin token; set {settings.ADMIN_TOKEN.name} to create or cancel tasks")
    if not _is_admin(request, credentials.credentials):
        raise HTTPException(status.HTTP_403_FORBIDDEN, "the admin token is required")


def task_access(task: str, request: Request, credentials: Credentials) -> TaskRecord:
    """The task's own token (or the admin token) for the task named in the path."""
    if credentials is None:
        raise _unauthorized("missing bearer token")
    ledger = _ledger(request)
    token = credentials.credentials
    if _is_admin(request, token):
        return ledger.task(task)
    return ledger.authorize(task, token)


Admin = Annotated[None, Depends(require_admin)]
Task = Annotated[TaskRecord, Depends(task_access)]


def create_app(ledger: Ledger | Callable[[], Ledger], admin_token: str | None, *,
               max_body_bytes: int = DEFAULT_MAX_BODY_BYTES, close_ledger: bool = False,
               panda_token: str | None = None, panda: PandaSettings | None = None,
               monitor_token: str | None = None) -> FastAPI:
    """The dispatch API over ``ledger`` (or a callable that opens it on first use, for apps mounted in
    another server), with the PanDA-compatible routes under /server/panda. Without an admin token,
    creating and cancelling tasks is refused; PanDA pilots present ``panda_token`` or the admin token."""
    open_ledger: Callable[[], Ledger] = (lambda: ledger) if isinstance(ledger, Ledger) else ledger

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        uploads.close()
        if close_ledger:
            open_ledger().close()

    app = FastAPI(
        title="Event Service dispatch API",
        version=__version__,
        description="Claim event ranges, report them, renew leases. Workers authenticate with their task's "
                    "token (`Authorization: Bearer <token>`); creating and cancelling tasks needs the admin token.",
        lifespan=lifespan,
        responses=COMMON,
    )
    app.state.open_ledger = open_ledger
    uploads = UploadGrants(open_ledger)
    app.state.admin_token = admin_token
    app.state.monitor_token = monitor_token  # read-only: the monitoring views, never a task's calls
    app.state.reader_checks = []  # a host's own read access (the Airflow plugin adds its logged-in users)
    app.add_middleware(BodySizeLimit, max_bytes=max_body_bytes)
    app.add_middleware(NulGuard)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        cause = exc.__cause__
        if exc.status_code == status.HTTP_400_BAD_REQUEST and isinstance(cause, UnicodeDecodeError):
            # FastAPI's own words are "There was an error parsing the body".
            return JSONResponse({"detail": f"the request body is not UTF-8 text ({cause.reason} at byte "
                                           f"{cause.start})"}, status.HTTP_400_BAD_REQUEST)
        return await http_exception_handler(request, exc)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = _field_errors(exc)
        message = "; ".join(f"{e['field']}: {e['msg']}" for e in errors)
        return JSONResponse({"detail": errors, "message": message}, status.HTTP_422_UNPROCESSABLE_CONTENT)

    @app.exception_handler(TaskNotFoundError)
    @app.exception_handler(RangeNotFoundError)
    async def _not_found(_request: Request, exc: KeyError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status.HTTP_404_NOT_FOUND)

    @app.exception_handler(TaskExistsError)
    async def _exists(_request: Request, exc: TaskExistsError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status.HTTP_409_CONFLICT)

    @app.exception_handler(TokenRejectedError)
    async def _rejected(_request: Request, exc: TokenRejectedError) -> JSONResponse:
        return JSONResponse({"detail": str(exc), "reason": "token_revoked" if exc.revoked else "token_invalid"},
                            status.HTTP_403_FORBIDDEN)

    @app.exception_handler(UploadRefusedError)
    async def _refused(_request: Request, exc: UploadRefusedError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status.HTTP_409_CONFLICT)

    @app.exception_handler(NoPresignedUploadsError)
    @app.exception_handler(InvalidKeyError)
    async def _unprocessable(_request: Request, exc: ValueError) -> JSONResponse:
        return JSONResponse({"detail": str(exc), "message": str(exc)}, status.HTTP_422_UNPROCESSABLE_CONTENT)

    @app.exception_handler(ObjectStoreError)
    async def _store_error(_request: Request, exc: ObjectStoreError) -> JSONResponse:
        log.error("object store: %s", exc)
        return JSONResponse({"detail": f"the server cannot sign for the task's store now: {exc}"},
                            status.HTTP_503_SERVICE_UNAVAILABLE, headers={"Retry-After": "5"})

    @app.exception_handler(LedgerUnavailableError)
    async def _unavailable(_request: Request, exc: LedgerUnavailableError) -> JSONResponse:
        log.error("ledger unavailable: %s", exc)
        return JSONResponse({"detail": "the ledger database is unavailable; retry later"},
                            status.HTTP_503_SERVICE_UNAVAILABLE, headers={"Retry-After": "5"})

    @app.get(f"{PREFIX}/health", tags=["service"])
    def health() -> dict[str, str]:
        """Liveness and ledger reachability."""
        open_ledger().task_names()
        return {"status": "ok", "version": __version__}

    @app.post(f"{PREFIX}/tasks", status_code=status.HTTP_201_CREATED, tags=["tasks"],
              responses=ADMIN_ONLY | CONFLICT | INVALID)
    def create_task(spec: TaskSpec, _admin: Admin) -> TaskCreated:
        """Create a task from its spec: all its event ranges, or none. Returns the task's token once."""
        record, token = open_ledger().create_task(spec)
        return TaskCreated(task=record.name, token=token, ranges=record.n_ranges)

    @app.get(f"{PREFIX}/tasks", tags=["tasks"], responses=ADMIN_ONLY)
    def list_tasks(_admin: Admin) -> list[TaskStatus]:
        """Every task's status (admin token)."""
        return [open_ledger().status(name) for name in open_ledger().task_names()]

    @app.get(f"{PREFIX}/tasks/{{task}}", tags=["tasks"], responses=TASK_TOKEN | INVALID)
    def task_status(record: Task) -> TaskStatus:
        """Ranges per status, events done and total, live workers."""
        return open_ledger().status(record.name)

    @app.get(f"{PREFIX}/tasks/{{task}}/spec", tags=["tasks"], responses=TASK_TOKEN | INVALID)
    def task_spec(record: Task) -> TaskSpec:
        """The task's spec as stored (generated GUIDs included): payload command, object store, inputs."""
        return open_ledger().task_spec(record.name)

    @app.get(f"{PREFIX}/tasks/{{task}}/ranges/{{range_id}}", tags=["workers"],
             responses=TASK_TOKEN | NOT_FOUND | INVALID)
    def range_info(range_id: str, record: Task) -> RangeInfo:
        """One range's status, attempt, holder and output (a runner recovering old outputs asks first)."""
        return open_ledger().range_info(record.name, range_id)

    # The two hot endpoints serialize their typed replies themselves: FastAPI would dump, re-validate
    # and dump again a reply that the ledger has just built and validated.
    @app.post(f"{PREFIX}/tasks/{{task}}/claim", tags=["workers"], response_model=ClaimReply,
              responses=TASK_TOKEN | INVALID)
    def claim(body: ClaimRequest, record: Task) -> Response:
        """Claim up to ``n`` ready event ranges under a lease; an empty list when none is ready now."""
        return _json(open_ledger().claim(record.name, body.worker, body.n, body.host, body.claim_id))

    @app.post(f"{PREFIX}/tasks/{{task}}/update", tags=["workers"], response_model=UpdateReply,
              responses=TASK_TOKEN | NOT_FOUND | INVALID)
    def update_ranges(body: UpdateRequest, record: Task) -> Response:
        """Report ranges running, finished (with output), failed, fatal, or given back (``ready``)."""
        return _json(UpdateReply(results=open_ledger().update(record.name, body.worker, body.updates)))

    @app.post(f"{PREFIX}/tasks/{{task}}/heartbeat", tags=["workers"], responses=TASK_TOKEN | INVALID)
    def heartbeat(body: HeartbeatRequest, record: Task) -> HeartbeatReply:
        """Renew the worker's leases; ``command: stop`` when the task was cancelled."""
        return open_ledger().heartbeat(record.name, body.worker, body.host, body.restarted)

    @app.post(f"{PREFIX}/tasks/{{task}}/uploads", tags=["workers"], responses=TASK_TOKEN | {
        404: {"description": "no such task or range"},
        409: {"description": "the worker does not hold the range in that attempt, or no such store"},
        422: {"description": "a malformed request, or the task's store cannot sign uploads"},
        503: {"description": "the server cannot sign for the task's store now"}})
    def grant_upload(body: UploadRequest, record: Task) -> UploadGrant:
        """A pre-signed upload of one range's output (S3 stores): the worker needs no store credentials. The
        URL is bound to the key, the adler32 and the size; only the worker holding the range gets one."""
        return uploads.grant(record.name, body)

    @app.post(f"{PREFIX}/tasks/{{task}}/cancel", tags=["tasks"], responses=ADMIN_ONLY | NOT_FOUND | INVALID)
    def cancel(task: str, _admin: Admin) -> TaskStatus:
        """Cancel a task (admin token): open ranges become cancelled, workers are told to stop."""
        open_ledger().cancel(task, by="admin")
        return open_ledger().status(task)

    app.include_router(panda_router(open_ledger, tuple(t for t in (panda_token, admin_token) if t), panda))
    app.include_router(metrics_router(open_ledger))
    app.include_router(monitor_router(open_ledger))
    return app


def app_from_env() -> FastAPI:
    """The app as ``event-service serve`` runs it: ledger URL and admin token from the environment."""
    url = settings.DB.get()
    if not url:
        raise RuntimeError(f"set {settings.DB.name} to the ledger's database URL (postgresql://… or sqlite:///path)")
    return create_app(Ledger(url), settings.ADMIN_TOKEN.get(), close_ledger=True,
                      panda_token=settings.PANDA_TOKEN.get(),
                      monitor_token=settings.MONITOR_TOKEN.get())

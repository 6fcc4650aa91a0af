"""The workers' routes under a task: claim ranges, report them, renew leases, a range's state, pre-signed uploads."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import BaseModel

from event_service.api.auth import Task
from event_service.api.responses import INVALID, NOT_FOUND, TASK_TOKEN, Responses
from event_service.api.routes import PREFIX
from event_service.api.state import ledger_of, uploads_of
from event_service.messages import (
    ClaimReply,
    ClaimRequest,
    HeartbeatReply,
    HeartbeatRequest,
    RangeInfo,
    UpdateReply,
    UpdateRequest,
    UploadGrant,
    UploadRequest,
)

router = APIRouter(prefix=PREFIX)

UPLOAD_REFUSALS: Responses = {
    404: {"description": "no such task or range"},
    409: {"description": "the worker does not hold the range in that attempt, or no such store"},
    422: {"description": "a malformed request, or the task's store cannot sign uploads"},
    503: {"description": "the server cannot sign for the task's store now"},
}


def _json(reply: BaseModel) -> Response:
    return Response(reply.model_dump_json(), media_type="application/json")


@router.get("/tasks/{task}/ranges/{range_id}", tags=["workers"], responses=TASK_TOKEN | NOT_FOUND | INVALID)
def range_info(range_id: str, record: Task, request: Request) -> RangeInfo:
    """One range's status, attempt, holder and output (a runner recovering old outputs asks first)."""
    return ledger_of(request).range_info(record.name, range_id)


# The two hot endpoints serialize their typed replies themselves: FastAPI would dump, re-validate and dump again a
# reply that the ledger has just built and validated.
@router.post("/tasks/{task}/claim", tags=["workers"], response_model=ClaimReply, responses=TASK_TOKEN | INVALID)
def claim(body: ClaimRequest, record: Task, request: Request) -> Response:
    """Claim up to ``n`` ready event ranges under a lease; an empty list when none is ready now."""
    return _json(ledger_of(request).claim(record.name, body.worker, body.n, body.host, body.claim_id))


@router.post("/tasks/{task}/update", tags=["workers"], response_model=UpdateReply,
             responses=TASK_TOKEN | NOT_FOUND | INVALID)
def update_ranges(body: UpdateRequest, record: Task, request: Request) -> Response:
    """Report ranges running, finished (with output), failed, fatal, or given back (``ready``)."""
    return _json(UpdateReply(results=ledger_of(request).update(record.name, body.worker, body.updates)))


@router.post("/tasks/{task}/heartbeat", tags=["workers"], responses=TASK_TOKEN | INVALID)
def heartbeat(body: HeartbeatRequest, record: Task, request: Request) -> HeartbeatReply:
    """Renew the worker's leases; ``command: stop`` when the task was cancelled."""
    return ledger_of(request).heartbeat(record.name, body.worker, body.host, body.restarted)


@router.post("/tasks/{task}/uploads", tags=["workers"], responses=TASK_TOKEN | UPLOAD_REFUSALS)
def grant_upload(body: UploadRequest, record: Task, request: Request) -> UploadGrant:
    """A pre-signed upload of one range's output (S3 stores): the worker needs no store credentials. The
    URL is bound to the key, the adler32 and the size; only the worker holding the range gets one."""
    return uploads_of(request).grant(record.name, body)

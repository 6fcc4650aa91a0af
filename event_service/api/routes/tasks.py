"""The tasks' routes: create, list and cancel (admin token); a task's status and spec (its token or the admin's)."""

from __future__ import annotations

from fastapi import APIRouter, Request, status

from event_service.api.auth import Admin, Task
from event_service.api.responses import ADMIN_ONLY, CONFLICT, INVALID, NOT_FOUND, TASK_TOKEN
from event_service.api.routes import PREFIX
from event_service.api.state import ledger_of
from event_service.messages import TaskCreated, TaskStatus
from event_service.spec import TaskSpec

router = APIRouter(prefix=PREFIX)
# Cancelling comes after the workers' routes in the OpenAPI document, where it has always been listed.
cancel_router = APIRouter(prefix=PREFIX)


@router.post("/tasks", status_code=status.HTTP_201_CREATED, tags=["tasks"], responses=ADMIN_ONLY | CONFLICT | INVALID)
def create_task(spec: TaskSpec, _admin: Admin, request: Request) -> TaskCreated:
    """Create a task from its spec: all its event ranges, or none. Returns the task's token once."""
    record, token = ledger_of(request).create_task(spec)
    return TaskCreated(task=record.name, token=token, ranges=record.n_ranges)


@router.get("/tasks", tags=["tasks"], responses=ADMIN_ONLY)
def list_tasks(_admin: Admin, request: Request) -> list[TaskStatus]:
    """Every task's status (admin token)."""
    ledger = ledger_of(request)
    return [ledger.status(name) for name in ledger.task_names()]


@router.get("/tasks/{task}", tags=["tasks"], responses=TASK_TOKEN | INVALID)
def task_status(record: Task, request: Request) -> TaskStatus:
    """Ranges per status, events done and total, live workers."""
    return ledger_of(request).status(record.name)


@router.get("/tasks/{task}/spec", tags=["tasks"], responses=TASK_TOKEN | INVALID)
def task_spec(record: Task, request: Request) -> TaskSpec:
    """The task's spec as stored (generated GUIDs included): payload command, object store, inputs."""
    return ledger_of(request).task_spec(record.name)


@cancel_router.post("/tasks/{task}/cancel", tags=["tasks"], responses=ADMIN_ONLY | NOT_FOUND | INVALID)
def cancel(task: str, _admin: Admin, request: Request) -> TaskStatus:
    """Cancel a task (admin token): open ranges become cancelled, workers are told to stop."""
    ledger = ledger_of(request)
    ledger.cancel(task, by="admin")
    return ledger.status(task)

"""The service's route: liveness and ledger reachability."""

from __future__ import annotations

from fastapi import APIRouter, Request

from event_service import __version__
from event_service.api.routes import PREFIX
from event_service.api.state import ledger_of

router = APIRouter(prefix=PREFIX)


@router.get("/health", tags=["service"])
def health(request: Request) -> dict[str, str]:
    """Liveness and ledger reachability."""
    ledger_of(request).task_names()
    return {"status": "ok", "version": __version__}

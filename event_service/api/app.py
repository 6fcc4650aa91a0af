"""The dispatch API: a FastAPI app over the ledger, with per-task bearer tokens and an admin token."""

from __future__ import annotations

from collections.abc import Callable

from fastapi import FastAPI

from event_service import __version__, settings
from event_service.api.limits import DEFAULT_MAX_BODY_BYTES, BodySizeLimit, NulGuard
from event_service.api.metrics import metrics_router
from event_service.api.monitor.router import monitor_router
from event_service.api.panda.router import panda_router
from event_service.api.panda.service import PandaSettings
from event_service.api.problems import install_problems
from event_service.api.responses import COMMON
from event_service.api.routes import dispatch, health, tasks
from event_service.api.state import keep_state, lifespan
from event_service.ledger import Ledger

DESCRIPTION = ("Claim event ranges, report them, renew leases. Workers authenticate with their task's token "
               "(`Authorization: Bearer <token>`); creating and cancelling tasks needs the admin token.")


def create_app(ledger: Ledger | Callable[[], Ledger], admin_token: str | None, *,
               max_body_bytes: int = DEFAULT_MAX_BODY_BYTES, close_ledger: bool = False,
               panda_token: str | None = None, panda: PandaSettings | None = None,
               monitor_token: str | None = None) -> FastAPI:
    """The dispatch API over ``ledger`` (or a callable that opens it on first use, for apps mounted in
    another server), with the PanDA-compatible routes under /server/panda. Without an admin token,
    creating and cancelling tasks is refused; PanDA pilots present ``panda_token`` or the admin token."""
    open_ledger: Callable[[], Ledger] = (lambda: ledger) if isinstance(ledger, Ledger) else ledger
    app = FastAPI(title="Event Service dispatch API", version=__version__, description=DESCRIPTION,
                  lifespan=lifespan, responses=COMMON)
    keep_state(app, open_ledger, admin_token, monitor_token, close_ledger)
    app.add_middleware(BodySizeLimit, max_bytes=max_body_bytes)
    app.add_middleware(NulGuard)
    install_problems(app)
    for routes in (health.router, tasks.router, dispatch.router, tasks.cancel_router):
        app.include_router(routes)
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

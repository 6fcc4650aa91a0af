"""What the app keeps in ``app.state`` (ledger, upload grants, tokens) and how routes reach it from a request."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request

from event_service.api.uploads import UploadGrants
from event_service.ledger import Ledger


def keep_state(app: FastAPI, open_ledger: Callable[[], Ledger], admin_token: str | None, monitor_token: str | None,
               close_ledger: bool) -> None:
    """Put what the routes share in ``app.state``. A host may add to ``reader_checks`` (the Airflow plugin adds
    its logged-in users), set ``monitor_clock`` (replaces the wall clock) and ``open_location`` (opens a store)."""
    app.state.open_ledger = open_ledger
    app.state.uploads = UploadGrants(open_ledger)
    app.state.admin_token = admin_token
    app.state.monitor_token = monitor_token  # read-only: the monitoring views, never a task's calls
    app.state.reader_checks = []  # a host's own read access
    app.state.close_ledger = close_ledger


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """On shutdown, close the upload grants' store clients, and the ledger when the app was asked to."""
    yield
    app.state.uploads.close()
    if app.state.close_ledger:
        app.state.open_ledger().close()


def ledger_of(request: Request) -> Ledger:
    """The app's ledger (opened on first use when the app was given an opener)."""
    opened: Ledger = request.app.state.open_ledger()
    return opened


def uploads_of(request: Request) -> UploadGrants:
    """The app's signer of pre-signed uploads."""
    grants: UploadGrants = request.app.state.uploads
    return grants

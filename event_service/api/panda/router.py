"""The PanDA-compatible routes under ``/server/panda/``: the server methods a pilot calls, and its site data.

Method calls need ``Authorization: Bearer <token>`` with the server's PanDA token or its admin token (a
pilot sends it when ``OIDC_AUTH_TOKEN``/``OIDC_AUTH_ORIGIN`` name a file holding it). The queue and storage
descriptions are open: a pilot fetches them with no credentials, and they hold no secret.
"""

from __future__ import annotations

import hmac
import json
import logging
import re
from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, PlainTextResponse, Response

from event_service import settings
from event_service.api.errors import PandaRequestError
from event_service.api.panda.openapi import PANDA_METHOD, PANDA_QUEUE, PANDA_REQUEST
from event_service.api.panda.service import FAILURE, PandaService, PandaSettings
from event_service.api.panda.wire import encode_form, parse_request, wants_json
from event_service.ledger import Ledger
from event_service.ledger.errors import LedgerUnavailableError
from event_service.spec import PANDA_QUEUE_PATTERN

log = logging.getLogger(__name__)

PANDA_PREFIX = "/server/panda"
# PanDA's method names, as the pilot calls them, and the service method each runs.
METHODS: dict[str, Callable[[PandaService, dict[str, Any]], dict[str, Any]]] = {
    "getJob": PandaService.get_job,
    "updateJob": PandaService.update_job,
    "getEventRanges": PandaService.get_event_ranges,
    "updateEventRanges": PandaService.update_event_ranges,
    "checkEventsAvailability": PandaService.check_events_availability,
}
RETRY_AFTER_S = "5"  # what an outage's 503 tells the pilot, as the dispatch routes do
# Version 0 of updateEventRanges carries these reply fields as JSON text, as PanDA's server does.
_JSON_TEXT_V0 = ("Returns", "Command")


def _reply(request: Request, body: dict[str, Any], status_code: int = 200, *, version_0: bool = False) -> Response:
    if version_0:
        body = {key: json.dumps(value) if key in _JSON_TEXT_V0 else value for key, value in body.items()}
    headers = {"Retry-After": RETRY_AFTER_S} if status_code == 503 else None
    if wants_json(request.headers.get("accept", "")):
        return JSONResponse(body, status_code, headers=headers)
    return PlainTextResponse(encode_form(body), status_code, headers=headers,
                             media_type="application/x-www-form-urlencoded")


def _authorized(request: Request, tokens: tuple[str, ...]) -> str | None:
    """None when the bearer token is one of ``tokens``, else why not."""
    if not tokens:
        return f"this server takes no PanDA calls: set {settings.PANDA_TOKEN.name} (or an admin token) to allow pilots"
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return "missing bearer token (a pilot sends it when OIDC_AUTH_TOKEN and OIDC_AUTH_ORIGIN are set)"
    if not any(hmac.compare_digest(token.strip().encode(), known.encode()) for known in tokens):
        return "the bearer token is not this server's PanDA token or admin token"
    return None


def panda_router(open_ledger: Callable[[], Ledger], tokens: tuple[str, ...],
                 settings: PandaSettings | None = None) -> APIRouter:
    """The routes, over the ledger that ``open_ledger`` gives; ``tokens`` are the bearer tokens accepted."""
    router = APIRouter(prefix=PANDA_PREFIX, tags=["panda"])
    services: list[PandaService] = []

    def service() -> PandaService:
        if not services:
            services.append(PandaService(open_ledger(), settings))
        return services[0]

    @router.get("/queuedata/{queue}", responses=PANDA_QUEUE)
    async def queue_data(queue: str) -> JSONResponse:
        """The queue description a pilot reads through ``--queuedata-url``."""
        if not re.fullmatch(PANDA_QUEUE_PATTERN, queue):
            return JSONResponse({"error": f"{queue!r} is not a queue name"}, 404)
        return JSONResponse(await run_in_threadpool(lambda: service().queue_data(queue)))

    @router.get("/schedconfig")
    async def schedconfig() -> JSONResponse:
        """Every served queue's description keyed by queue name (the form of a pilot's LOCAL_AGIS_SCHEDCONF)."""
        return JSONResponse(await run_in_threadpool(lambda: service().schedconfig()))

    @router.get("/storagedata")
    async def storage_data() -> JSONResponse:
        """The storage endpoints a pilot reads through ``--storagedata-url``, keyed by name."""
        return JSONResponse(await run_in_threadpool(lambda: service().storage_data()))

    @router.post("/{method}", operation_id="panda_method", responses=PANDA_METHOD, openapi_extra=PANDA_REQUEST)
    @router.get("/{method}", operation_id="panda_method_get", responses=PANDA_METHOD)
    async def call(method: str, request: Request) -> Response:
        """One PanDA server method: getJob, updateJob, getEventRanges, updateEventRanges, checkEventsAvailability."""
        run = METHODS.get(method)
        if run is None:
            return _reply(request, {"StatusCode": FAILURE, "errorDialog": f"unknown PanDA method {method!r}; "
                                    f"this server has {', '.join(METHODS)}"}, 404)
        refused = _authorized(request, tokens)
        if refused is not None:
            return _reply(request, {"StatusCode": FAILURE, "errorDialog": refused}, 401)
        try:
            fields = parse_request(await request.body(), request.headers.get("content-type", ""),
                                   request.headers.get("content-encoding", ""), dict(request.query_params))
            reply = await run_in_threadpool(run, service(), fields)
        except PandaRequestError as exc:
            log.warning("PanDA %s refused: %s", method, exc)
            return _reply(request, {"StatusCode": FAILURE, "errorDialog": f"{method}: {exc}"}, 400)
        except LedgerUnavailableError as exc:
            log.error("PanDA %s: ledger unavailable: %s", method, exc)
            return _reply(request, {"StatusCode": FAILURE, "errorDialog": "the ledger is unavailable; retry later"},
                          503)
        version_0 = method == "updateEventRanges" and str(fields.get("version", "0")) == "0"
        return _reply(request, reply, version_0=version_0)

    return router

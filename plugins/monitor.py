"""The monitoring page inside Airflow: its entries in the UI, and read access for the users Airflow lets in."""

from __future__ import annotations

import logging
from typing import Any

import jwt
from asgiref.sync import async_to_sync
from starlette.requests import Request

log = logging.getLogger(__name__)

# Relative to Airflow's base URL (the UI resolves them against its <base href>): the page is served by the
# dispatch API mounted under /event-service.
PAGE_HREF = "event-service/monitor/"

EXTERNAL_VIEWS: list[dict[str, Any]] = [
    {
        "name": "Event Service",
        "href": PAGE_HREF,
        "destination": "nav",
        "url_route": "event-service",
        "icon": f"{PAGE_HREF}icon.svg",
        "nav_top_level": True,
    },
    {
        # A tab on every DAG run; for an es_<task> DAG the page shows that task (others: a short note).
        "name": "Event Service",
        "href": PAGE_HREF + "?dag={DAG_ID}&run={RUN_ID}",
        "destination": "dag_run",
        "url_route": "event-service-task",
    },
]


def _presented_tokens(request: Request) -> list[str]:
    """The Airflow JWTs a request carries: an ``Authorization: Bearer`` header, and the UI's ``_token`` cookie."""
    from airflow.api_fastapi.auth.managers.base_auth_manager import COOKIE_NAME_JWT_TOKEN

    found = []
    scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and credentials.strip():
        found.append(credentials.strip())
    cookie = request.cookies.get(COOKIE_NAME_JWT_TOKEN)
    if cookie and cookie not in found:
        found.append(cookie)
    return found


def airflow_ui_user(request: Request) -> bool:
    """True when the request comes from someone logged in to Airflow's UI whom Airflow's auth manager lets see
    the UI (``AccessView.WEBSITE``). The token is validated by the auth manager: signature, expiry, audience,
    revocation. Used as a reader check of the dispatch API (``app.state.reader_checks``)."""
    tokens = _presented_tokens(request)
    if not tokens:
        return False
    from airflow.api_fastapi.app import get_auth_manager
    from airflow.api_fastapi.auth.managers.models.resource_details import AccessView

    try:
        manager = get_auth_manager()
    except RuntimeError:  # not inside Airflow's API server: nobody is logged in to its UI
        return False
    for token in tokens:
        try:
            user = async_to_sync(manager.get_user_from_token)(token)
        except (jwt.InvalidTokenError, ValueError, KeyError) as exc:
            log.debug("not an Airflow UI session: %s", exc)
            continue
        if manager.is_authorized_view(access_view=AccessView.WEBSITE, user=user):
            return True
    return False

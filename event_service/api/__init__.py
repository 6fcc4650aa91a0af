"""The dispatch API (FastAPI), runnable alone or mounted in Airflow's API server."""

from __future__ import annotations

from event_service.api.app import ADMIN_TOKEN_ENV, DB_ENV, app_from_env, create_app

__all__ = ["ADMIN_TOKEN_ENV", "DB_ENV", "app_from_env", "create_app"]

"""The environment variables the dispatch API and the command line read (no imports: commands start fast)."""

from __future__ import annotations

ADMIN_TOKEN_ENV = "EVENT_SERVICE_ADMIN_TOKEN"
DB_ENV = "EVENT_SERVICE_DB"
TOKEN_ENV = "EVENT_SERVICE_TOKEN"  # a runner's task token

"""HTTP clients for the dispatch API: a worker's (claim, update, heartbeat) and an admin's, with retries."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Sequence
from typing import Any, Self
from urllib.parse import quote

import requests

from event_service.api.errors import DispatchError, DispatchUnavailableError
from event_service.messages import (
    ClaimReply,
    HeartbeatReply,
    RangeInfo,
    RangeUpdate,
    TaskCreated,
    TaskStatus,
    UpdateResult,
    UploadGrant,
    UploadRequest,
)
from event_service.spec import TaskSpec

log = logging.getLogger(__name__)

RETRY_STATUSES = frozenset({502, 503, 504})


class _Client:
    def __init__(self, server: str, token: str, *, timeout_s: float = 30.0, retries: int = 5,
                 backoff_s: float = 0.5) -> None:
        self.base = server.rstrip("/") + "/api/v1"
        self.timeout_s = timeout_s
        self.retries = retries
        self.backoff_s = backoff_s
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Bearer {token}"

    def close(self) -> None:
        self.session.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        url = self.base + path
        for attempt in range(self.retries + 1):
            try:
                response = self.session.request(method, url, json=body, timeout=self.timeout_s)
            except (requests.ConnectionError, requests.Timeout) as exc:
                if attempt == self.retries:
                    raise ConnectionError(f"{method} {url}: no answer after {self.retries + 1} tries: {exc}") from exc
                log.warning("%s %s failed (%s); retrying", method, url, exc)
            else:
                if response.status_code < 400:
                    return response.json()
                if response.status_code not in RETRY_STATUSES or attempt == self.retries:
                    reason = None
                    try:
                        body = response.json()
                        detail = body.get("message") or body.get("detail")
                        reason = body.get("reason")
                    except (ValueError, AttributeError):
                        detail = response.text[:500]
                    kind = DispatchUnavailableError if response.status_code >= 500 else DispatchError
                    raise kind(method, url, response.status_code, detail, reason)
                log.warning("%s %s answered %d; retrying", method, url, response.status_code)
            time.sleep(min(self.backoff_s * 2**attempt, 30.0))
        raise AssertionError("unreachable")

    def health(self) -> dict[str, Any]:
        """The server's liveness answer; ConnectionError when it does not answer."""
        reply: dict[str, Any] = _Client._call(self, "GET", "/health")
        return reply



class DispatchClient(_Client):
    """One worker's connection to one task on a dispatch API server."""

    def __init__(self, server: str, task: str, token: str, **options: Any) -> None:
        super().__init__(server, token, **options)
        self.task = task

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        return super()._call(method, f"/tasks/{self.task}{path}", body)

    def claim(self, worker: str, n: int, host: str | None = None, claim_id: str | None = None) -> ClaimReply:
        """Claim up to ``n`` ranges. Retries resend the same ``claim_id`` (one is made when none is given), so
        a claim whose reply was lost is answered again with its ranges rather than with new ones."""
        body = {"worker": worker, "n": n, "host": host, "claim_id": claim_id or uuid.uuid4().hex}
        return ClaimReply.model_validate(self._call("POST", "/claim", body))

    def update(self, worker: str, updates: Sequence[RangeUpdate]) -> list[UpdateResult]:
        body = {"worker": worker, "updates": [u.model_dump(mode="json", exclude_none=True) for u in updates]}
        reply = self._call("POST", "/update", body)
        return [UpdateResult.model_validate(item) for item in reply["results"]]

    def heartbeat(self, worker: str, host: str | None = None, restarted: bool = False) -> HeartbeatReply:
        body = {"worker": worker, "host": host, "restarted": restarted}
        return HeartbeatReply.model_validate(self._call("POST", "/heartbeat", body))

    def grant_upload(self, request: UploadRequest) -> UploadGrant:
        return UploadGrant.model_validate(self._call("POST", "/uploads", request.model_dump(mode="json")))

    def status(self) -> TaskStatus:
        return TaskStatus.model_validate(self._call("GET", ""))

    def range_info(self, range_id: str) -> RangeInfo:
        return RangeInfo.model_validate(self._call("GET", f"/ranges/{quote(range_id, safe='')}"))

    def spec(self) -> TaskSpec:
        return TaskSpec.parse(self._call("GET", "/spec"), f"spec of task {self.task!r} from the server")


class AdminClient(_Client):
    """The admin's connection: create, list and cancel tasks."""

    def create_task(self, spec: TaskSpec) -> TaskCreated:
        return TaskCreated.model_validate(self._call("POST", "/tasks", spec.model_dump(mode="json")))

    def tasks(self) -> list[TaskStatus]:
        return [TaskStatus.model_validate(item) for item in self._call("GET", "/tasks")]

    def cancel(self, task: str) -> TaskStatus:
        return TaskStatus.model_validate(self._call("POST", f"/tasks/{task}/cancel"))

"""Errors of the dispatch API (its client, pre-signed uploads, PanDA endpoints), each an EventServiceError."""

from __future__ import annotations

from typing import Any

from event_service.errors import EventServiceError

# -- the HTTP client -----------------------------------------------------------------------------------------

class DispatchError(EventServiceError, RuntimeError):
    """The dispatch API refused a request; carries the HTTP status and the server's explanation."""

    def __init__(self, method: str, url: str, status: int, detail: Any, reason: str | None = None) -> None:
        self.method, self.url, self.status, self.detail, self.reason = method, url, status, detail, reason
        super().__init__(f"{method} {url} -> HTTP {status}: {detail}")

    @property
    def token_revoked(self) -> bool:
        """The task was cancelled, which revoked its token: a worker stops."""
        return self.status == 403 and self.reason == "token_revoked"


class DispatchUnavailableError(DispatchError, ConnectionError):
    """The server kept answering 5xx (its database down, say): as for a lost connection, retry later."""


# -- pre-signed uploads --------------------------------------------------------------------------------------

class UploadRefusedError(EventServiceError, PermissionError):
    """The worker may not upload this output now (it does not hold the range, or the task has no such store)."""


class NoPresignedUploadsError(EventServiceError, ValueError):
    """The task's store cannot sign uploads (a local directory, XRootD): runners need their own access to it."""


# -- the PanDA endpoints -------------------------------------------------------------------------------------

class PandaRequestError(EventServiceError, ValueError):
    """A PanDA request is malformed or names what does not exist; the text says which field and why."""


class UnservableStoreError(EventServiceError, ValueError):
    """A task's object store is of a kind a PanDA pilot cannot upload to."""

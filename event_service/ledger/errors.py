"""Errors raised by the ledger, each an EventServiceError and the builtin that fits."""

from __future__ import annotations

from event_service.errors import EventServiceError


class TaskNotFoundError(EventServiceError, KeyError):
    """The ledger has no task of that name."""

    def __init__(self, task: str) -> None:
        super().__init__(task)
        self.task = task

    def __str__(self) -> str:
        return f"no task named {self.task!r} in the ledger"


class RangeNotFoundError(EventServiceError, KeyError):
    """An event range id is not part of the task it was reported for."""

    def __init__(self, task: str, range_ids: list[str]) -> None:
        super().__init__(task, range_ids)
        self.task = task
        self.range_ids = range_ids

    def __str__(self) -> str:
        shown = ", ".join(repr(r) for r in self.range_ids[:5])
        more = f" and {len(self.range_ids) - 5} more" if len(self.range_ids) > 5 else ""
        return f"task {self.task!r} has no event range {shown}{more}"


class TaskExistsError(EventServiceError, ValueError):
    """A task of that name already exists in the ledger."""

    def __init__(self, task: str) -> None:
        super().__init__(task)
        self.task = task

    def __str__(self) -> str:
        return f"a task named {self.task!r} already exists in the ledger"


class LedgerURLError(EventServiceError, ValueError):
    """A ledger database URL the ledger cannot use (not a URL, another database, a missing SQLite folder)."""


class LedgerSchemaError(EventServiceError, RuntimeError):
    """The database holds a ledger written by an incompatible version of this package."""


class LedgerUnavailableError(EventServiceError, ConnectionError):
    """The ledger database could not be reached or kept failing after retries."""


class TokenRejectedError(EventServiceError, PermissionError):
    """A task token that does not open the task it was presented for: wrong, or revoked by a cancel."""

    def __init__(self, task: str, revoked: bool) -> None:
        super().__init__(task, revoked)
        self.task = task
        self.revoked = revoked

    def __str__(self) -> str:
        if self.revoked:
            return f"task {self.task!r} was cancelled: its token is revoked"
        return f"the token is not valid for task {self.task!r}"


class _Conflict(EventServiceError, RuntimeError):
    """A row changed between reading it and writing it; the transaction is run again."""

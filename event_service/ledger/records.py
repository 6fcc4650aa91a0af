"""What the ledger hands out about tasks and outputs: immutable records, and how task tokens are stored."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from event_service.statuses import RangeStatus


@dataclass(frozen=True, slots=True)
class RangeOutput:
    """A range's output and where its events sit in the task's inputs (entries first..last of file N)."""

    range_id: str
    file_number: int
    lfn: str
    first_event: int
    last_event: int
    status: RangeStatus
    attempt: int
    key: str
    store: str | None
    adler32: str
    size: int
    member: str | None = None  # the range's file inside ``key`` when that is an archive of several ranges

    @property
    def events(self) -> int:
        return self.last_event - self.first_event + 1


@dataclass(frozen=True, slots=True)
class TaskRecord:
    """The facts about a task that never change after it is created."""

    id: int
    name: str
    token_hash: str
    max_attempts: int
    lease_seconds: int
    n_ranges: int
    n_events: int
    created_at: float
    max_fatal_ranges: int = 0  # fatal ranges tolerated: beyond them a task whose ranges are final is incomplete


def hash_token(token: str) -> str:
    """Tokens are long random strings, so one round of SHA-256 is the right way to store them."""
    return hashlib.sha256(token.encode()).hexdigest()

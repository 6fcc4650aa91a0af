"""The ledger's statuses: an event range's (named as PanDA names them) and a task's, with their groups."""

from __future__ import annotations

from enum import StrEnum


class RangeStatus(StrEnum):
    """The event ledger's statuses, named as PanDA names them."""

    READY = "ready"
    SENT = "sent"
    RUNNING = "running"
    FINISHED = "finished"
    DONE = "done"
    MERGED = "merged"
    FAILED = "failed"
    FATAL = "fatal"
    CANCELLED = "cancelled"
    CORRUPTED = "corrupted"


IN_FLIGHT = frozenset({RangeStatus.SENT, RangeStatus.RUNNING})
OPEN = frozenset({RangeStatus.READY, RangeStatus.SENT, RangeStatus.RUNNING})
FINAL = frozenset(
    {RangeStatus.FINISHED, RangeStatus.DONE, RangeStatus.MERGED, RangeStatus.FATAL, RangeStatus.CANCELLED}
)
WITH_OUTPUT = frozenset({RangeStatus.FINISHED, RangeStatus.DONE, RangeStatus.MERGED})


class TaskState(StrEnum):
    """A task as a whole: ranges still open, all final, or cancelled."""

    RUNNING = "running"
    DONE = "done"
    CANCELLED = "cancelled"

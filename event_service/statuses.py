"""The ledger's statuses: an event range's (named as PanDA names them) and a task's, with their groups."""

from __future__ import annotations

from collections.abc import Mapping
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
    """A task as a whole: ranges still open, all final, all final with events missing, or cancelled."""

    RUNNING = "running"
    DONE = "done"
    INCOMPLETE = "incomplete"  # every range final, but more fatal than max_fatal_ranges: events are missing
    CANCELLED = "cancelled"


def task_state(cancelled: bool, counts: Mapping[str, int], max_fatal_ranges: int) -> TaskState:
    """A task's state from its ranges per status (keyed by status value) and its tolerance of fatal ranges."""
    if cancelled:
        return TaskState.CANCELLED
    if any(counts.get(status, 0) for status in OPEN):
        return TaskState.RUNNING
    return TaskState.INCOMPLETE if counts.get(RangeStatus.FATAL, 0) > max_fatal_ranges else TaskState.DONE

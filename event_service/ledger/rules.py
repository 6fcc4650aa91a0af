"""The event-range state machine: what one worker report does to one range, as a pure function."""

from __future__ import annotations

from dataclasses import dataclass, replace

from event_service.messages import RangeUpdate, UpdateVerdict
from event_service.statuses import IN_FLIGHT, OPEN, WITH_OUTPUT, RangeStatus

S = RangeStatus


@dataclass(frozen=True, slots=True)
class RangeRow:
    """The mutable part of a range's ledger row."""

    pk: int
    range_id: str
    status: RangeStatus
    attempt: int
    queue_seq: int
    worker: str | None = None
    lease_expires: float | None = None
    output_key: str | None = None
    output_store: str | None = None
    adler32: str | None = None
    size: int | None = None
    output_member: str | None = None
    cpu_s: float | None = None
    wall_s: float | None = None
    error_code: str | None = None
    error: str | None = None


@dataclass(frozen=True, slots=True)
class Step:
    """One recorded transition; ``worker`` is None when the ledger itself moves the range."""

    from_status: RangeStatus
    to_status: RangeStatus
    worker: str | None
    with_metrics: bool = False


@dataclass(frozen=True, slots=True)
class WorkerHistory:
    """What one worker did to one range before: whether it ever held it, and its last reported status."""

    ever_held: bool = False
    last_status: RangeStatus | None = None


@dataclass(frozen=True, slots=True)
class Decision:
    verdict: UpdateVerdict
    row: RangeRow
    steps: tuple[Step, ...] = ()
    reason: str | None = None
    requeue: bool = False  # the range goes back to ready and needs a new queue position


def holds(row: RangeRow, worker: str, attempt: int | None) -> bool:
    """True when ``worker`` holds the range now (and, if given, for that attempt)."""
    return row.status in IN_FLIGHT and row.worker == worker and attempt in (None, row.attempt)


def _not_held(row: RangeRow, worker: str, attempt: int | None) -> str:
    if row.status in IN_FLIGHT and row.worker == worker:
        return (f"range is {row.status} with {worker!r} for attempt {row.attempt}; this report is for attempt "
                f"{attempt}, an earlier one")
    if row.status in IN_FLIGHT:
        return f"range is {row.status} with worker {row.worker!r} (attempt {row.attempt}), not with {worker!r}"
    if row.status == S.READY:
        return f"range is ready again (its lease expired or it was given back); {worker!r} no longer holds it"
    return f"range is {row.status}; {worker!r} does not hold it"


def fail_or_requeue(row: RangeRow, max_attempts: int, by: str | None, code: str | None, error: str | None,
                    first_step: Step | None) -> Decision:
    """A failed attempt: back to ready while attempts remain, else fatal. Records the failure first."""
    steps = [first_step] if first_step else []
    if row.attempt >= max_attempts:
        target = S.FATAL
        code = code or "attempts_exhausted"
        error = (error + "; " if error else "") + f"no attempts left ({row.attempt} of {max_attempts})"
    else:
        target = S.READY
    steps.append(Step(first_step.to_status if first_step else row.status, target, by))
    new = replace(row, status=target, worker=None, lease_expires=None, error_code=code, error=error,
                  output_key=None, output_store=None, adler32=None, size=None, output_member=None)
    return Decision("accepted", new, tuple(steps), requeue=target == S.READY)


def _decide_finished(row: RangeRow, item: RangeUpdate, worker: str, held: bool, history: WorkerHistory) -> Decision:
    """A ``finished`` report: the output is recorded once; a late one is taken while the range is still open."""
    out = item.output
    assert out is not None  # enforced by RangeUpdate
    if row.status in WITH_OUTPUT:
        if (row.output_key, row.output_store, row.adler32, row.size, row.output_member) == (
                out.key, out.store, out.adler32, out.size, out.member):
            return Decision("duplicate", row, reason="already finished with this output")
        return Decision("rejected", row, reason=(
            f"range is already {row.status} with output {row.output_key!r} (adler32 {row.adler32}, "
            f"{row.size} bytes) from worker {row.worker!r}; the output is not replaced"))
    late = not held
    if late and not (row.status in OPEN and history.ever_held):
        if row.status in OPEN:
            return Decision("rejected", row, reason=f"worker {worker!r} never held this range")
        return Decision("rejected", row, reason=f"range is {row.status}; a finished report comes too late")
    new = replace(row, status=S.FINISHED, worker=worker, lease_expires=None, output_key=out.key,
                  output_store=out.store, adler32=out.adler32, size=out.size, output_member=out.member,
                  cpu_s=item.cpu_s, wall_s=item.wall_s, error_code=None, error=None)
    reason = None
    if late and row.status in IN_FLIGHT and row.worker == worker:
        reason = f"report of attempt {item.attempt} accepted while attempt {row.attempt} runs: its output is kept"
    elif late:
        reason = "late report accepted: the output arrived after the lease had lapsed"
    return Decision("accepted", new, (Step(row.status, S.FINISHED, worker, with_metrics=True),), reason)


def decide(row: RangeRow, item: RangeUpdate, worker: str, *, max_attempts: int, lease_seconds: int,
           now: float, history: WorkerHistory) -> Decision:
    """Apply one worker report to one range; never moves a range backwards or replaces an output."""
    status = item.status
    held = holds(row, worker, item.attempt)

    if row.status == S.CANCELLED:
        return Decision("rejected", row, reason="the task was cancelled; the range is cancelled")
    if item.attempt is not None and item.attempt > row.attempt:
        return Decision("rejected", row, reason=(
            f"attempt {item.attempt} was never handed out: the range is at attempt {row.attempt}"))

    if status == "finished":
        return _decide_finished(row, item, worker, held, history)

    if not held:
        if history.last_status == status:
            return Decision("duplicate", row, reason=f"{worker!r} already reported this range {status}")
        return Decision("rejected", row, reason=_not_held(row, worker, item.attempt))

    if status == "running":
        if row.status == S.RUNNING:
            return Decision("duplicate", row, reason="already running")
        new = replace(row, status=S.RUNNING, lease_expires=now + lease_seconds)
        return Decision("accepted", new, (Step(row.status, S.RUNNING, worker),))

    if status == "ready":
        if row.status != S.SENT:
            return Decision("rejected", row, reason="the range was started; report it failed instead of giving it back")
        new = replace(row, status=S.READY, worker=None, lease_expires=None, attempt=row.attempt - 1)
        return Decision("accepted", new, (Step(S.SENT, S.READY, worker),), requeue=True)

    if status == "fatal":
        new = replace(row, status=S.FATAL, worker=None, lease_expires=None, error_code=item.error_code,
                      error=item.error, cpu_s=item.cpu_s, wall_s=item.wall_s)
        return Decision("accepted", new, (Step(row.status, S.FATAL, worker, with_metrics=True),))

    # failed: one attempt lost; the ledger re-queues the range or, with no attempts left, ends it fatal.
    row = replace(row, cpu_s=item.cpu_s, wall_s=item.wall_s)
    first = Step(row.status, S.FAILED, worker, with_metrics=True)
    return fail_or_requeue(row, max_attempts, None, item.error_code, item.error, first)

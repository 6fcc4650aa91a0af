"""Claim control: the runner's claims of event ranges from a claim thread, and the queue of claimed ranges."""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

from event_service.messages import ClaimedRange
from event_service.statuses import TaskState
from payload_runner.options import RunnerOptions, RunSummary
from payload_runner.reports import ReportControl
from payload_runner.source import RangeSource

log = logging.getLogger(__name__)

FIRST_BACKOFF_S = 0.2  # the wait before claiming again after a claim that brought nothing; doubled each time


class ClaimControl:
    """The runner's claims: when to ask for event ranges and how many (about ``claim_ahead_s`` of work per payload),
    the queue of claimed ranges, the back-off while nothing is ready, and giving the queue back when a drain or an
    object-store outage begins. Claims go out from their own thread, so the loop never waits for the API."""

    def __init__(self, source: RangeSource, options: RunnerOptions, summary: RunSummary, reports: ReportControl,
                 stop: threading.Event, holding: Callable[[], bool]) -> None:
        self.source = source
        self.options = options
        self.summary = summary
        self.reports = reports  # ranges given back go out as reports
        self.stop = stop  # set when the task is cancelled or the runner is idle (a drain)
        self.holding = holding  # whether ranges of this runner are still in a payload, the stage-out or a report
        self.batch = options.batch or 2 * options.workers
        self.range_s: float | None = None  # moving average of a range's time in a payload, hand-over included
        self.queue: deque[ClaimedRange] = deque()
        self.claimer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="claim")
        self.call: Future[tuple[list[ClaimedRange], TaskState]] | None = None  # asked, not answered
        self.claiming = True
        self.task_over = False
        self.drained = False
        self.next_claim = 0.0
        self.backoff = FIRST_BACKOFF_S
        self.last_range_at = time.monotonic()

    @property
    def out(self) -> bool:
        """A claim is out, not answered yet."""
        return self.call is not None

    @property
    def more_to_come(self) -> bool:
        """Ranges are queued, or more may be claimed."""
        return self.claiming or bool(self.queue)

    @property
    def resumable(self) -> bool:
        """Claiming may start again once the object store answers: the task is not over and no drain began."""
        return not self.task_over and not self.drained

    @property
    def report_batch(self) -> int:
        """How many reports wait to be batched: a claim's worth, except when nothing is queued (the task's tail)."""
        return self.batch if self.queue else 0

    def take(self) -> ClaimedRange | None:
        """The next queued range, if any."""
        return self.queue.popleft() if self.queue else None

    def adapt_batch(self, seconds: float) -> None:
        """Claim about ``claim_ahead_s`` of work per payload: short ranges in larger batches, fewer calls.

        At least two ranges per payload process (one running, one waiting), at most ``max_batch``, and never
        more than a tenth of the lease ahead, so claimed ranges do not sit in the queue for long."""
        self.range_s = seconds if self.range_s is None else 0.8 * self.range_s + 0.2 * seconds
        if self.options.batch is not None:
            return
        workers = self.options.workers
        ahead = min(self.options.claim_ahead_s, self.source.lease_seconds / 10)
        wanted = math.ceil(workers * ahead / max(self.range_s, 1e-3))
        self.batch = max(2 * workers, min(self.options.max_batch, wanted))

    # -- claiming --------------------------------------------------------------------------------------------

    def step(self, now: float, asked: bool) -> bool:
        """Ask for more ranges from the claim thread, the loop going on meanwhile; take the answer in on a later
        turn. ``asked``: a payload waits for a range. True when the answer queued ranges."""
        if self.call is None:
            self._ask(now, asked)
            return False
        if not self.call.done():
            return False
        call, self.call = self.call, None
        try:
            ranges, state = call.result()
        except (ConnectionError, OSError) as exc:
            log.warning("claim failed: %s; retrying in %.1f s", exc, self.backoff)
            self._back_off(now)
            return False
        return self._claimed(now, ranges, state)

    def _ask(self, now: float, asked: bool) -> None:
        # Claim again when the queue is down to half a batch (one range per payload with the smallest batch).
        if not self.claiming or len(self.queue) > max(self.options.workers, self.batch // 2) or now < self.next_claim:
            return
        if self.summary.claimed == 0 and not asked:
            return  # no lease starts ticking before a payload is up and asks for events
        self.call = self.claimer.submit(self.source.claim, self.batch - len(self.queue))

    def _claimed(self, now: float, ranges: list[ClaimedRange], state: TaskState) -> bool:
        self.summary.claimed += len(ranges)
        if ranges and not self.claiming:  # a drain or a store outage began while the claim was out
            for r in ranges:
                self.reports.release(r)
            return False
        if ranges:
            self.queue.extend(ranges)
            self.reports.expect(ranges)
            self.last_range_at = now
            self.backoff = FIRST_BACKOFF_S
            return True
        self._nothing_ready(now, state)
        return False

    def _nothing_ready(self, now: float, state: TaskState) -> None:
        """A claim brought no range: the task is done or cancelled, the runner idle, or others hold the ranges."""
        if state in (TaskState.DONE, TaskState.INCOMPLETE):
            log.info("task %s is %s: no more ranges", self.source.task, state)
            self.claiming = False
            self.task_over = True
        elif state == TaskState.CANCELLED:
            self.summary.reason = "cancelled"
            self.stop.set()
        elif self.options.idle_timeout_s is not None and now - self.last_range_at > self.options.idle_timeout_s:
            log.info("no range for %.0f s (others hold them); leaving", self.options.idle_timeout_s)
            self.summary.reason = "idle"
            self.stop.set()
        elif self.holding():
            # The ranges "held by others" may be our own, still in a payload or the stage-out: ask again
            # soon, without growing the back-off, once their reports are out.
            self.backoff = FIRST_BACKOFF_S
            self.next_claim = now + self.backoff
        else:
            self._back_off(now)

    def _back_off(self, now: float) -> None:
        self.next_claim = now + self.backoff
        self.backoff = min(self.backoff * 2, self.options.poll_max_s)

    # -- stopping and resuming -------------------------------------------------------------------------------

    def drain(self) -> None:
        """A drain: no more claims; the queued ranges go back to the task."""
        self.claiming = False
        self.drained = True
        self._give_back()

    def pause(self) -> None:
        """The object store is down: claiming stops and the queued ranges go back, until it answers again."""
        if self.claiming:
            self.claiming = False
            self._give_back()

    def resume(self) -> None:
        """The object store answers (again): claiming goes on, unless the task is over or a drain began."""
        if not self.claiming and self.resumable:
            self.claiming = True

    def _give_back(self) -> None:
        while self.queue:
            self.reports.release(self.queue.popleft())

    def close(self) -> None:
        """The claim thread ends."""
        self.claimer.shutdown(wait=True)

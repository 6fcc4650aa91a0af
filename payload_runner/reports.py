"""Report control: the runner's range updates, batched to the dispatch API from a report thread, and its heartbeats."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from event_service.messages import ClaimedRange, OutputRef, RangeUpdate, UpdateResult
from event_service.statuses import IN_FLIGHT
from payload_runner.health import NodeHealth
from payload_runner.manifest import Manifest
from payload_runner.options import RunnerOptions, RunSummary
from payload_runner.source import RangeSource
from payload_runner.stageout import StageOutJob

log = logging.getLogger(__name__)

REPORT_BATCH = 1000  # range updates in one report call, at most


class ReportControl:
    """The runner's reports: range updates wait to be batched and go out from the report thread, the loop going on
    meanwhile; a batch that could not be delivered is kept for the next try. The ledger's answers are counted
    (accepted, refused), an output refused on a range still in flight gives its attempt up, and a reported output's
    local file is removed. The heartbeats that keep the leases go out from a thread of their own."""

    def __init__(self, source: RangeSource, options: RunnerOptions, summary: RunSummary,
                 stop: threading.Event, health: NodeHealth) -> None:
        self.source = source
        self.health = health  # told of every range that ends here: a node failing them all stops
        self.options = options
        self.summary = summary
        self.stop = stop  # set when the task says stop (a drain)
        self.updates: list[RangeUpdate] = []  # waiting to be sent
        self.reporter = ThreadPoolExecutor(max_workers=1, thread_name_prefix="report")
        self.reporting: tuple[list[RangeUpdate], Future[list[UpdateResult]]] | None = None  # sent, not answered
        self.staged: dict[tuple[str, int], Path] = {}  # reported outputs' local files, removed once reported
        self.events_of: dict[str, int] = {}  # a claimed range's events, counted once it is reported finished
        self.manifest: Manifest | None = None
        self.last_flush = time.monotonic()
        self.closing = threading.Event()  # the run is over: the heartbeat thread ends
        self.beat: threading.Thread | None = None

    def open(self, manifest: Manifest) -> None:
        """The run's manifest, where reported outputs are marked."""
        self.manifest = manifest

    @property
    def pending(self) -> bool:
        """Reports wait to be sent, or a report call is out."""
        return bool(self.updates) or self.reporting is not None

    # -- what is reported ------------------------------------------------------------------------------------

    def expect(self, ranges: Iterable[ClaimedRange]) -> None:
        """Claimed ranges: their events count in the summary once they are reported finished."""
        for r in ranges:
            self.events_of[r.range_id] = r.last_event - r.first_event + 1

    def release(self, r: ClaimedRange) -> None:
        """Give a range back to the task, not started (a drain, an object-store outage)."""
        self.updates.append(RangeUpdate(range_id=r.range_id, status="ready", attempt=r.attempt))
        self.summary.released += 1

    def fail(self, range_id: str, attempt: int, code: str, error: str) -> None:
        log.warning("range %s failed (%s): %s", range_id, code, error)
        self.health.failed(code, error)
        self.updates.append(RangeUpdate(range_id=range_id, status="failed", error_code=code[:64],
                                        error=error[:4096], attempt=attempt))

    def finished(self, job: StageOutJob, output: OutputRef) -> None:
        """A stored output: its range is reported finished, its local file removed once that is reported."""
        self.staged[(job.range_id, job.attempt)] = job.path
        self.health.succeeded()
        self.updates.append(RangeUpdate(range_id=job.range_id, status="finished", output=output,
                                        cpu_s=job.cpu_s, wall_s=job.wall_s, attempt=job.attempt))

    def output_failed(self, job: StageOutJob, error: str) -> None:
        """An output that could not be stored: its range fails (it is re-dispatched)."""
        self.fail(job.range_id, job.attempt, "ERR_STAGEOUT", error)
        self.staged[(job.range_id, job.attempt)] = job.path

    # -- sending ---------------------------------------------------------------------------------------------

    def flush(self, batch: int = 0, force: bool = False) -> None:
        """Send the waiting reports, in batches of up to 1,000, once ``batch`` of them wait or the report interval
        is over (``batch`` 0: at once). The loop's own reports go out from the reporter thread while the loop goes
        on feeding payloads; their answers are taken in here, on a later turn. With ``force`` (the end of the run)
        the call waits for them."""
        if self.reporting is not None:
            sent, future = self.reporting
            if not force and not future.done():
                return
            self.reporting = None
            try:
                results = future.result()
            except (ConnectionError, OSError) as exc:
                self._report_failed(sent, exc, force)
                return
            self._reported(sent, results)
        now = time.monotonic()
        if not self.updates or (not force and len(self.updates) < batch
                                and now - self.last_flush < self.options.report_interval_s):
            return
        sent, self.updates = self.updates[:REPORT_BATCH], self.updates[REPORT_BATCH:]
        self.last_flush = now
        if not force:
            self.reporting = (sent, self.reporter.submit(self.source.report, sent))
            return
        try:
            results = self.source.report(sent)
        except (ConnectionError, OSError) as exc:
            self._report_failed(sent, exc, force)
            return
        self._reported(sent, results)
        if self.updates:
            self.flush(force=True)

    def _report_failed(self, sent: list[RangeUpdate], exc: Exception, force: bool) -> None:
        log.warning("reporting %d ranges failed: %s; keeping them for the next try", len(sent), exc)
        self.updates[:0] = sent
        if force:
            self.summary.notes.append(f"{len(sent)} reports could not be delivered: {exc}")

    def _reported(self, sent: list[RangeUpdate], results: list[UpdateResult]) -> None:
        """The ledger's answers to a batch of reports: count them, give up refused outputs, drop reported files."""
        for item, result in zip(sent, results, strict=True):
            if item.status == "finished":
                self._finish_answered(item, result)
            elif item.status == "failed" and result.result == "accepted":
                self.summary.failed += 1
            if item.status in ("finished", "failed"):
                self._drop_output(item.range_id, item.attempt or 0)

    def _finish_answered(self, item: RangeUpdate, result: UpdateResult) -> None:
        if result.result != "rejected":
            self.summary.finished += 1
            self.summary.events += self.events_of.get(item.range_id, 0)
            return
        self.summary.rejected += 1
        log.warning("range %s: %s", item.range_id, result.reason)
        if result.status in IN_FLIGHT:
            # An output refused on a range still in flight: give the attempt up, or the heartbeats would keep the
            # range leased with no output coming (another holder's is refused as is).
            self.updates.append(RangeUpdate(range_id=item.range_id, status="failed", attempt=item.attempt,
                                            error_code="ERR_OUTPUT_REJECTED",
                                            error=(result.reason or "output refused")[:4096]))

    def _drop_output(self, range_id: str, attempt: int) -> None:
        path = self.staged.pop((range_id, attempt), None)
        if path is not None:
            assert self.manifest is not None
            self.manifest.reported(range_id, attempt)
            path.unlink(missing_ok=True)

    # -- heartbeats and the end of the run --------------------------------------------------------------------

    def start_heartbeats(self) -> None:
        self.beat = threading.Thread(target=self._heartbeats, name="heartbeat", daemon=True)
        self.beat.start()

    def stop_heartbeats(self) -> None:
        self.closing.set()
        if self.beat is not None and self.beat.is_alive():
            self.beat.join(timeout=5)

    def _heartbeats(self) -> None:
        while not self.closing.wait(max(1.0, self.source.lease_seconds / 3)):
            try:
                if not self.source.heartbeat():
                    log.info("the task was cancelled; draining")
                    self.summary.reason = "cancelled"
                    self.stop.set()
            except (ConnectionError, OSError) as exc:
                log.warning("heartbeat failed: %s", exc)

    def close(self) -> None:
        """The report thread ends (after a last ``flush(force=True)``)."""
        self.reporter.shutdown(wait=True)

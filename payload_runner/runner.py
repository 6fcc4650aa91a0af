"""The runner (RunJobEvent): claims event ranges, feeds them to payloads over ZeroMQ, stages outputs out."""

from __future__ import annotations

import logging
import math
import signal
import threading
import time
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from types import FrameType
from typing import Any

from event_service.messages import ClaimedRange, RangeUpdate, UpdateResult
from event_service.statuses import IN_FLIGHT, WITH_OUTPUT, TaskState
from payload_runner.channel import ChannelFrameError, RunnerChannel, channel_address
from payload_runner.manifest import Manifest, PendingOutput
from payload_runner.options import RunnerOptions, RunSummary
from payload_runner.processes import PayloadPool, PayloadProcess, clear_payload_folders
from payload_runner.protocol import (
    ErrorReport,
    EventRangeMessage,
    NoMoreEvents,
    OutputReport,
    ProtocolError,
    ReadyForEvents,
    parse_payload_message,
)
from payload_runner.source import RangeSource
from payload_runner.stageout import (
    StageOut,
    StageOutJob,
    StageOutResult,
    StageOutTarget,
)

log = logging.getLogger(__name__)

DRAIN_MESSAGES = 32  # payload messages handled in one turn of the loop, at most
UPLOAD_ROUNDS = 3  # stage-outs of one output (each with its own retries) before its range fails


class Runner:
    """One runner: one task, one worker id, N payload processes sharing one queue of claimed ranges."""

    def __init__(self, source: RangeSource, command: list[str], stores: Sequence[StageOutTarget], workdir: Path,
                 worker_id: str, options: RunnerOptions | None = None) -> None:
        self.source = source
        self.options = options or RunnerOptions()
        self.workdir = workdir.resolve()
        self.worker_id = worker_id
        self.batch = self.options.batch or 2 * self.options.workers
        self.range_s: float | None = None  # moving average of a range's time in a payload, hand-over included
        self.summary = RunSummary(task=source.task, worker=worker_id)
        self.stageout = StageOut(source.task, stores, threads=self.options.stageout_threads,
                                 retries=self.options.upload_retries, backoff_s=self.options.upload_backoff_s)
        self.command = command
        self.queue: deque[ClaimedRange] = deque()
        self.waiting: deque[bytes] = deque()
        self.updates: list[RangeUpdate] = []
        # Claims and reports go out from their own threads (one each), so the loop never waits for the API.
        self.reporter = ThreadPoolExecutor(max_workers=1, thread_name_prefix="report")
        self.claimer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="claim")
        self.reporting: tuple[list[RangeUpdate], Future[list[UpdateResult]]] | None = None  # sent, not answered
        self.claim_call: Future[tuple[list[ClaimedRange], TaskState]] | None = None  # asked, not answered
        self.staged: dict[tuple[str, int], Path] = {}  # reported outputs' local files, removed once reported
        self.deferred: list[tuple[StageOutJob, str]] = []  # outputs whose upload waits for the store to answer
        self.upload_rounds: dict[tuple[str, int], int] = {}
        self.events_of: dict[str, int] = {}
        self.stop = threading.Event()  # a drain was asked for (signal, cancel, idle, failure)
        self.closing = threading.Event()  # the run is over: the heartbeat thread ends
        self.claiming = True
        self.task_over = False
        self.drain_deadline: float | None = None
        self.next_claim = 0.0
        self.claim_backoff = 0.2
        self.last_range_at = time.monotonic()
        self.last_flush = time.monotonic()
        self.next_probe = 0.0

    # -- the loop -----------------------------------------------------------------------------------------

    def run(self) -> RunSummary:
        """Run until the task is done, the runner is told to stop, or it cannot go on; returns the summary."""
        started = time.monotonic()
        self.workdir.mkdir(parents=True, exist_ok=True)
        recovered = Manifest.pending(self.workdir)
        clear_payload_folders(self.workdir, {Path(item.path) for item in recovered})
        Manifest.archive(self.workdir)
        self.manifest = Manifest(self.workdir)
        restore = self._install_signal_handlers()
        beat = threading.Thread(target=self._heartbeats, name="heartbeat", daemon=True)
        try:
            with RunnerChannel(channel_address(self.workdir)) as channel:
                self.channel = channel
                self.pool = PayloadPool(self.command, self.options.workers, self.workdir, channel.address,
                                        self.worker_id, self.options.max_restarts
                                        if self.options.max_restarts is not None else 3 * self.options.workers)
                self._recover(recovered)
                beat.start()
                self.pool.start()
                while self._step():
                    pass
        finally:
            self.closing.set()
            if beat.is_alive():
                beat.join(timeout=5)
            if hasattr(self, "pool"):
                self.pool.stop(grace_s=1.0)
            self.stageout.close(wait=True)
            self._collect(self.stageout.results())
            self._fail_deferred()
            self._flush(force=True)
            self.reporter.shutdown(wait=True)
            self.claimer.shutdown(wait=True)
            self.manifest.close()
            self.source.close()
            restore()
        self.summary.wall_s = time.monotonic() - started
        self.summary.staged_bytes = self.stageout.bytes
        self.summary.upload_s = self.stageout.upload_s
        self.summary.restarts = self.pool.restarts
        return self.summary

    def _step(self) -> bool:
        """One turn of the loop; False when the runner is finished."""
        now = time.monotonic()
        if self.stop.is_set() and self.drain_deadline is None:
            self._drain(now, "drained" if self.summary.reason == "done" else self.summary.reason)
        self._watch_stageout(now)
        self._claim(now)
        # Wait for payload messages, but not long when uploads, reports or a claim are out and nothing is queued.
        tail = (self.stageout.pending or self.reporting or self.claim_call) and not self.queue
        received = self._receive(0.02 if tail else 0.2)
        # Then whatever else has arrived, before the housekeeping below: with short ranges messages come faster
        # than one per turn of the loop would take them.
        handled = 0
        while received is not None:
            self._on_message(*received)
            handled += 1
            if handled == DRAIN_MESSAGES:
                break
            received = self._receive(0.0)
        self._watch_processes(time.monotonic())
        self._collect(self.stageout.results())
        self._flush()
        return not self._finished()

    def _receive(self, timeout_s: float) -> tuple[bytes, str] | None:
        try:
            return self.channel.recv(timeout_s=timeout_s)
        except ChannelFrameError as exc:  # not UTF-8, or not one frame: that payload cannot be trusted
            self._on_bad_frame(exc)
            return None

    def _finished(self) -> bool:
        if self.claiming or self.queue or self.claim_call or (self.stageout.is_down and self.drain_deadline is None):
            return False
        if any(p.in_flight for p in self.pool.processes.values()):
            return False
        if self.pool.processes:
            # Tell idle payloads there is no more work; they exit by themselves.
            for process in self.pool.processes.values():
                if not process.told_no_more and process.peer in self.waiting:
                    self._send(process, NoMoreEvents().dump())
                    process.told_no_more = True
            self.waiting.clear()
            return False
        return self.stageout.pending == 0 and not self.updates and not self.deferred and self.reporting is None

    # -- claiming and handing out ---------------------------------------------------------------------------

    def _adapt_batch(self, seconds: float) -> None:
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

    def _claim(self, now: float) -> None:
        """Ask for more ranges from the claim thread, the loop going on meanwhile; take the answer in on a later
        turn."""
        if self.claim_call is not None:
            if not self.claim_call.done():
                return
            call, self.claim_call = self.claim_call, None
            try:
                ranges, state = call.result()
            except (ConnectionError, OSError) as exc:
                log.warning("claim failed: %s; retrying in %.1f s", exc, self.claim_backoff)
                self._back_off(now)
                return
            self._claimed(now, ranges, state)
            return
        # Claim again when the queue is down to half a batch (one range per payload with the smallest batch).
        if not self.claiming or len(self.queue) > max(self.options.workers, self.batch // 2) or now < self.next_claim:
            return
        if self.summary.claimed == 0 and not self.waiting:
            return  # no lease starts ticking before a payload is up and asks for events
        self.claim_call = self.claimer.submit(self.source.claim, self.batch - len(self.queue))

    def _claimed(self, now: float, ranges: list[ClaimedRange], state: TaskState) -> None:
        self.summary.claimed += len(ranges)
        if ranges and not self.claiming:  # a drain or a store outage began while the claim was out
            for r in ranges:
                self._release(r)
                self.summary.released += 1
            return
        if ranges:
            self.queue.extend(ranges)
            for r in ranges:
                self.events_of[r.range_id] = r.last_event - r.first_event + 1
            self.last_range_at = now
            self.claim_backoff = 0.2
            while self.waiting and self.queue:
                process = self.pool.processes.get(self.waiting.popleft())
                if process is not None:
                    self._hand_out(process)
            return
        if state == TaskState.DONE:
            log.info("task %s is done: no more ranges", self.source.task)
            self.claiming = False
            self.task_over = True
        elif state == TaskState.CANCELLED:
            self.summary.reason = "cancelled"
            self.stop.set()
        elif self.options.idle_timeout_s is not None and now - self.last_range_at > self.options.idle_timeout_s:
            log.info("no range for %.0f s (others hold them); leaving", self.options.idle_timeout_s)
            self.summary.reason = "idle"
            self.stop.set()
        elif self._holding():
            # The ranges "held by others" may be our own, still in a payload or the stage-out: ask again
            # soon, without growing the back-off, once their reports are out.
            self.claim_backoff = 0.2
            self.next_claim = now + self.claim_backoff
        else:
            self._back_off(now)

    def _claims_paused(self) -> bool:
        """Claiming stopped only while the object store is down: it resumes when the store answers again."""
        return self.stageout.is_down and not self.task_over and self.drain_deadline is None

    def _holding(self) -> bool:
        return bool(self.updates or self.reporting or self.stageout.pending or self.deferred
                    or any(p.in_flight for p in self.pool.processes.values()))

    def _back_off(self, now: float) -> None:
        self.next_claim = now + self.claim_backoff
        self.claim_backoff = min(self.claim_backoff * 2, self.options.poll_max_s)

    def _hand_out(self, process: PayloadProcess) -> None:
        if self.queue:
            r = self.queue.popleft()
            message = EventRangeMessage.from_claimed(r.range_id, r.lfn, r.guid, r.first_event, r.last_event,
                                                     pfn=r.url)
            process.in_flight = r
            process.range_started = time.monotonic()
            self._send(process, message.dump())
        elif self.claiming or self._claims_paused():
            # Answered when the next claim brings ranges (after an object-store outage, too).
            self.waiting.append(process.peer)
        else:
            self._send(process, NoMoreEvents().dump())
            process.told_no_more = True

    def _send(self, process: PayloadProcess, text: str) -> None:
        try:
            self.channel.send(process.peer, text)
        except ConnectionError as exc:
            log.warning("cannot reach payload %s: %s", process.identity, exc)

    # -- payload messages -----------------------------------------------------------------------------------

    def _on_bad_frame(self, exc: ChannelFrameError) -> None:
        process = self.pool.processes.get(exc.peer) if exc.peer is not None else None
        if process is None:
            log.warning("unreadable message from unknown payload %r ignored: %s", exc.peer, exc)
            return
        log.error("payload %s: %s", process.identity, exc)
        self._lose(process, "ERR_BAD_MESSAGE", str(exc), kill=True)

    def _on_message(self, peer: bytes, text: str) -> None:
        process = self.pool.processes.get(peer)
        if process is None:
            log.warning("message from unknown payload %r ignored: %.200s", peer, text)
            return
        process.last_heard = time.monotonic()
        try:
            message = parse_payload_message(text)
        except ProtocolError as exc:
            log.error("payload %s: %s", process.identity, exc)
            self._lose(process, "ERR_BAD_MESSAGE", str(exc), kill=True)
            return
        if isinstance(message, ReadyForEvents):
            if process.in_flight is not None:
                self._fail(process.in_flight.range_id, process.in_flight.attempt, "ERR_NO_OUTPUT",
                           f"payload {process.identity} asked for events without reporting this range")
                process.in_flight = None
            self._hand_out(process)
        elif isinstance(message, OutputReport):
            self._on_output(process, message)
        elif isinstance(message, ErrorReport):
            r = process.in_flight
            if r is None or r.range_id != message.range_id:
                log.error("payload %s reported an error for %s, which it does not hold", process.identity,
                          message.range_id)
                return
            self._fail(r.range_id, r.attempt, message.code, message.message or f"payload reported {message.code}")
            process.in_flight = None

    def _on_output(self, process: PayloadProcess, message: OutputReport) -> None:
        r = process.in_flight
        if r is None or r.range_id != message.range_id:
            log.error("payload %s reported output %s for range %s, which it was not given (it holds %s); "
                      "report refused", process.identity, message.path, message.range_id,
                      r.range_id if r is not None else "no range")
            return
        process.in_flight = None
        self._adapt_batch(time.monotonic() - process.range_started)
        # Only a file in the payload's own folder: not the runner's manifest or worker id, not another slot's
        # output, not the payload's log (the runner deletes what it has reported).
        path = process.own_output(message.path)
        if path is None:
            self._fail(r.range_id, r.attempt, "ERR_OUTPUT_OUTSIDE_WORKDIR",
                       f"output path {message.path!r} is outside the payload's folder {process.folder} "
                       "(or is its log)")
            return
        if not path.is_file():
            self._fail(r.range_id, r.attempt, "ERR_OUTPUT_MISSING", f"output file {path} does not exist")
            return
        self.summary.payload_cpu_s += float(message.cpu_s)
        self.summary.payload_wall_s += float(message.wall_s)
        pending = PendingOutput(r.range_id, r.attempt, str(path), float(message.cpu_s), float(message.wall_s))
        self.manifest.output(pending)
        self.stageout.submit(StageOutJob(r.range_id, r.attempt, path, pending.cpu_s, pending.wall_s))

    # -- failures -------------------------------------------------------------------------------------------

    def _fail(self, range_id: str, attempt: int, code: str, error: str) -> None:
        log.warning("range %s failed (%s): %s", range_id, code, error)
        self.updates.append(RangeUpdate(range_id=range_id, status="failed", error_code=code[:64],
                                        error=error[:4096], attempt=attempt))

    def _release(self, r: ClaimedRange) -> None:
        self.updates.append(RangeUpdate(range_id=r.range_id, status="ready", attempt=r.attempt))

    def _lose(self, process: PayloadProcess, code: str, error: str, *, kill: bool) -> None:
        """A payload process is gone or must go: its range failed; restart it within the budget."""
        if kill:
            self.pool.kill(process)
        if process.in_flight is not None:
            self._fail(process.in_flight.range_id, process.in_flight.attempt, code, error)
            process.in_flight = None
        if process.peer in self.waiting:
            self.waiting.remove(process.peer)
        if self.drain_deadline is not None or not (self.claiming or self.queue):
            return
        if self.pool.restart(process) is None and not self.pool.processes:
            self.summary.notes.append(f"payload restart budget ({self.pool.max_restarts}) exhausted: {error}")
            self.summary.reason = "payload_failed"
            self.stop.set()

    def _watch_processes(self, now: float) -> None:
        for process, code in self.pool.exited():
            if process.in_flight is None and process.told_no_more and code == 0:
                continue
            tail = process.tail()
            self._lose(process, "ERR_PAYLOAD_EXIT",
                       f"payload {process.identity} exited with code {code}" + (f"; it said: {tail}" if tail else ""),
                       kill=False)
        for process in self.pool.silent(self.options.silence_s, now):
            self._lose(process, "ERR_PAYLOAD_HANG",
                       f"payload {process.identity} said nothing for {self.options.silence_s:.0f} s; killed", kill=True)
        if self.drain_deadline is not None and now > self.drain_deadline:
            for process in list(self.pool.processes.values()):
                log.warning("payload %s still busy at the end of the grace period; stopping it", process.identity)
                self.pool.kill(process)
                if process.in_flight is not None:
                    self._release(process.in_flight)
                    self.summary.released += 1
                    process.in_flight = None

    def _drain(self, now: float, reason: str) -> None:
        """Stop claiming, give back what has not started, let the payloads finish within the grace period."""
        log.info("draining (%s): %d queued ranges given back, %.0f s grace for ranges in flight", reason,
                 len(self.queue), self.options.grace_s)
        self.summary.reason = reason
        self.claiming = False
        self.drain_deadline = now + self.options.grace_s
        while self.queue:
            self._release(self.queue.popleft())
            self.summary.released += 1
        for peer in list(self.waiting):
            process = self.pool.processes.get(peer)
            if process is not None:
                self._send(process, NoMoreEvents().dump())
                process.told_no_more = True
        self.waiting.clear()
        if self.stageout.is_down:
            self._fail_deferred()  # they cannot be uploaded within the grace period

    # -- stage-out and reports -----------------------------------------------------------------------------

    def _watch_stageout(self, now: float) -> None:
        if not self.stageout.is_down:
            self._retry_deferred()
            if not self.claiming and not self.task_over and self.drain_deadline is None:
                self.claiming = True  # the store is back
            return
        if self.claiming:
            self.claiming = False
            while self.queue:
                self._release(self.queue.popleft())
                self.summary.released += 1
        assert self.stageout.down_since is not None
        if now - self.stageout.down_since > self.options.outage_s:
            self.summary.reason = "stageout_failed"
            self.summary.notes.append(f"object store {self.stageout.store_url} unreachable for "
                                      f"{self.options.outage_s:.0f} s")
            self.stop.set()
        elif now >= self.next_probe:
            self.next_probe = now + 5.0
            if self.stageout.probe() and not self.task_over and self.drain_deadline is None:
                self.claiming = True  # at once: with claiming off and the store up, the runner would end

    def _collect(self, results: list[StageOutResult]) -> None:
        for result in results:
            job = result.job
            if result.output is None:
                error = result.error or "stage-out failed"
                # A store that does not answer: keep the output (its lease stays renewed) and upload it again
                # once the store answers, instead of throwing its CPU away. A refused upload is final.
                if (self.drain_deadline is None and not result.final
                        and self.upload_rounds.get((job.range_id, job.attempt), 0) < UPLOAD_ROUNDS - 1):
                    self.deferred.append((job, error))
                    continue
                self._fail(job.range_id, job.attempt, "ERR_STAGEOUT", error)
                self.staged[(job.range_id, job.attempt)] = job.path
                continue
            self.staged[(job.range_id, job.attempt)] = job.path
            self.updates.append(RangeUpdate(range_id=job.range_id, status="finished", output=result.output,
                                            cpu_s=job.cpu_s, wall_s=job.wall_s, attempt=job.attempt))

    def _retry_deferred(self) -> None:
        """The store answers: upload again the outputs whose stage-out failed."""
        jobs, self.deferred = self.deferred, []
        for job, error in jobs:
            key = (job.range_id, job.attempt)
            self.upload_rounds[key] = self.upload_rounds.get(key, 0) + 1
            self.summary.reuploads += 1
            log.info("uploading the output of %s again (round %d of %d; last time: %s)", job.range_id,
                     self.upload_rounds[key] + 1, UPLOAD_ROUNDS, error)
            self.stageout.submit(job)

    def _fail_deferred(self) -> None:
        """Outputs still waiting for the store fail their ranges, which are re-dispatched."""
        for job, error in self.deferred:
            self._fail(job.range_id, job.attempt, "ERR_STAGEOUT", error)
            self.staged[(job.range_id, job.attempt)] = job.path
        self.deferred.clear()

    def _flush(self, force: bool = False) -> None:
        """Send the waiting reports, in batches of up to 1,000. The loop's own reports go out from the reporter
        thread while the loop goes on feeding payloads; their answers are taken in here, on a later turn. With
        ``force`` (the end of the run) the call waits for them."""
        if self.reporting is not None:
            batch, future = self.reporting
            if not force and not future.done():
                return
            self.reporting = None
            try:
                results = future.result()
            except (ConnectionError, OSError) as exc:
                self._report_failed(batch, exc, force)
                return
            self._reported(batch, results)
        now = time.monotonic()
        # Reports wait to be batched, except when nothing is queued to batch them with (the task's tail).
        if not self.updates or (not force and self.queue and len(self.updates) < self.batch
                                and now - self.last_flush < self.options.report_interval_s):
            return
        batch, self.updates = self.updates[:1000], self.updates[1000:]
        self.last_flush = now
        if not force:
            self.reporting = (batch, self.reporter.submit(self.source.report, batch))
            return
        try:
            results = self.source.report(batch)
        except (ConnectionError, OSError) as exc:
            self._report_failed(batch, exc, force)
            return
        self._reported(batch, results)
        if self.updates:
            self._flush(force=True)

    def _report_failed(self, batch: list[RangeUpdate], exc: Exception, force: bool) -> None:
        log.warning("reporting %d ranges failed: %s; keeping them for the next try", len(batch), exc)
        self.updates[:0] = batch
        if force:
            self.summary.notes.append(f"{len(batch)} reports could not be delivered: {exc}")

    def _reported(self, batch: list[RangeUpdate], results: list[UpdateResult]) -> None:
        """The ledger's answers to a batch of reports: count them, give up refused outputs, drop reported files."""
        for item, result in zip(batch, results, strict=True):
            if item.status == "finished":
                if result.result == "rejected":
                    self.summary.rejected += 1
                    log.warning("range %s: %s", item.range_id, result.reason)
                    if result.status in IN_FLIGHT:
                        # An output refused on a range still in flight: give the attempt up, or the heartbeats
                        # would keep the range leased with no output coming (another holder's is refused as is).
                        self.updates.append(RangeUpdate(range_id=item.range_id, status="failed", attempt=item.attempt,
                                                        error_code="ERR_OUTPUT_REJECTED",
                                                        error=(result.reason or "output refused")[:4096]))
                else:
                    self.summary.finished += 1
                    self.summary.events += self.events_of.get(item.range_id, 0)
            elif item.status == "failed" and result.result == "accepted":
                self.summary.failed += 1
            if item.status in ("finished", "failed"):
                path = self.staged.pop((item.range_id, item.attempt or 0), None)
                if path is not None:
                    self.manifest.reported(item.range_id, item.attempt or 0)
                    path.unlink(missing_ok=True)

    # -- recovery, heartbeats, signals ----------------------------------------------------------------------

    def _recover(self, pending: list[PendingOutput]) -> None:
        """Stage out and report outputs that a previous runner in this work directory left behind."""
        for item in pending:
            path = Path(item.path)
            job = StageOutJob(item.range_id, item.attempt, path, item.cpu_s, item.wall_s)
            info = self.source.range_info(item.range_id)
            if info is not None and info.status in WITH_OUTPUT and (info.worker, info.attempt) != (
                    self.worker_id, item.attempt):
                log.info("output of %s left by a previous run is not needed: worker %s finished the range",
                         item.range_id, info.worker)
                path.unlink(missing_ok=True)
                self.summary.notes.append(f"{item.range_id}: finished by {info.worker}; left-over output dropped")
                continue
            if path.is_file():
                log.info("recovering output of %s (attempt %d) left by a previous run", item.range_id, item.attempt)
                self.manifest.output(item)
                self.stageout.submit(job)
            else:  # moved into a local store before the previous runner could report it, or lost
                stored = self.stageout.stored(job)
                if stored is None:
                    log.warning("recovered output %s of %s is gone; the ledger will re-dispatch the range", path,
                                item.range_id)
                    continue
                log.info("output of %s (attempt %d) left by a previous run is already stored as %s; reporting it",
                         item.range_id, item.attempt, stored.key)
                self.manifest.output(item)
                self.staged[(item.range_id, item.attempt)] = path
                self.updates.append(RangeUpdate(range_id=item.range_id, status="finished", output=stored,
                                                cpu_s=item.cpu_s, wall_s=item.wall_s, attempt=item.attempt))
            self.summary.recovered += 1

    def _heartbeats(self) -> None:
        while not self.closing.wait(max(1.0, self.source.lease_seconds / 3)):
            try:
                if not self.source.heartbeat():
                    log.info("the task was cancelled; draining")
                    self.summary.reason = "cancelled"
                    self.stop.set()
            except (ConnectionError, OSError) as exc:
                log.warning("heartbeat failed: %s", exc)

    def _install_signal_handlers(self) -> Any:
        if threading.current_thread() is not threading.main_thread():
            return lambda: None

        def on_signal(number: int, _frame: FrameType | None) -> None:
            log.info("received %s: draining", signal.Signals(number).name)
            self.stop.set()

        previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)}

        def restore() -> None:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

        return restore

"""The runner (RunJobEvent): claims event ranges, feeds them to payloads over ZeroMQ, stages outputs out."""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType

from event_service.statuses import WITH_OUTPUT
from payload_runner.channel import RunnerChannel, channel_address
from payload_runner.claims import ClaimControl
from payload_runner.errors import ChannelFrameError, ProtocolError
from payload_runner.health import NodeHealth
from payload_runner.manifest import Manifest, PendingOutput
from payload_runner.options import RunnerOptions, RunSummary
from payload_runner.processes import PayloadPool, PayloadProcess, clear_payload_folders
from payload_runner.protocol import (
    ErrorReport,
    EventRangeMessage,
    NoMoreEvents,
    OutputReport,
    ReadyForEvents,
    parse_payload_message,
)
from payload_runner.reports import ReportControl
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
    """One runner: one task, one worker id, N payload processes sharing one queue of claimed ranges.

    The loop (``_step``) moves event ranges between the payload processes and the stage-out; what is claimed and
    when is ``claims`` (a ClaimControl), what is reported and when is ``reports`` (a ReportControl)."""

    def __init__(self, source: RangeSource, command: list[str], stores: Sequence[StageOutTarget], workdir: Path,
                 worker_id: str, options: RunnerOptions | None = None) -> None:
        self.source = source
        self.options = options or RunnerOptions()
        self.workdir = workdir.resolve()
        self.worker_id = worker_id
        self.summary = RunSummary(task=source.task, worker=worker_id)
        self.stageout = StageOut(source.task, stores, threads=self.options.stageout_threads,
                                 retries=self.options.upload_retries, backoff_s=self.options.upload_backoff_s)
        self.command = command
        self.waiting: deque[bytes] = deque()  # payloads that asked for events while none was queued
        self.deferred: list[tuple[StageOutJob, str]] = []  # outputs whose upload waits for the store to answer
        self.upload_rounds: dict[tuple[str, int], int] = {}
        self.stop = threading.Event()  # a drain was asked for (signal, cancel, idle, failure)
        self.health = NodeHealth(self.options.max_consecutive_failures)
        self.reports = ReportControl(source, self.options, self.summary, self.stop, self.health)
        self.claims = ClaimControl(source, self.options, self.summary, self.reports, self.stop, self._holding)
        self.drain_deadline: float | None = None
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
        self.reports.open(self.manifest)
        restore = self._install_signal_handlers()
        try:
            with RunnerChannel(channel_address(self.workdir)) as channel:
                self.channel = channel
                self.pool = PayloadPool(self.command, self.options.workers, self.workdir, channel.address,
                                        self.worker_id, self.options.max_restarts
                                        if self.options.max_restarts is not None else 3 * self.options.workers)
                self._recover(recovered)
                self.reports.start_heartbeats()
                self.pool.start()
                while self._step():
                    pass
        finally:
            self._wind_down()
            restore()
        self.summary.wall_s = time.monotonic() - started
        self.summary.staged_bytes = self.stageout.bytes
        self.summary.upload_s = self.stageout.upload_s
        self.summary.restarts = self.pool.restarts
        return self.summary

    def _wind_down(self) -> None:
        """The end of a run: payloads stopped, the last uploads taken in and reported, the threads ended."""
        self.reports.stop_heartbeats()
        if hasattr(self, "pool"):
            self.pool.stop(grace_s=1.0)
        self.stageout.close(wait=True)
        self._collect(self.stageout.results())
        self._fail_deferred()
        self.reports.flush(force=True)
        self.reports.close()
        self.claims.close()
        self.manifest.close()
        self.source.close()

    def _step(self) -> bool:
        """One turn of the loop; False when the runner is finished."""
        now = time.monotonic()
        if self.stop.is_set() and self.drain_deadline is None:
            self._drain(now, "drained" if self.summary.reason == "done" else self.summary.reason)
        self._watch_stageout(now)
        if self.claims.step(now, asked=bool(self.waiting)):
            self._hand_out_waiting()
        # Wait for payload messages, but not long when uploads, reports or a claim are out and nothing is queued.
        tail = (self.stageout.pending or self.reports.reporting or self.claims.out) and not self.claims.queue
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
        self._check_health()
        self.reports.flush(self.claims.report_batch)
        return not self._finished()

    def _check_health(self) -> None:
        """A broken node stops taking work: its queue goes back, the runner exits with code 5 naming the cause."""
        if self.health.broken is None or self.summary.reason == "node_failed":
            return
        log.error("this node cannot process ranges: %s; giving back its queue and stopping", self.health.broken)
        self.summary.reason = "node_failed"
        self.summary.notes.append(self.health.broken)
        self.stop.set()

    def _receive(self, timeout_s: float) -> tuple[bytes, str] | None:
        try:
            return self.channel.recv(timeout_s=timeout_s)
        except ChannelFrameError as exc:  # not UTF-8, or not one frame: that payload cannot be trusted
            self._on_bad_frame(exc)
            return None

    def _finished(self) -> bool:
        if self.claims.more_to_come or self.claims.out or (self.stageout.is_down and self.drain_deadline is None):
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
        return self.stageout.pending == 0 and not self.deferred and not self.reports.pending

    def _holding(self) -> bool:
        """Ranges of this runner are still in a payload, the stage-out or a report."""
        return bool(self.reports.pending or self.stageout.pending or self.deferred
                    or any(p.in_flight for p in self.pool.processes.values()))

    # -- handing out ----------------------------------------------------------------------------------------

    def _hand_out_waiting(self) -> None:
        """Ranges came in: the payloads that asked while none was queued get theirs."""
        while self.waiting and self.claims.queue:
            process = self.pool.processes.get(self.waiting.popleft())
            if process is not None:
                self._hand_out(process)

    def _hand_out(self, process: PayloadProcess) -> None:
        self._check_health()
        r = self.claims.take() if not self.stop.is_set() else None  # a drain is coming: nothing new starts
        if r is not None:
            message = EventRangeMessage.from_claimed(r.range_id, r.lfn, r.guid, r.first_event, r.last_event,
                                                     pfn=r.url)
            process.in_flight = r
            process.range_started = time.monotonic()
            self._send(process, message.dump())
        elif self.stop.is_set() or self.claims.claiming or (self.stageout.is_down and self.claims.resumable):
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
                self.reports.fail(process.in_flight.range_id, process.in_flight.attempt, "ERR_NO_OUTPUT",
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
            self.reports.fail(r.range_id, r.attempt, message.code,
                              message.message or f"payload reported {message.code}")
            process.in_flight = None

    def _on_output(self, process: PayloadProcess, message: OutputReport) -> None:
        r = process.in_flight
        if r is None or r.range_id != message.range_id:
            log.error("payload %s reported output %s for range %s, which it was not given (it holds %s); "
                      "report refused", process.identity, message.path, message.range_id,
                      r.range_id if r is not None else "no range")
            return
        process.in_flight = None
        self.claims.adapt_batch(time.monotonic() - process.range_started)
        # Only a file in the payload's own folder: not the runner's manifest or worker id, not another slot's
        # output, not the payload's log (the runner deletes what it has reported).
        path = process.own_output(message.path)
        if path is None:
            self.reports.fail(r.range_id, r.attempt, "ERR_OUTPUT_OUTSIDE_WORKDIR",
                              f"output path {message.path!r} is outside the payload's folder {process.folder} "
                              "(or is its log)")
            return
        if not path.is_file():
            self.reports.fail(r.range_id, r.attempt, "ERR_OUTPUT_MISSING", f"output file {path} does not exist")
            return
        self.summary.payload_cpu_s += float(message.cpu_s)
        self.summary.payload_wall_s += float(message.wall_s)
        pending = PendingOutput(r.range_id, r.attempt, str(path), float(message.cpu_s), float(message.wall_s))
        try:
            self.manifest.output(pending)
        except OSError as exc:
            if not self.health.os_error(exc, f"recording the output of {r.range_id}"):
                raise
            self.reports.fail(r.range_id, r.attempt, "ERR_NODE_DISK", self.health.broken or str(exc))
            return
        self.stageout.submit(StageOutJob(r.range_id, r.attempt, path, pending.cpu_s, pending.wall_s))

    # -- payload processes and drains -----------------------------------------------------------------------

    def _lose(self, process: PayloadProcess, code: str, error: str, *, kill: bool) -> None:
        """A payload process is gone or must go: its range failed; restart it within the budget."""
        if kill:
            self.pool.kill(process)
        if process.in_flight is not None:
            self.reports.fail(process.in_flight.range_id, process.in_flight.attempt, code, error)
            process.in_flight = None
        if process.peer in self.waiting:
            self.waiting.remove(process.peer)
        if self.drain_deadline is not None or not self.claims.more_to_come:
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
                    self.reports.release(process.in_flight)
                    process.in_flight = None

    def _drain(self, now: float, reason: str) -> None:
        """Stop claiming, give back what has not started, let the payloads finish within the grace period."""
        log.info("draining (%s): %d queued ranges given back, %.0f s grace for ranges in flight", reason,
                 len(self.claims.queue), self.options.grace_s)
        self.summary.reason = reason
        self.drain_deadline = now + self.options.grace_s
        self.claims.drain()
        for peer in list(self.waiting):
            process = self.pool.processes.get(peer)
            if process is not None:
                self._send(process, NoMoreEvents().dump())
                process.told_no_more = True
        self.waiting.clear()
        if self.stageout.is_down:
            self._fail_deferred()  # they cannot be uploaded within the grace period

    # -- stage-out -----------------------------------------------------------------------------------------

    def _watch_stageout(self, now: float) -> None:
        if not self.stageout.is_down:
            self._retry_deferred()
            self.claims.resume()  # the store is back
            return
        self.claims.pause()
        assert self.stageout.down_since is not None
        if now - self.stageout.down_since > self.options.outage_s:
            self.summary.reason = "stageout_failed"
            self.summary.notes.append(f"object store {self.stageout.store_url} unreachable for "
                                      f"{self.options.outage_s:.0f} s")
            self.stop.set()
        elif now >= self.next_probe:
            self.next_probe = now + 5.0
            if self.stageout.probe():
                self.claims.resume()  # at once: with claiming off and the store up, the runner would end

    def _collect(self, results: list[StageOutResult]) -> None:
        for result in results:
            job = result.job
            if result.output is not None:
                self.reports.finished(job, result.output)
                continue
            error = result.error or "stage-out failed"
            # A store that does not answer: keep the output (its lease stays renewed) and upload it again
            # once the store answers, instead of throwing its CPU away. A refused upload is final.
            if (self.drain_deadline is None and not result.final
                    and self.upload_rounds.get((job.range_id, job.attempt), 0) < UPLOAD_ROUNDS - 1):
                self.deferred.append((job, error))
                continue
            self.reports.output_failed(job, error)

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
            self.reports.output_failed(job, error)
        self.deferred.clear()

    # -- recovery, signals ----------------------------------------------------------------------------------

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
                self.reports.finished(job, stored)
            self.summary.recovered += 1

    def _install_signal_handlers(self) -> Callable[[], None]:
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

"""The runner's loop keeps feeding its payloads while a claim or a report is out (a slow dispatch API)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

from event_service.messages import ClaimedRange, RangeUpdate, UpdateResult
from event_service.spec import InputFile
from event_service.statuses import TaskState
from event_service.stores import LocalStore
from payload_runner.options import RunnerOptions
from payload_runner.runner import Runner
from payload_runner.source import JobFile, JobFileSource
from tests.payload_runner.conftest import RUNNER

NULLSIM = str(RUNNER.with_name("nullsim"))
PROGRESS = 5  # outputs the payloads must deliver while a call is held
HOLD_S = 60.0  # the longest a call is held: a loop blocked in the call never gets there


def outputs_in_manifest(workdir: Path) -> int:
    path = workdir / "manifest.jsonl"
    return path.read_text().count('"event":"output"') if path.exists() else 0


class SlowDispatch(JobFileSource):
    """A job-file source whose second claim and first report each return only once the payloads have delivered
    PROGRESS more outputs: with a loop that waited for the call, they never would."""

    def __init__(self, job: JobFile, report_path: Path, workdir: Path) -> None:
        super().__init__(job, report_path)
        self.workdir = workdir
        self.claims = 0
        self.reports = 0
        self.progress: dict[str, int] = {}
        self.handed = 0  # ranges the claims returned so far
        self.caught_up: dict[str, bool] = {}

    def _hold(self, call: str) -> None:
        # Held until PROGRESS more outputs arrive, or until every range handed out so far has its output: under
        # load this thread may start holding only after the queued ranges were done, which a loop blocked in the
        # call could never have done (it makes the call with ranges still queued).
        start = outputs_in_manifest(self.workdir)
        deadline = time.monotonic() + HOLD_S
        while (outputs_in_manifest(self.workdir) < min(start + PROGRESS, self.handed)
               and time.monotonic() < deadline):
            time.sleep(0.05)
        self.progress[call] = outputs_in_manifest(self.workdir) - start
        self.caught_up[call] = outputs_in_manifest(self.workdir) >= self.handed

    def claim(self, n: int) -> tuple[list[ClaimedRange], TaskState]:
        self.claims += 1
        if self.claims == 2:
            self._hold("claim")
        claimed, state = super().claim(n)
        self.handed += len(claimed)
        return claimed, state

    def report(self, updates: Sequence[RangeUpdate]) -> list[UpdateResult]:
        self.reports += 1
        if self.reports == 1:
            self._hold("report")
        return super().report(updates)


def test_payloads_are_fed_while_a_claim_or_a_report_is_out(evnt: list[InputFile], tmp_path: Path) -> None:
    ranges = [ClaimedRange(range_id=f"loop.1.{n}-{n}", lfn=evnt[0].lfn, guid=evnt[0].guid, url=evnt[0].url,
                           first_event=n, last_event=n, attempt=1) for n in range(60)]
    job = JobFile.model_validate({"task": "loop", "object_store": {"url": (tmp_path / "objects").as_uri()},
                                  "ranges": [r.model_dump() for r in ranges]})
    workdir = tmp_path / "w"
    source = SlowDispatch(job, workdir / "report.json", workdir)
    runner = Runner(source, [NULLSIM], [LocalStore(tmp_path / "objects")], workdir, "w-loop",
                    RunnerOptions(workers=2, batch=20, report_interval_s=0.0))
    summary = runner.run()
    assert (summary.reason, summary.finished, summary.failed) == ("done", 60, 0)
    # The second claim went out with 10 ranges still queued, the first report with many more to come: the
    # payloads went on with them while each call was held.
    for call in ("claim", "report"):
        assert source.progress[call] >= PROGRESS or source.caught_up[call], (source.progress, source.caught_up)

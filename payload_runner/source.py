"""Where a runner gets event ranges and reports them: the dispatch API, or a job file for off-grid tests."""

from __future__ import annotations

import json
import logging
import threading
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from event_service.api.client import DispatchClient
from event_service.api.errors import DispatchError
from event_service.messages import (
    ClaimedRange,
    RangeInfo,
    RangeUpdate,
    UpdateResult,
    UploadGrant,
    UploadRequest,
)
from event_service.spec import (
    ObjectStoreSpec,
    PayloadSpec,
    TaskSpec,
    describe_validation_error,
)
from event_service.statuses import RangeStatus, TaskState
from payload_runner.errors import JobFileError

log = logging.getLogger(__name__)


class RangeSource(Protocol):
    """What the runner needs from whoever hands out ranges."""

    task: str
    lease_seconds: int

    def claim(self, n: int) -> tuple[list[ClaimedRange], TaskState]: ...

    def report(self, updates: Sequence[RangeUpdate]) -> list[UpdateResult]: ...

    def heartbeat(self) -> bool:
        """Renew the leases; False when the task says stop."""
        ...

    def range_info(self, range_id: str) -> RangeInfo | None:
        """The ledger's view of one range, where the source has a ledger."""
        ...

    def close(self) -> None: ...


class ServerSource:
    """Ranges from a dispatch API server, as one worker of one task."""

    def __init__(self, server: str, task: str, token: str, worker: str, host: str | None = None) -> None:
        self.task = task
        self.worker = worker
        self.host = host
        self._client = DispatchClient(server, task, token)
        # Heartbeats come from their own thread, so they get their own HTTP session.
        self._beat_client = DispatchClient(server, task, token)
        # Upload grants come from the stage-out threads: their own session, one request at a time.
        self._grant_client = DispatchClient(server, task, token)
        self._grant_lock = threading.Lock()
        self.lease_seconds = 60
        self._unanswered_claim: str | None = None

    def spec(self) -> TaskSpec:
        return self._client.spec()

    def start(self) -> int:
        """Announce a fresh start: ranges this worker id held in an earlier life go back to the task."""
        return self._client.heartbeat(self.worker, self.host, restarted=True).released

    # A cancelled task's token is revoked: the server then answers 403 "token_revoked", which means stop.

    def claim(self, n: int) -> tuple[list[ClaimedRange], TaskState]:
        # A claim that got no answer may have been made all the same: the next one repeats its id, and the
        # server answers with that claim's ranges (see Ledger.claim) instead of leaving them to lapse.
        claim_id = self._unanswered_claim or uuid.uuid4().hex
        try:
            reply = self._client.claim(self.worker, n, self.host, claim_id)
        except (ConnectionError, OSError):  # DispatchUnavailableError (5xx) too
            self._unanswered_claim = claim_id
            raise
        except DispatchError as exc:
            if exc.token_revoked:
                return [], TaskState.CANCELLED
            raise
        self._unanswered_claim = None
        self.lease_seconds = reply.lease_seconds
        return reply.ranges, reply.state

    def report(self, updates: Sequence[RangeUpdate]) -> list[UpdateResult]:
        try:
            return self._client.update(self.worker, updates)
        except DispatchError as exc:
            if exc.token_revoked:
                return [UpdateResult(range_id=u.range_id, result="rejected", status=RangeStatus.CANCELLED,
                                     reason=str(exc.detail)) for u in updates]
            raise

    def range_info(self, range_id: str) -> RangeInfo | None:
        return self._client.range_info(range_id)

    def heartbeat(self) -> bool:
        try:
            return self._beat_client.heartbeat(self.worker, self.host).command != "stop"
        except DispatchError as exc:
            if exc.token_revoked:
                return False
            raise

    def grant_upload(self, request: UploadRequest) -> UploadGrant:
        """A pre-signed upload from the server, for runners without store credentials."""
        with self._grant_lock:
            return self._grant_client.grant_upload(request)

    def ping(self) -> None:
        """Raise ConnectionError unless the server answers."""
        with self._grant_lock:
            self._grant_client.health()

    def close(self) -> None:
        self._client.close()
        self._beat_client.close()
        self._grant_client.close()


class LedgerSource:
    """Ranges straight from the ledger database, for runners on the ledger's own machine (embedded mode)."""

    def __init__(self, url: str, task: str, worker: str, host: str | None = None) -> None:
        from event_service.ledger import Ledger

        self.task = task
        self.worker = worker
        self.host = host
        self._ledger = Ledger(url, pool_size=2, max_overflow=2)
        self.lease_seconds = self._ledger.task(task).lease_seconds

    def spec(self) -> TaskSpec:
        return self._ledger.task_spec(self.task)

    def start(self) -> int:
        return self._ledger.heartbeat(self.task, self.worker, self.host, restarted=True).released

    def claim(self, n: int) -> tuple[list[ClaimedRange], TaskState]:
        reply = self._ledger.claim(self.task, self.worker, n, self.host)
        return reply.ranges, reply.state

    def report(self, updates: Sequence[RangeUpdate]) -> list[UpdateResult]:
        return self._ledger.update(self.task, self.worker, updates)

    def heartbeat(self) -> bool:
        return self._ledger.heartbeat(self.task, self.worker, self.host).command != "stop"

    def range_info(self, range_id: str) -> RangeInfo | None:
        return self._ledger.range_info(self.task, range_id)

    def close(self) -> None:
        self._ledger.close()


class JobFile(BaseModel):
    """A job file: the ranges to process and where their outputs go, for running without a server."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    task: str = Field(pattern=r"^[a-z0-9_-]{1,64}$")
    payload: PayloadSpec | None = None
    object_store: ObjectStoreSpec
    ranges: list[ClaimedRange] = Field(min_length=1)

    @classmethod
    def load(cls, path: Path) -> JobFile:
        try:
            return cls.model_validate(json.loads(path.read_text(encoding="utf-8")))
        except OSError as exc:
            raise JobFileError(f"{path}: cannot read the job file: {exc.strerror or exc}") from None
        except json.JSONDecodeError as exc:
            raise JobFileError(f"{path}: not JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})") from None
        except ValidationError as exc:
            raise JobFileError(f"{path}: {describe_validation_error(exc)}") from None


class JobFileSource:
    """Ranges from a job file; results go to ``report.json`` beside the work directory's manifest."""

    lease_seconds = 3600

    def __init__(self, job: JobFile, report_path: Path) -> None:
        self.task = job.task
        self._pending = list(job.ranges)
        self._known = {r.range_id: r for r in job.ranges}
        self._status: dict[str, RangeStatus] = {}
        self._results: dict[str, dict[str, object]] = {}
        self._report_path = report_path
        self._lock = threading.Lock()

    def claim(self, n: int) -> tuple[list[ClaimedRange], TaskState]:
        with self._lock:
            taken, self._pending = self._pending[:n], self._pending[n:]
            for r in taken:
                self._status[r.range_id] = RangeStatus.SENT
            return taken, TaskState.RUNNING if taken or self._open() else TaskState.DONE

    def _open(self) -> bool:
        return any(s in (RangeStatus.SENT, RangeStatus.RUNNING) for s in self._status.values())

    def report(self, updates: Sequence[RangeUpdate]) -> list[UpdateResult]:
        results = []
        with self._lock:
            for item in updates:
                if item.range_id not in self._known:
                    raise KeyError(f"job file of task {self.task!r} has no event range {item.range_id!r}")
                status = RangeStatus(item.status)
                if item.status == "ready":
                    self._pending.append(self._known[item.range_id])
                self._status[item.range_id] = status
                self._results[item.range_id] = item.model_dump(mode="json", exclude_none=True)
                results.append(UpdateResult(range_id=item.range_id, result="accepted", status=status))
            self._write()
        return results

    def _write(self) -> None:
        partial = self._report_path.with_name(self._report_path.name + ".partial")
        partial.write_text(json.dumps({"task": self.task, "ranges": self._results}, indent=1))
        partial.replace(self._report_path)

    def heartbeat(self) -> bool:
        return True

    def range_info(self, range_id: str) -> RangeInfo | None:
        return None

    def close(self) -> None:
        with self._lock:
            self._write()

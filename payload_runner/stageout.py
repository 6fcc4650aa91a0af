"""Asynchronous stage-out: a thread pool that uploads outputs with their adler32, retries, and fails over."""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from event_service.messages import OutputRef
from event_service.stores import StoredObject, object_key

log = logging.getLogger(__name__)

FAILURES_BEFORE_FAILOVER = 2


class StageOutTarget(Protocol):
    """Where outputs go: an ObjectStore the runner writes with its own credentials, or GrantedUploads."""

    @property
    def url(self) -> str: ...

    def put(self, key: str, path: Path, *, move: bool = False) -> StoredObject:
        """Store ``path`` under ``key`` with its adler32 and size; raise on failure. A PermissionError means
        this upload may not happen at all (not a store failure). With ``move`` the target may take the file
        itself (a rename into a local store), which is then gone from ``path``."""
        ...

    def head(self, key: str) -> object:
        """Used as a probe: raise while the store does not answer."""
        ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class StageOutJob:
    """One payload output to upload: which range and attempt produced it, and the payload's accounting."""

    range_id: str
    attempt: int
    path: Path
    cpu_s: float
    wall_s: float


@dataclass(frozen=True)
class StageOutResult:
    """An upload's outcome: the stored object's reference, or why it could not be stored."""

    job: StageOutJob
    output: OutputRef | None
    error: str | None = None
    final: bool = False  # the upload may not happen at all (refused, not a store failure): do not try again


class StageOut:
    """Uploads outputs in background threads, so the payload never waits for the object store.

    Each upload retries with exponential backoff. After two uploads in a row have failed, the next
    store of the task (its failover store) takes over; with none left, the stage-out is ``down`` until
    a probe of the store succeeds again.
    """

    def __init__(self, task: str, stores: Sequence[StageOutTarget], *, threads: int = 4, retries: int = 3,
                 backoff_s: float = 0.5) -> None:
        if not stores:
            raise ValueError("stage-out needs at least one object store")
        self.task = task
        self._stores = list(stores)
        self._retries = retries
        self._backoff_s = backoff_s
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="stage-out")
        self._results: queue.SimpleQueue[StageOutResult] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._active = 0
        self._consecutive_failures = 0
        self.down_since: float | None = None
        self.pending = 0
        self.bytes = 0
        self.upload_s = 0.0

    @property
    def store(self) -> StageOutTarget:
        return self._stores[self._active]

    @property
    def store_url(self) -> str:
        return self.store.url

    @property
    def is_down(self) -> bool:
        return self.down_since is not None

    def submit(self, job: StageOutJob) -> None:
        with self._lock:
            self.pending += 1
        self._pool.submit(self._upload, job)

    def results(self) -> list[StageOutResult]:
        """The uploads finished since the last call."""
        done = []
        while True:
            try:
                done.append(self._results.get_nowait())
            except queue.Empty:
                return done

    def stored(self, job: StageOutJob) -> OutputRef | None:
        """The output of ``job`` if a store already holds it complete (put, or moved there, before a runner died
        without reporting it), else None."""
        key = object_key(self.task, job.range_id, job.attempt, job.path.name)
        for index, store in enumerate(self._stores):
            try:
                found = store.head(key)
            except Exception as exc:  # not there as far as can be seen: the range is run again
                log.warning("cannot look for %s in %s: %s", key, store.url, exc)
                continue
            if isinstance(found, StoredObject):
                return OutputRef(key=key, adler32=found.adler32, size=found.size,
                                 store=None if index == 0 else store.url)
        return None

    def probe(self) -> bool:
        """Check whether the active store answers again; ends the ``down`` state when it does."""
        try:
            self.store.head(object_key(self.task, "probe", 0, "probe"))
        except Exception as exc:  # any failure means: still down
            log.info("object store %s still unavailable: %s", self.store.url, exc)
            return False
        with self._lock:
            self.down_since = None
            self._consecutive_failures = 0
        log.info("object store %s answers again; stage-out resumes", self.store.url)
        return True

    def close(self, wait: bool = True) -> None:
        self._pool.shutdown(wait=wait, cancel_futures=not wait)
        for store in self._stores:
            store.close()

    def _upload(self, job: StageOutJob) -> None:
        result = StageOutResult(job, None, "stage-out did not run")
        try:
            result = self._upload_with_failover(job)
        except Exception as exc:  # reported with the range, never lost
            log.exception("stage-out of %s failed", job.path)
            result = StageOutResult(job, None, f"{type(exc).__name__}: {exc}")
        finally:
            with self._lock:
                self.pending -= 1
            self._results.put(result)

    def _upload_with_failover(self, job: StageOutJob) -> StageOutResult:
        key = object_key(self.task, job.range_id, job.attempt, job.path.name)
        while True:
            index = self._active
            store = self._stores[index]
            error = ""
            for attempt in range(self._retries):
                started = time.perf_counter()
                try:
                    # Computes adler32 and size, verifies after upload. The runner deletes the output once it is
                    # reported, so a local store on the same file system may take the file as it is (no copy).
                    stored = store.put(key, job.path, move=True)
                except PermissionError as exc:  # this upload may not happen (the range is no longer ours)
                    return StageOutResult(job, None, f"{type(exc).__name__}: {exc}", final=True)
                except Exception as exc:  # retried, then counted against the store
                    error = f"{type(exc).__name__}: {exc}"
                    log.warning("upload of %s to %s failed (try %d of %d): %s", key, store.url, attempt + 1,
                                self._retries, error)
                    if attempt + 1 < self._retries:
                        time.sleep(self._backoff_s * 2**attempt)
                    continue
                with self._lock:
                    self._consecutive_failures = 0
                    self.bytes += stored.size
                    self.upload_s += time.perf_counter() - started
                origin = None if index == 0 else store.url
                return StageOutResult(job, OutputRef(key=key, adler32=stored.adler32, size=stored.size,
                                                     store=origin))
            with self._lock:
                if index != self._active:
                    continue  # another upload failed over meanwhile: try the new store
                self._consecutive_failures += 1
                if self._consecutive_failures >= FAILURES_BEFORE_FAILOVER:
                    if self._active + 1 < len(self._stores):
                        self._active += 1
                        self._consecutive_failures = 0
                        log.error("object store %s keeps failing; failing over to %s", store.url,
                                  self._stores[self._active].url)
                        continue
                    if self.down_since is None:
                        self.down_since = time.monotonic()
                        log.error("object store %s keeps failing and the task names no other; "
                                  "the runner stops claiming until it answers again", store.url)
            return StageOutResult(job, None, f"stage-out to {store.url} failed after {self._retries} tries: {error}")

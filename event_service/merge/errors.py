"""Errors raised by the merge, each an EventServiceError and the builtin that fits."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from event_service.errors import EventServiceError

# -- reading range outputs and archives ----------------------------------------------------------------------

class UnreadableOutputError(EventServiceError, ValueError):
    """A range output is not a ROOT file with a readable TTree ``events`` of the expected shape."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(path, reason)
        self.path = path
        self.reason = reason

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


class UnsupportedTreeError(EventServiceError, TypeError):
    """A branch of the range outputs is of a kind the default merge cannot write; use ``merge.command``."""


class ArchiveError(EventServiceError, ValueError):
    """An archive output cannot be read or does not hold what the ledger says; the text names both."""


# -- the part merge ------------------------------------------------------------------------------------------

class CorruptedOutputsError(EventServiceError, ValueError):
    """Range outputs of a part failed verification; ``reasons`` maps each range id to why, in event order."""

    def __init__(self, task: str, file_name: str, reasons: Mapping[str, str]) -> None:
        super().__init__(task, file_name, dict(reasons))
        self.task = task
        self.file_name = file_name
        self.reasons = dict(reasons)

    @property
    def range_ids(self) -> list[str]:
        return list(self.reasons)

    def __str__(self) -> str:
        lines = "\n".join(f"  {range_id}: {reason}" for range_id, reason in self.reasons.items())
        return (f"task {self.task!r}, merged file {self.file_name}: {len(self.reasons)} range output(s) "
                f"corrupted; mark them corrupted for re-processing:\n{lines}")


class MergeValidationError(EventServiceError, ValueError):
    """The merged file, read back, does not hold exactly the inputs' events (or not in their order)."""

    def __init__(self, task: str, file_name: str, reason: str) -> None:
        super().__init__(task, file_name, reason)
        self.task = task
        self.file_name = file_name
        self.reason = reason

    def __str__(self) -> str:
        return f"task {self.task!r}, merged file {self.file_name}: validation failed: {self.reason}"


class MissingStoreError(EventServiceError, KeyError):
    """Range outputs live in stores the merge was not given."""

    def __init__(self, task: str, missing: Mapping[str | None, list[str]]) -> None:
        super().__init__(task, dict(missing))
        self.task = task
        self.missing = dict(missing)

    def __str__(self) -> str:
        named = "; ".join(f"{url or 'the task object store (key None)'} holds {', '.join(ids[:3])}"
                          f"{' …' if len(ids) > 3 else ''}" for url, ids in self.missing.items())
        return f"task {self.task!r}: no store given for {named}"


# -- custom merge commands and hadd --------------------------------------------------------------------------

class MergeCommandError(EventServiceError, RuntimeError):
    """The merge command failed: it could not start, exited non-zero, timed out or wrote no output."""

    def __init__(self, command: str, part: str, reason: str, exit_code: int | None = None,
                 stderr_tail: str = "", cancelled: bool = False) -> None:
        super().__init__(command, part, reason, exit_code, stderr_tail)
        self.cancelled = cancelled
        self.command = command
        self.part = part
        self.reason = reason
        self.exit_code = exit_code
        self.stderr_tail = stderr_tail

    def __str__(self) -> str:
        text = f"merge command {self.command!r} for {self.part}: {self.reason}"
        if self.stderr_tail:
            text += f"; end of its stderr:\n{self.stderr_tail}"
        return text


class HaddNotFoundError(EventServiceError, FileNotFoundError):
    """No ``hadd`` program was found where it is looked up."""


# -- certification -------------------------------------------------------------------------------------------

class ReferenceSetError(EventServiceError, ValueError):
    """The task's reference set cannot be read or is not a validation set; names the URL and why."""


# -- registration in normal storage and the catalog ----------------------------------------------------------

class StoredFileExistsError(EventServiceError, FileExistsError):
    """Normal storage already holds a different file under the merged file's name; it is not overwritten."""

    def __init__(self, location: str, expected: tuple[str, int], found: tuple[str, int]) -> None:
        super().__init__(location, expected, found)
        self.location = location
        self.expected = expected
        self.found = found

    def __str__(self) -> str:
        return (f"{self.location} already exists with adler32 {self.found[0]} and {self.found[1]} bytes; the "
                f"merged file has adler32 {self.expected[0]} and {self.expected[1]} bytes; not overwritten")


class StorageWriteError(EventServiceError, OSError):
    """The merged file could not be written to normal storage, even after retries."""


class CatalogConflictError(EventServiceError, ValueError):
    """The catalog already holds a different row for the same (dataset, file name), or a file of the task
    that covers some of the same ranges."""


class MergedStateError(EventServiceError, RuntimeError):
    """After registration some of the file's ranges are not ``merged`` in the ledger (they changed meanwhile)."""


class IncompletePartError(EventServiceError, ValueError):
    """The merged file lacks ranges of its part that may still get an output: registering it now would leave
    their events out of the data record for good."""

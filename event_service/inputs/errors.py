"""Errors of the task inputs (the input check, generated inputs), each an EventServiceError and a builtin."""

from __future__ import annotations

from event_service.errors import EventServiceError


class InputCheckError(EventServiceError, ValueError):
    """Inputs of a task cannot be used; ``problems`` maps ``inputs.<n> (<lfn>)`` to the reason."""

    def __init__(self, task: str, problems: dict[str, str], total: int) -> None:
        super().__init__(task, problems, total)
        self.task = task
        self.problems = problems
        self.total = total

    def __str__(self) -> str:
        lines = "\n".join(f"  {where}: {why}" for where, why in self.problems.items())
        return f"task {self.task!r}: {len(self.problems)} of {self.total} inputs cannot be used:\n{lines}"


class InputGenerationError(EventServiceError, ValueError):
    """The inputs asked of make-input cannot be written: a bad number of events, files or seed, or a folder in the
    way; the message says which."""

"""The error of the event-service command's subcommands: an EventServiceError with the exit code to end with."""

from __future__ import annotations

from event_service.errors import EventServiceError


class CommandError(EventServiceError, RuntimeError):
    """A command cannot go on: one line for stderr and the exit code."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code

"""Errors raised by the worker and its payloads, each an EventServiceError and the builtin that fits."""

from __future__ import annotations

from event_service.errors import EventServiceError

_SHOWN = 200  # characters of a malformed message that a ProtocolError quotes


# -- the runner ----------------------------------------------------------------------------------------------

class RunnerSetupError(EventServiceError, ValueError):
    """The runner cannot start as asked: no payload command or program, or an upload mode the task's stores or the
    options do not allow; the message says what to change."""


class JobFileError(EventServiceError, ValueError):
    """A job file cannot be read, is not JSON, or is not a job (the message names the file and the field)."""


class UploadNotGrantedError(EventServiceError, PermissionError):
    """The dispatch API refused to sign an upload (the range is no longer held, say): not the store's fault."""


# -- the channel and the payload protocol --------------------------------------------------------------------

class ChannelError(EventServiceError, ConnectionError):
    """The channel could not bind, connect or deliver; the text names the address and the peer."""


class ChannelClosedError(EventServiceError, ValueError):
    """An operation on a channel that was already closed."""


class ChannelFrameError(EventServiceError, ValueError):
    """A message arrived in an unexpected shape (frame count, not UTF-8); ``peer`` is who sent it."""

    def __init__(self, text: str, peer: bytes | None = None) -> None:
        super().__init__(text)
        self.peer = peer


class ProtocolError(EventServiceError, ValueError):
    """A payload-protocol message is malformed; the text quotes the message (shortened when huge)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(reason, message)
        self.reason = reason
        self.message = message

    def __str__(self) -> str:
        return f"{self.reason}: {quote_message(self.message)}"


def quote_message(message: str) -> str:
    """``repr`` of a message, cut to its first 200 characters with the full length said when longer."""
    if len(message) <= _SHOWN:
        return repr(message)
    return f"{message[:_SHOWN]!r}… ({len(message)} characters)"


# -- the payloads --------------------------------------------------------------------------------------------

class InputUnreadableError(EventServiceError, OSError):
    """The input file named by a range cannot be opened as a generator file; toysim stops."""


class RangeFailure(EventServiceError, RuntimeError):
    """One range could not be processed; reported to the runner as ``code`` and toysim goes on."""

    def __init__(self, code: str, text: str) -> None:
        super().__init__(text)
        self.code = code
        self.text = text


class NullsimInputError(EventServiceError, ValueError):
    """A merge input is not a nullsim output, or does not continue the events of the one before it."""

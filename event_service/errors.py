"""The error family: EventServiceError, the base of every error this project raises, and the cross-cutting errors."""

from __future__ import annotations


class EventServiceError(Exception):
    """Every error this project raises on purpose. Each one also subclasses the builtin that fits (``ValueError``,
    ``KeyError``, ``OSError``, …), so callers may catch either; its message is one line for a user (or a few, for
    a list of problems). The errors of a package live in its ``errors`` module (``event_service.ledger.errors``,
    ``event_service.stores.errors``, ``event_service.merge.errors``, ``event_service.api.errors``,
    ``event_service.inputs.errors``, ``event_service.cli.errors``, ``payload_runner.errors``)."""


class SpecError(EventServiceError, ValueError):
    """A task spec is malformed; the message names the source and the offending field."""


class StorageURLError(EventServiceError, ValueError):
    """A storage URL is malformed, or of a scheme not taken where it is given; the message says what is wrong."""

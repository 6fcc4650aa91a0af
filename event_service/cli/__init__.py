"""The ``event-service`` command: its subcommands (serve, tasks, status, create, cancel, make-input) and the demos."""

from __future__ import annotations

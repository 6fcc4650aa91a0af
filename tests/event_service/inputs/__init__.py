"""Tests of event_service.inputs."""

from __future__ import annotations

"""Tests of the payload_runner package."""

from __future__ import annotations

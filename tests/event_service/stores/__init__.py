"""Tests of the object stores."""

from __future__ import annotations

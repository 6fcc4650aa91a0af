"""Task inputs: generator-like input files for demos and tests, and the check of a task's inputs before creation."""

from __future__ import annotations

"""The merge: plan, stage-in, reading range outputs, writing, the part merge, custom command, hadd, certification,
completion, registration in normal storage and the catalog, cleanup."""

from __future__ import annotations

"""Object stores for range outputs: one interface, a backend per kind of store."""

from __future__ import annotations

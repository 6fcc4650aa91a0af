"""The dispatch API: its FastAPI app (``app``), its routers (monitor, PanDA) and the HTTP client (``client``)."""

from __future__ import annotations

"""The worker side: pulls event ranges from the dispatch API and reports them; no Airflow imports."""

from __future__ import annotations

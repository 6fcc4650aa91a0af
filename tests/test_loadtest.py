"""The load test (benchmarks/loadtest.py) in its smoke mode: it runs end to end and reports, with no errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.bench
def test_load_test_runs_in_smoke_mode(pg_server: str) -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "loadtest.py"), "--server", pg_server, "--clients", "30",
         "--duration", "4", "--baseline-cycles", "10", "--api-workers", "1", "--lease", "6"],
        capture_output=True, text=True, timeout=300, check=False, cwd=ROOT)
    assert done.returncode == 0, f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    lines = done.stdout.splitlines()
    result = json.loads(next(line for line in lines if line.startswith("loadtest ")).removeprefix("loadtest "))
    assert result["load"]["errors"] == {} and result["baseline"]["errors"] == {}
    assert result["ledger_consistent"] is True
    for part in ("baseline", "load"):
        assert {call: c["count"] > 0 for call, c in result[part]["calls"].items()} == \
            {"claim": True, "update": True, "heartbeat": True}
    assert result["load"]["ranges_finished"] > 0 and result["connections"]["max"] > 0
    printed = "\n".join(lines)
    for figure in ("p50", "p99", "PostgreSQL connections", "CPU over", "commits/s", "errors: none"):
        assert figure in printed

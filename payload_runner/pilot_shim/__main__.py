"""Print the folder for a PanDA pilot's PYTHONPATH and HARVESTER_WORKDIR (``python -m payload_runner.pilot_shim``)."""

from __future__ import annotations

from payload_runner.pilot_shim import SHIM_DIR

print(SHIM_DIR)

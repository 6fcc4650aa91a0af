"""What an unmodified PanDA pilot needs to run this project's payloads: a yampl stand-in and a launcher.

Put this folder on the pilot's ``PYTHONPATH`` (so ``import yampl`` finds the stand-in) and name it as
``HARVESTER_WORKDIR`` (so the pilot copies the launcher ``eventservice-payload`` into the job directory
instead of downloading it). ``python -m payload_runner.pilot_shim`` prints the folder.
"""

from __future__ import annotations

from pathlib import Path

SHIM_DIR = Path(__file__).resolve().parent
LAUNCHER = "eventservice-payload"
CHANNEL_MARKER = "PILOT_EVENTRANGECHANNEL"

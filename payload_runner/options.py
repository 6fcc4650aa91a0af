"""What a runner is told to do (its options) and what it says when it is done (its summary and exit code)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

# 5: the node is broken (every range fails here, or its disk refuses writes); its queue went back to the ledger.
EXIT_CODES = {"done": 0, "cancelled": 0, "drained": 0, "idle": 0, "stageout_failed": 3, "payload_failed": 4,
              "node_failed": 5}


@dataclass
class RunnerOptions:
    """How a runner behaves; the defaults suit a grid node."""

    workers: int = 1
    batch: int | None = None  # ranges claimed at a time, fixed; None: adapted to how long ranges take
    claim_ahead_s: float = 2.0  # adaptive claims: about this many seconds of work per payload process
    max_batch: int = 100  # adaptive claims: at most this many ranges at a time
    idle_timeout_s: float | None = None  # exit when no range came for this long while others hold them
    silence_s: float = 600.0  # kill a payload that holds a range and says nothing for this long
    grace_s: float = 30.0  # on a drain, how long in-flight ranges may still finish
    max_restarts: int | None = None  # payload restarts after crashes; default 3 per payload process
    stageout_threads: int = 4
    upload_retries: int = 3
    upload_backoff_s: float = 0.5
    report_interval_s: float = 1.0
    outage_s: float = 600.0  # give up when the object store stays unreachable for this long
    poll_max_s: float = 10.0  # longest wait between claims while other workers hold the ranges
    max_consecutive_failures: int = 5  # ranges failed in a row with no success: the node is broken, stop


@dataclass
class RunSummary:
    """What one run of the runner did."""

    task: str
    worker: str
    reason: str = "done"
    claimed: int = 0
    finished: int = 0
    failed: int = 0
    released: int = 0
    rejected: int = 0
    recovered: int = 0
    events: int = 0
    payload_cpu_s: float = 0.0
    payload_wall_s: float = 0.0
    wall_s: float = 0.0
    staged_bytes: int = 0
    upload_s: float = 0.0
    restarts: int = 0
    reuploads: int = 0  # outputs kept after a failed stage-out (an object-store outage) and uploaded again
    notes: list[str] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.reason]

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "exit_code": self.exit_code}

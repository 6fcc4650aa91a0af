"""Is this node broken? Consecutive failed ranges with no success, or a full or read-only disk, stop the runner."""

from __future__ import annotations

import errno
import os
import re

# A full disk, a quota or a read-only file system: no range can succeed here, whatever the range.
DISK_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS})
DISK_SIGNS = re.compile("|".join(re.escape(os.strerror(number)) for number in sorted(DISK_ERRNOS))
                        + r"|\bENOSPC\b|\bEDQUOT\b|\bEROFS\b", re.IGNORECASE)
# Codes that say nothing about the node: the store or the dispatch API is at fault, or the range was taken away.
NOT_THE_NODE = frozenset({"ERR_STAGEOUT"})
DEFAULT_MAX_CONSECUTIVE_FAILURES = 5


def disk_problem(text: str) -> str | None:
    """The disk error named in a message (``No space left on device``, …), or None."""
    found = DISK_SIGNS.search(text)
    return found.group(0) if found else None


class NodeHealth:
    """Counts the runner's ranges as they end: ``broken`` names the cause once the node should stop taking work."""

    def __init__(self, max_consecutive_failures: int = DEFAULT_MAX_CONSECUTIVE_FAILURES) -> None:
        if max_consecutive_failures < 1:
            raise ValueError(f"max_consecutive_failures must be >= 1, got {max_consecutive_failures}")
        self.max_consecutive_failures = max_consecutive_failures
        self.consecutive = 0
        self.codes: list[str] = []  # the codes of the current run of failures
        self.broken: str | None = None

    def succeeded(self) -> None:
        self.consecutive = 0
        self.codes.clear()

    def failed(self, code: str, error: str) -> None:
        """One range failed on this node with ``code`` and ``error``."""
        if self.broken is not None:
            return
        disk = disk_problem(f"{code} {error}")
        if disk is not None:
            self.broken = f"the node's disk refuses writes ({disk}): {error[:300]}"
            return
        if code in NOT_THE_NODE:
            return
        self.consecutive += 1
        self.codes.append(code)
        if self.consecutive >= self.max_consecutive_failures:
            shown = ", ".join(sorted(set(self.codes)))
            self.broken = (f"{self.consecutive} ranges in a row failed here and none succeeded ({shown}; the last: "
                           f"{error[:300]}): a node problem (payload, software, disk, conditions), not range problems")

    def os_error(self, exc: OSError, where: str) -> bool:
        """An error of the runner's own writes; True (and ``broken`` set) when it is a disk problem."""
        if exc.errno in DISK_ERRNOS:
            self.broken = f"the work directory refuses writes ({os.strerror(exc.errno)}) while {where}: {exc}"
            return True
        return False

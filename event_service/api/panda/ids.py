"""PanDA event range ids (``<task>-<PandaID>-<file>-<first event>-<attempt>``) and the ledger's range ids.

The numeric parts: the task's ledger id, the consumer job's PandaID, the input file's number in the task
(1-based), the range's first event as the wire gives it (``startEvent``, 1-based) and the ledger attempt.
The ledger's own id (``<task name>.<file>.<first entry>-<last entry>``, 0-based entries) follows from the
task spec, so a PanDA id maps back without a lookup table.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Self

from event_service.api.errors import PandaRequestError
from event_service.spec import TaskSpec

PANDA_RANGE_ID = re.compile(r"^([0-9]{1,18})-([0-9]{1,18})-([0-9]{1,9})-([0-9]{1,18})-([0-9]{1,9})$")
_LEDGER_RANGE_ID = re.compile(r"^[a-z0-9_-]{1,64}\.([0-9]+)\.([0-9]+)-([0-9]+)$")


@dataclass(frozen=True, slots=True)
class PandaRangeId:
    """One dispatch of one event range to one consumer job."""

    task_id: int
    panda_id: int
    file_number: int
    start_event: int
    attempt: int

    def __str__(self) -> str:
        return f"{self.task_id}-{self.panda_id}-{self.file_number}-{self.start_event}-{self.attempt}"

    @classmethod
    def parse(cls, text: object) -> Self:
        match = PANDA_RANGE_ID.match(text) if isinstance(text, str) else None
        if match is None:
            raise PandaRequestError(f"eventRangeID {text!r} is not <task>-<PandaID>-<file>-<first event>-<attempt> "
                                    "(five numbers joined by '-')")
        task_id, panda_id, file_number, start_event, attempt = map(int, match.groups())
        if file_number < 1 or start_event < 1 or attempt < 1:
            raise PandaRequestError(f"eventRangeID {text!r}: file, first event and attempt count from 1")
        return cls(task_id, panda_id, file_number, start_event, attempt)

    @classmethod
    def from_ledger(cls, task_id: int, panda_id: int, range_id: str, attempt: int) -> Self:
        match = _LEDGER_RANGE_ID.match(range_id)
        if match is None:
            raise ValueError(f"ledger range id {range_id!r} is not <task>.<file>.<first>-<last>")
        return cls(task_id, panda_id, int(match.group(1)), int(match.group(2)) + 1, attempt)

    def ledger_range_id(self, spec: TaskSpec) -> str:
        """The ledger's id of this range in ``spec``'s task; PandaRequestError when the task has no such range."""
        if self.file_number > len(spec.inputs):
            raise PandaRequestError(f"eventRangeID {self}: task {spec.name!r} has {len(spec.inputs)} input files, "
                                    f"not {self.file_number}")
        events = spec.inputs[self.file_number - 1].events
        first = self.start_event - 1
        if first >= events or first % spec.events_per_range:
            raise PandaRequestError(f"eventRangeID {self}: no range of task {spec.name!r} starts at event "
                                    f"{self.start_event} of file {self.file_number}")
        last = min(first + spec.events_per_range, events) - 1
        return f"{spec.name}.{self.file_number}.{first}-{last}"

"""The merge plan: a task's range outputs packed, in event order, into parts of at most N events each."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from event_service.ledger import Ledger, RangeOutput
from event_service.spec import RangePlan, TaskSpec
from event_service.statuses import WITH_OUTPUT

PART_NAME = "{task}.merged._{number:06d}.root"


@dataclass(frozen=True, slots=True)
class MergePart:
    """One merged file to make: its position in the plan, its file name, and its range outputs in event order.

    ``index`` is 0-based (the map index of a mapped Airflow task); the file name counts from 1.
    ``missing`` lists the ranges planned into this part that hold no output (fatal, or taken back for
    re-processing); it is empty unless the plan was made over the task's full range list.
    """

    index: int
    task: str
    file_name: str
    outputs: tuple[RangeOutput, ...]
    missing: tuple[str, ...] = ()

    @property
    def events(self) -> int:
        """Events of the outputs this part merges."""
        return sum(output.events for output in self.outputs)

    @property
    def range_ids(self) -> tuple[str, ...]:
        return tuple(output.range_id for output in self.outputs)


def part_file_name(task: str, index: int) -> str:
    """The file name of the 0-based ``index``-th part of a task: ``<task>.merged._000001.root`` for index 0."""
    if index < 0:
        raise ValueError(f"a part index is >= 0, got {index}")
    return PART_NAME.format(task=task, number=index + 1)


def _event_order(item: RangeOutput | RangePlan) -> tuple[int, int]:
    return item.file_number, item.first_event


def _check_disjoint(task: str, items: Sequence[RangeOutput | RangePlan], what: str) -> None:
    for before, after in zip(items, items[1:], strict=False):  # neighbours
        if before.range_id == after.range_id:
            raise ValueError(f"task {task!r}: range {before.range_id!r} appears twice in the {what}")
        if before.file_number == after.file_number and after.first_event <= before.last_event:
            raise ValueError(
                f"task {task!r}: ranges {before.range_id!r} (entries {before.first_event}-{before.last_event}) and "
                f"{after.range_id!r} (entries {after.first_event}-{after.last_event}) of input file "
                f"{before.file_number} overlap in the {what}")


def _pack(sizes: Sequence[int], max_events_per_file: int) -> list[list[int]]:
    """Positions grouped into parts: a new part when the next item would take the current one over the limit."""
    parts: list[list[int]] = []
    current: list[int] = []
    events = 0
    for position, size in enumerate(sizes):
        if current and events + size > max_events_per_file:
            parts.append(current)
            current, events = [], 0
        current.append(position)
        events += size
    if current:
        parts.append(current)
    return parts


def plan_merge(outputs: Iterable[RangeOutput], task: str, max_events_per_file: int, *,
               ranges: Iterable[RangePlan] | None = None) -> list[MergePart]:
    """Pack range outputs in event order into parts of at most ``max_events_per_file`` events, never splitting
    a range (a range larger than the limit gets a part of its own).

    The plan depends only on its arguments, never on their order, so every mapped merge task recomputes the
    same plan from the same ledger state. With ``ranges`` (the task's full range list,
    ``TaskSpec.event_ranges()``) the parts are cut over every planned range, with or without output, so
    they stay the same when a range loses its output meanwhile (a sibling merge found it corrupted): the
    ranges without output are listed in ``MergePart.missing``, and a part may then hold no output at all.
    """
    if isinstance(max_events_per_file, bool) or not isinstance(max_events_per_file, int) or max_events_per_file < 1:
        raise ValueError(f"max_events_per_file must be an int >= 1, got {max_events_per_file!r}")
    ordered = sorted(outputs, key=_event_order)
    for output in ordered:
        if output.status not in WITH_OUTPUT:
            raise ValueError(f"task {task!r}: range {output.range_id!r} is {output.status.value}, "
                             "not a range holding an output (finished, done or merged)")
    _check_disjoint(task, ordered, "outputs")
    if ranges is None:
        groups = _pack([output.events for output in ordered], max_events_per_file)
        return [MergePart(index, task, part_file_name(task, index), tuple(ordered[p] for p in group))
                for index, group in enumerate(groups)]

    planned = sorted(ranges, key=_event_order)
    _check_disjoint(task, planned, "range list")
    by_id = {output.range_id: output for output in ordered}
    for plan in planned:
        output = by_id.pop(plan.range_id, None)
        if output is not None and (output.file_number, output.first_event, output.last_event) != \
                (plan.file_number, plan.first_event, plan.last_event):
            raise ValueError(
                f"task {task!r}: range {plan.range_id!r} is planned as entries {plan.first_event}-{plan.last_event} "
                f"of input file {plan.file_number}, but its output says entries {output.first_event}-"
                f"{output.last_event} of input file {output.file_number}")
    if by_id:
        raise ValueError(f"task {task!r}: outputs of ranges not in the range list: {', '.join(sorted(by_id))}")
    with_output = {output.range_id: output for output in ordered}
    groups = _pack([plan.events for plan in planned], max_events_per_file)
    return [MergePart(index, task, part_file_name(task, index),
                      tuple(with_output[planned[p].range_id] for p in group if planned[p].range_id in with_output),
                      tuple(planned[p].range_id for p in group if planned[p].range_id not in with_output))
            for index, group in enumerate(groups)]


def plan_task_merge(ledger: Ledger, spec: TaskSpec) -> list[MergePart]:
    """The merge plan of task ``spec.name`` as the ledger holds it now: its range outputs packed into parts of at
    most ``spec.merge.max_events_per_file`` events, cut over the spec's full range list so that the part boundaries
    do not move when a range is redone.

    The one plan of a task: the completion sensor maps the merge over its parts, and every mapped merge finds its
    own part in it, so both compute it here.
    """
    return plan_merge(ledger.outputs(spec.name), spec.name, spec.merge.max_events_per_file,
                      ranges=spec.event_ranges())

"""What the monitoring endpoints answer: read-only views of a task's progress, built from the ledger."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from event_service.statuses import RangeStatus, TaskState


class _View(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TaskSummary(_View):
    """One task's progress: ranges per status, events done and total, current rate, ETA, live workers."""

    task: str
    dag_id: str = Field(description="the Airflow DAG that runs the task (`es_<task>`)")
    state: TaskState
    ranges: int
    counts: dict[RangeStatus, int] = Field(description="ranges per status, every status listed")
    events_total: int
    events_done: int = Field(description="events in ranges with an output (finished, merged, done)")
    events_remaining: int = Field(description="events in ranges not yet final (ready, sent, running, failed, "
                                              "corrupted)")
    events_per_s: float = Field(description="events of ranges finished within the rate window, per second")
    rate_window_s: float = Field(description="the rate window: the last `window_s` seconds, or the task's age "
                                             "when younger")
    eta_s: float | None = Field(description="events remaining / current rate; 0 when none remain; null when the "
                                            "rate is zero or the task is cancelled")
    live_workers: int = Field(description="workers seen within the task's lease length")
    created_at: float
    last_activity: float | None = Field(description="time of the task's latest transition (Unix s)")


class TaskList(_View):
    """Every task of the ledger, oldest first."""

    now: float
    tasks: list[TaskSummary]


class RateBin(_View):
    """Events of ranges that finished in [start, start + bin_s)."""

    start: float
    events: int
    ranges: int
    events_per_s: float = Field(description="events / the part of the bin already elapsed")


class HistogramBin(_View):
    """Values in [low, high); the last bin includes its upper edge; ``high`` null: no upper edge."""

    low: float
    high: float | None
    count: int


class Durations(_View):
    """Wall seconds of the ranges with an output, as reported by their workers, in equal bins from min to max."""

    ranges: int
    min_s: float | None
    max_s: float | None
    mean_s: float | None
    bins: list[HistogramBin]


class CpuEfficiency(_View):
    """CPU / wall seconds of the ranges with an output: overall (sums), and per range in bins of 0.1."""

    ranges: int
    overall: float | None
    bins: list[HistogramBin]


class FailureCount(_View):
    """Failures (a failed or fatal report, a lapsed lease, a corrupted output) with one error code or host."""

    key: str | None = Field(description="the error code or host; null: none recorded")
    failures: int


class AttemptCount(_View):
    """How many ranges were dispatched ``attempts`` times."""

    attempts: int
    ranges: int


class WorkerView(_View):
    """A worker of the task, with its last heartbeat and what it holds and has finished."""

    worker: str
    host: str | None
    first_seen: float
    last_heartbeat: float
    live: bool
    held: int = Field(description="ranges it holds now (sent or running)")
    finished: int = Field(description="ranges it reported finished")


class MergedOutput(_View):
    """A merged file registered in the catalog."""

    dataset: str
    file_name: str
    events: int
    size: int
    adler32: str
    location: str
    first_range: str
    last_range: str
    registered_at: float
    certification: str | None = Field(default=None, description="`certified` or `suspect`; null: not compared")
    validation: str | None = Field(default=None, description="URL of the validation histograms (JSON)")


class TaskDetail(_View):
    """Everything the task page shows."""

    now: float
    summary: TaskSummary
    bin_s: float
    rate: list[RateBin]
    durations: Durations
    cpu_efficiency: CpuEfficiency
    failures: int
    failures_by_code: list[FailureCount]
    failures_by_host: list[FailureCount]
    attempts: list[AttemptCount]
    workers: list[WorkerView]
    outputs: list[MergedOutput]

"""Certification of merged files: validation histograms of their events, compared with a task's reference set.

Every numeric branch of the ``events`` tree but ``event_number`` gets a histogram with one value per event: the
branch itself when it is a scalar (for the reference payload: particles, hits and deposited energy per event),
the mean over the event's entries, ``mean(<branch>)``, when it is jagged (hit energy, layer, position). Entries
of one event are correlated (the hits of one particle), so only per-event values make the test below valid.
Integer branches get one bin per value. The histograms are written as JSON (the *validation set* of the file)
and drawn as one PNG, both beside the merged file.

With a reference set (the validation JSON of a file known to be good), each histogram is filled with the
reference's bins and compared with it by a two-sample chi-square test (unweighted, both normalised, the
under- and overflow as two more bins). The file is ``certified`` when every p-value reaches ``min_p_value``,
else ``suspect``; a histogram of the reference missing from the file makes it suspect too.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath
from typing import Any, Literal

import awkward as ak
import numpy as np
import uproot
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from scipy import stats

from event_service.merge.errors import ReferenceSetError
from event_service.spec import DEFAULT_MIN_P_VALUE, MergeSpec
from event_service.stores import ObjectStore, ObjectStoreError, open_location
from event_service.urls import STORE_SCHEMES, parse_storage_url

TREE = "events"
SKIPPED = frozenset({"event_number"})
FLOAT_BINS = 50
MAX_INTEGER_BINS = 100
STEP_SIZE = "64 MB"
JSON_SUFFIX = ".validation.json"
PNG_SUFFIX = ".validation.png"

Certification = Literal["certified", "suspect"]


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Histogram(_Frozen):
    """One branch's distribution: ``counts`` between ``edges`` (the last bin includes its upper edge)."""

    name: str
    branch: str
    of: Literal["value", "mean"] = Field(description="the branch's value per event, or its mean per event (jagged)")
    edges: list[float] = Field(min_length=2)
    counts: list[int]
    underflow: int = 0
    overflow: int = 0
    entries: int
    mean: float | None = None
    std: float | None = None


class Comparison(_Frozen):
    """A histogram compared with the reference's: chi-square, degrees of freedom, p-value, verdict."""

    name: str
    chi2: float
    ndf: int
    p_value: float
    passed: bool
    note: str | None = None


class Validation(_Frozen):
    """The validation set of one merged file, and its certification when a reference was named."""

    file_name: str
    events: int
    histograms: list[Histogram]
    reference: str | None = None
    min_p_value: float | None = None
    comparisons: list[Comparison] = []
    certification: Certification | None = None

    def histogram(self, name: str) -> Histogram | None:
        return next((h for h in self.histograms if h.name == name), None)


# ------------------------------------------------------------------------------------------------ filling

def _branches(tree: Any) -> dict[str, Literal["value", "mean"]]:
    """The numeric branches to histogram: scalars as they are, jagged ones as their mean per event."""
    found: dict[str, Literal["value", "mean"]] = {}
    for name, branch in tree.items():
        if name in SKIPPED or "/" in name or "." in name:
            continue
        interpretation = branch.interpretation
        if isinstance(interpretation, uproot.interpretation.numerical.AsDtype):
            if interpretation.to_dtype.kind in "iuf" and interpretation.to_dtype.shape == ():
                found[name] = "value"
        elif isinstance(interpretation, uproot.interpretation.jagged.AsJagged):
            content = interpretation.content
            if isinstance(content, uproot.interpretation.numerical.AsDtype) and content.to_dtype.kind in "iuf":
                found[name] = "mean"
    return found


def _chunks(path: Path, kinds: dict[str, Literal["value", "mean"]]) -> Iterator[dict[str, np.ndarray[Any, Any]]]:
    """The per-event values of each branch, a chunk of events at a time (events without entries skipped)."""
    with uproot.open(path) as opened:
        for chunk in opened[TREE].iterate(sorted(kinds), step_size=STEP_SIZE, library="ak"):
            values = {}
            for name, of in kinds.items():
                column = chunk[name]
                if of == "mean":
                    column = ak.drop_none(ak.mean(column, axis=1))
                values[name] = np.asarray(ak.to_numpy(column))
            yield values


def histogram_name(branch: str, of: Literal["value", "mean"]) -> str:
    return branch if of == "value" else f"mean({branch})"


def _edges(values_min: float, values_max: float, integer: bool) -> list[float]:
    if values_min > values_max:  # no entries at all
        return [0.0, 1.0]
    if integer and values_max - values_min + 1 <= MAX_INTEGER_BINS:
        return [float(v) for v in np.arange(values_min - 0.5, values_max + 1.0, 1.0)]
    low, high = (values_min - 0.5, values_max + 0.5) if values_min == values_max or integer else (values_min,
                                                                                                    values_max)
    return [float(v) for v in np.linspace(low, high, FLOAT_BINS + 1)]


def fill_histograms(path: Path, reference: Validation | None = None) -> tuple[int, list[Histogram]]:
    """The events in ``path`` and its histograms, binned as the reference's where it has the branch."""
    with uproot.open(path) as opened:
        if TREE not in opened:
            raise ValueError(f"{path.name} holds no tree {TREE!r} to validate")
        tree = opened[TREE]
        events = int(tree.num_entries)
        kinds = _branches(tree)
    names = sorted(kinds)
    low = {n: np.inf for n in names}
    high = {n: -np.inf for n in names}
    total = {n: 0.0 for n in names}
    squares = {n: 0.0 for n in names}
    entries = {n: 0 for n in names}
    integer = {n: True for n in names}
    for chunk in _chunks(path, kinds):  # first pass: ranges and moments
        for name, values in chunk.items():
            integer[name] = values.dtype.kind in "iu"
            if len(values):
                low[name] = min(low[name], float(values.min()))
                high[name] = max(high[name], float(values.max()))
                total[name] += float(values.sum(dtype=np.float64))
                squares[name] += float(np.square(values, dtype=np.float64).sum())
                entries[name] += len(values)
    edges = {}
    for name in names:
        given = reference.histogram(histogram_name(name, kinds[name])) if reference is not None else None
        edges[name] = given.edges if given is not None else _edges(low[name], high[name], integer[name])
    counts = {n: np.zeros(len(edges[n]) - 1, dtype=np.int64) for n in names}
    under = {n: 0 for n in names}
    over = {n: 0 for n in names}
    for chunk in _chunks(path, kinds):  # second pass: fill
        for name, values in chunk.items():
            bins = np.asarray(edges[name])
            counts[name] += np.histogram(values, bins=bins)[0]
            under[name] += int(np.count_nonzero(values < bins[0]))
            over[name] += int(np.count_nonzero(values > bins[-1]))
    histograms = []
    for name in names:
        n = entries[name]
        mean = total[name] / n if n else None
        std = float(np.sqrt(max(squares[name] / n - mean * mean, 0.0))) if n and mean is not None else None
        histograms.append(Histogram(name=histogram_name(name, kinds[name]), branch=name, of=kinds[name],
                                    edges=edges[name],
                                    counts=[int(c) for c in counts[name]], underflow=under[name],
                                    overflow=over[name], entries=n, mean=mean, std=std))
    return events, histograms


# ------------------------------------------------------------------------------------------------ comparing

def compare(found: Histogram, reference: Histogram, min_p_value: float) -> Comparison:
    """Two-sample chi-square test of two unweighted histograms with the same bins (under/overflow included)."""
    if found.edges != reference.edges:
        return Comparison(name=found.name, chi2=float("inf"), ndf=0, p_value=0.0, passed=False,
                          note="binned differently from the reference")
    ours = np.array([*found.counts, found.underflow, found.overflow], dtype=np.float64)
    theirs = np.array([*reference.counts, reference.underflow, reference.overflow], dtype=np.float64)
    n_ours, n_theirs = ours.sum(), theirs.sum()
    if n_ours == 0 or n_theirs == 0:
        passed = n_ours == n_theirs
        return Comparison(name=found.name, chi2=0.0, ndf=0, p_value=1.0 if passed else 0.0, passed=passed,
                          note=None if passed else "one of the two histograms is empty")
    used = (ours + theirs) > 0
    ours, theirs = ours[used], theirs[used]
    chi2 = float(np.sum((n_theirs * ours - n_ours * theirs) ** 2 / (n_ours * n_theirs * (ours + theirs))))
    ndf = int(used.sum()) - 1
    p_value = float(stats.chi2.sf(chi2, ndf)) if ndf > 0 else 1.0
    return Comparison(name=found.name, chi2=chi2, ndf=ndf, p_value=p_value, passed=p_value >= min_p_value)


def validate(path: Path, reference: Validation | None = None, *, reference_url: str | None = None,
             min_p_value: float = DEFAULT_MIN_P_VALUE) -> Validation:
    """The validation set of the merged file at ``path``, certified against ``reference`` when given."""
    events, histograms = fill_histograms(path, reference)
    if reference is None:
        return Validation(file_name=path.name, events=events, histograms=histograms)
    comparisons = []
    for wanted in reference.histograms:
        found = next((h for h in histograms if h.name == wanted.name), None)
        if found is None:
            comparisons.append(Comparison(name=wanted.name, chi2=float("inf"), ndf=0, p_value=0.0, passed=False,
                                          note="the file has no such branch"))
        else:
            comparisons.append(compare(found, wanted, min_p_value))
    verdict: Certification = "certified" if all(c.passed for c in comparisons) else "suspect"
    return Validation(file_name=path.name, events=events, histograms=histograms, reference=reference_url,
                      min_p_value=min_p_value, comparisons=comparisons, certification=verdict)


# ------------------------------------------------------------------------------------------------ files

def draw(validation: Validation, dest: Path, reference: Validation | None = None) -> Path:
    """All histograms of ``validation`` as one PNG, the reference's (scaled to the same entries) dashed."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    count = max(len(validation.histograms), 1)
    columns = min(3, count)
    rows = (count + columns - 1) // columns
    figure, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.2 * rows), squeeze=False)
    verdicts = {c.name: c for c in validation.comparisons}
    for axis, histogram in zip(axes.flat, validation.histograms, strict=False):
        edges = np.asarray(histogram.edges)
        axis.stairs(histogram.counts, edges, color="tab:blue", label=validation.file_name)
        wanted = reference.histogram(histogram.name) if reference is not None else None
        if wanted is not None and wanted.edges == histogram.edges and sum(wanted.counts):
            scale = sum(histogram.counts) / sum(wanted.counts)
            axis.stairs(np.asarray(wanted.counts) * scale, edges, color="black", linestyle="--",
                        label="reference")
        title = f"{histogram.name} per event"
        if histogram.name in verdicts:
            verdict = verdicts[histogram.name]
            title += f"\np = {verdict.p_value:.3g} " + ("ok" if verdict.passed else "FAILED")
        axis.set_title(title, fontsize=9, color="black" if verdicts.get(histogram.name, None) is None
                       or verdicts[histogram.name].passed else "tab:red")
        axis.tick_params(labelsize=7)
    for axis in list(axes.flat)[len(validation.histograms):]:
        axis.set_visible(False)
    heading = f"{validation.file_name}: {validation.events} events"
    if validation.certification:
        heading += f", {validation.certification}"
    figure.suptitle(heading, fontsize=11)
    figure.tight_layout()
    figure.savefig(dest, format="png", dpi=72, metadata={"Software": None})
    plt.close(figure)
    return dest


def write_validation(path: Path, dest_dir: Path, reference: Validation | None = None, *,
                     reference_url: str | None = None,
                     min_p_value: float = DEFAULT_MIN_P_VALUE) -> tuple[Validation, Path, Path]:
    """Validate the merged file at ``path``; write ``<name>.validation.json`` and ``.png`` into ``dest_dir``."""
    validation = validate(path, reference, reference_url=reference_url, min_p_value=min_p_value)
    dest_dir.mkdir(parents=True, exist_ok=True)
    as_json = dest_dir / f"{path.name}{JSON_SUFFIX}"
    as_json.write_text(validation.model_dump_json(indent=1) + "\n")
    return validation, as_json, draw(validation, dest_dir / f"{path.name}{PNG_SUFFIX}", reference)


def parse_validation(text: str | bytes, where: str) -> Validation:
    """A validation set from its JSON; ReferenceSetError naming ``where`` and the first problem otherwise."""
    try:
        return Validation.model_validate(json.loads(text))
    except json.JSONDecodeError as exc:
        raise ReferenceSetError(f"{where}: not JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})") from None
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(part) for part in first["loc"]) or "the document"
        raise ReferenceSetError(f"{where}: not a validation set ({field}: {first['msg']})") from None


def load_reference(url: str, endpoint_url: str | None = None,
                   open_parent: Callable[[str], ObjectStore] | None = None) -> Validation:
    """The reference set at ``url``: a file:// path, or an object an event-service store wrote (s3://, root://;
    for example the validation JSON of an earlier, good task's merged file). ``open_parent`` opens the store
    of the folder holding it (default: ``open_location`` with ``endpoint_url``)."""
    parsed = parse_storage_url(url, STORE_SCHEMES)
    if parsed.scheme == "file":
        try:
            return parse_validation(Path(parsed.path).read_bytes(), f"reference set {url}")
        except OSError as exc:
            raise ReferenceSetError(f"reference set {url}: cannot read it: {exc.strerror or exc}") from None
    parent, name = url.rsplit("/", 1)
    if not name or str(PurePosixPath(name)) != name:
        raise ReferenceSetError(f"reference set {url}: the URL must name a file")
    store = open_parent(parent) if open_parent is not None else open_location(parent, endpoint_url)
    with tempfile.TemporaryDirectory(prefix="es-reference-") as scratch, store:
        local = Path(scratch) / name
        try:
            store.get(name, local)
        except ObjectStoreError as exc:
            raise ReferenceSetError(f"reference set {url}: {exc}") from None
        return parse_validation(local.read_bytes(), f"reference set {url}")


def has_events_tree(path: Path) -> bool:
    """Whether ``path`` is a ROOT file with the ``events`` tree (a custom merge may write something else)."""
    try:
        with uproot.open(path) as opened:
            return TREE in opened
    except Exception:  # not ROOT at all: uproot raises many kinds of errors
        return False


def certify_merged(path: Path, dest_dir: Path, merge: MergeSpec,
                   open_parent: Callable[[str], ObjectStore] | None = None) -> tuple[Validation, list[Path]] | None:
    """The validation set of a merged file, certified when the merge names a reference, written as JSON and
    PNG into ``dest_dir`` (returned in that order); None for a file with no ``events`` tree."""
    if not has_events_tree(path):
        return None
    wanted = merge.certification
    reference = load_reference(wanted.reference, merge.endpoint_url, open_parent) if wanted else None
    validation, as_json, as_png = write_validation(
        path, dest_dir, reference, reference_url=wanted.reference if wanted else None,
        min_p_value=wanted.min_p_value if wanted else DEFAULT_MIN_P_VALUE)
    return validation, [as_json, as_png]

"""Checking a task's inputs before it is created: each file reachable, with a tree holding the declared events.

A task whose inputs cannot be read would only fail range by range, attempt after attempt, on the workers. The
check opens every input (``file://``, ``root://``, ``http(s)://``) with uproot, a few at a time, and reads the
number of entries of its ``events`` tree: it must hold at least the events the spec declares. ``s3://`` inputs
are not opened (uproot reads them only through fsspec's s3fs, which is not a dependency); they are listed as
unchecked.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlsplit

from event_service.inputs.errors import InputCheckError
from event_service.spec import InputFile

log = logging.getLogger(__name__)

TREE = "events"
TIMEOUT_S = 30.0
THREADS = 8
UNCHECKED_SCHEMES = frozenset({"s3"})


@dataclass(frozen=True)
class InputCheck:
    """What the check found: problems by input, and the inputs it could not open from here."""

    problems: dict[str, str] = field(default_factory=dict)
    unchecked: list[str] = field(default_factory=list)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 300 else text[:300] + " …"


def check_input(item: InputFile, timeout_s: float = TIMEOUT_S) -> str | None:
    """Why ``item`` cannot be used, or None when its tree holds at least its declared events."""
    import uproot

    parts = urlsplit(item.url)
    location = item.url
    if parts.scheme == "file":
        path = Path(unquote(parts.path))
        if not path.is_file():
            return f"{item.url}: no such file" if not path.exists() else f"{item.url}: not a regular file"
        location = str(path)
    # uproot's default for root:// is fsspec-xrootd, which is not a dependency: read with XRootD's own client.
    handlers = {"root": uproot.source.xrootd.XRootDSource, "http": uproot.source.http.HTTPSource,
                "https": uproot.source.http.HTTPSource}
    options: dict[str, object] = {}
    if parts.scheme in handlers:
        options = {"handler": handlers[parts.scheme], "timeout": timeout_s}
    try:
        with uproot.open(location, **options) as opened:
            if TREE not in opened:
                return f"{item.url}: holds no tree {TREE!r}"
            entries = int(opened[TREE].num_entries)
    except Exception as exc:  # uproot raises many kinds (OSError, ValueError, XRootD's, HTTP's)
        return f"{item.url}: cannot be read: {_one_line(exc)}"
    if entries < item.events:
        return f"{item.url}: its tree {TREE!r} holds {entries} events, the spec says {item.events}"
    return None


def check_inputs(inputs: Sequence[InputFile], timeout_s: float = TIMEOUT_S, threads: int = THREADS) -> InputCheck:
    """Check every input a few at a time (see the module docstring)."""
    where = {index: f"inputs.{index} ({item.lfn})" for index, item in enumerate(inputs)}
    checked = [(index, item) for index, item in enumerate(inputs)
               if urlsplit(item.url).scheme not in UNCHECKED_SCHEMES]
    with ThreadPoolExecutor(max_workers=max(1, min(threads, len(checked) or 1))) as pool:
        found = list(pool.map(lambda pair: check_input(pair[1], timeout_s), checked))
    problems = {where[index]: why for (index, _), why in zip(checked, found, strict=True) if why is not None}
    unchecked = [where[index] for index, item in enumerate(inputs) if urlsplit(item.url).scheme in UNCHECKED_SCHEMES]
    return InputCheck(problems, unchecked)


def require_readable_inputs(task: str, inputs: Sequence[InputFile], timeout_s: float = TIMEOUT_S) -> InputCheck:
    """``check_inputs``, raising InputCheckError when any input cannot be used."""
    result = check_inputs(inputs, timeout_s)
    if result.problems:
        raise InputCheckError(task, result.problems, len(inputs))
    if result.unchecked:
        log.warning("task %s: %d s3:// inputs were not opened (no s3 reader here): %s", task, len(result.unchecked),
                    ", ".join(result.unchecked[:5]) + (" …" if len(result.unchecked) > 5 else ""))
    return result

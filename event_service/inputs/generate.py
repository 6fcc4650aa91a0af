"""Generator-like input ROOT files for tests and demos: a TTree ``events`` of particles, seeded."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import awkward as ak
import numpy as np
import uproot
import yaml

from event_service.inputs.errors import InputGenerationError
from event_service.spec import InputFile

TREE = "events"
DEFAULT_SEED = 20131
FIRST_EVENT_NUMBER = 1
BLOCK_EVENTS = 1000
MEAN_PARTICLES = 12.0
INPUTS_FILE = "inputs.yaml"
_GUID_NAMESPACE = uuid.UUID("6f1d7c3e-2a0b-4f55-9d3e-8c1b5a7e4d21")

# Particle species a generator emits (PDG id, mass in GeV, relative rate).
_SPECIES = np.array([(211, 0.13957), (-211, 0.13957), (111, 0.13498), (321, 0.49368), (-321, 0.49368),
                     (22, 0.0), (11, 0.000511), (-11, 0.000511), (13, 0.10566), (-13, 0.10566),
                     (2212, 0.93827), (2112, 0.93957), (130, 0.49761)])
_RATES = np.array([0.22, 0.22, 0.18, 0.05, 0.05, 0.12, 0.02, 0.02, 0.01, 0.01, 0.04, 0.04, 0.02])

BRANCH_TYPES: dict[str, np.dtype[Any] | ak.types.ListType] = {
    "event_number": np.dtype(np.int64),
    "px": ak.types.ListType(ak.types.NumpyType("float64")),
    "py": ak.types.ListType(ak.types.NumpyType("float64")),
    "pz": ak.types.ListType(ak.types.NumpyType("float64")),
    "e": ak.types.ListType(ak.types.NumpyType("float64")),
    "pdg": ak.types.ListType(ak.types.NumpyType("int32")),
}


def _block(seed: int, block: int) -> dict[str, np.ndarray | ak.Array]:
    """Events ``block * BLOCK_EVENTS`` to ``(block + 1) * BLOCK_EVENTS - 1`` of the data set (0-based).

    Each block has its own generator seeded from (seed, block), so an event's content depends only on
    the seed and its number, not on how the data set is cut into files.
    """
    rng = np.random.default_rng([seed, block])
    counts = 1 + rng.poisson(MEAN_PARTICLES - 1, size=BLOCK_EVENTS)
    total = int(counts.sum())
    species = rng.choice(len(_SPECIES), size=total, p=_RATES / _RATES.sum())
    pt = rng.exponential(2.0, size=total) + 0.1
    phi = rng.uniform(-np.pi, np.pi, size=total)
    eta = rng.uniform(-2.5, 2.5, size=total)
    px, py, pz = pt * np.cos(phi), pt * np.sin(phi), pt * np.sinh(eta)
    mass = _SPECIES[species, 1]
    energy = np.sqrt(px**2 + py**2 + pz**2 + mass**2)
    first = FIRST_EVENT_NUMBER + block * BLOCK_EVENTS
    return {
        "event_number": np.arange(first, first + BLOCK_EVENTS, dtype=np.int64),
        "px": ak.unflatten(px, counts),
        "py": ak.unflatten(py, counts),
        "pz": ak.unflatten(pz, counts),
        "e": ak.unflatten(energy, counts),
        "pdg": ak.unflatten(_SPECIES[species, 0].astype(np.int32), counts),
    }


def generate_events(seed: int, start: int, stop: int) -> Iterator[dict[str, np.ndarray | ak.Array]]:
    """Events ``start`` to ``stop - 1`` (0-based positions in the data set) in chunks of at most one block."""
    if not 0 <= start <= stop:
        raise ValueError(f"event positions must satisfy 0 <= start <= stop, got start={start}, stop={stop}")
    position = start
    while position < stop:
        block, offset = divmod(position, BLOCK_EVENTS)
        take = min(BLOCK_EVENTS - offset, stop - position)
        data = _block(seed, block)
        yield {name: values[offset:offset + take] for name, values in data.items()}
        position += take


def split_events(events: int, files: int) -> list[int]:
    """Events per file, as even as possible: the first ``events % files`` files hold one more."""
    if isinstance(events, bool) or not isinstance(events, int) or events <= 0:
        raise InputGenerationError(f"the number of events must be a positive integer, got {events!r}")
    if isinstance(files, bool) or not isinstance(files, int) or files <= 0:
        raise InputGenerationError(f"the number of files must be a positive integer, got {files!r}")
    if files > events:
        raise InputGenerationError(f"cannot spread {events} events over {files} files: every file needs an event")
    base, extra = divmod(events, files)
    return [base + 1 if number < extra else base for number in range(files)]


def input_lfn(seed: int, number: int) -> str:
    """The logical file name of the ``number``-th input file (1-based) of a data set."""
    return f"EVNT.toy{seed}._{number:06d}.root"


def input_guid(seed: int, events: int, files: int, number: int) -> str:
    """A GUID fixed by the arguments, so the same arguments give the same ``inputs.yaml``."""
    return str(uuid.uuid5(_GUID_NAMESPACE, f"{seed}:{events}:{files}:{number}")).upper()


def write_input_file(path: Path, seed: int, start: int, stop: int) -> None:
    """Write the data set's events ``start`` to ``stop - 1`` into a new ROOT file, one basket per block."""
    with uproot.recreate(path) as output:
        tree = output.mktree(TREE, BRANCH_TYPES, title="generator events",
                             counter_name=lambda counted: "nparticles")
        for chunk in generate_events(seed, start, stop):
            tree.extend(chunk)


def make_inputs(out: str | Path, events: int, files: int, seed: int = DEFAULT_SEED,
                force: bool = False) -> list[InputFile]:
    """Write ``files`` input files holding ``events`` events in all, and ``inputs.yaml`` listing them.

    Event numbers run from 1 over the whole data set, so they are unique across files. The same
    arguments give the same arrays (the ROOT files' own UUIDs and timestamps differ). An existing
    non-empty ``out`` is refused unless ``force``; then files of the same names are overwritten.
    """
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise InputGenerationError(f"the seed must be an integer >= 0, got {seed!r}")
    sizes = split_events(events, files)
    folder = Path(out).resolve()
    if folder.exists() and not folder.is_dir():
        raise InputGenerationError(f"{folder} exists and is not a folder")
    if folder.is_dir() and any(folder.iterdir()) and not force:
        raise InputGenerationError(f"{folder} is not empty; choose an empty or new folder, or pass --force to "
                                   "overwrite")
    folder.mkdir(parents=True, exist_ok=True)
    inputs = []
    start = 0
    for number, size in enumerate(sizes, start=1):
        path = folder / input_lfn(seed, number)
        write_input_file(path, seed, start, start + size)
        start += size
        inputs.append(InputFile(lfn=path.name, url=path.as_uri(), events=size,
                                guid=input_guid(seed, events, files, number)))
    (folder / INPUTS_FILE).write_text(inputs_yaml(inputs), encoding="utf-8")
    return inputs


def inputs_yaml(inputs: list[InputFile]) -> str:
    """The ``inputs:`` section of a task spec listing these files."""
    return yaml.safe_dump({"inputs": [item.model_dump(mode="json") for item in inputs]}, sort_keys=False)

"""Reading range outputs for the merge: the TTree ``events`` of each, its layout and its arrays, checked.

uproot's TTree model costs milliseconds per file, so a range output is read in one pass: the tree's layout is
worked out once per distinct branch description (a cheap fingerprint of its leaves) and each branch's baskets
are turned into numpy arrays directly.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import awkward as ak
import numpy as np
import uproot
import uproot.deserialization
import uproot.source.file
from uproot.interpretation.jagged import AsJagged
from uproot.interpretation.numerical import AsDtype

from event_service.merge.errors import UnreadableOutputError, UnsupportedTreeError

TREE = "events"
EVENT_NUMBER = "event_number"
ROOT_MAGIC = b"root"
# What uproot raises for a file, an object or a basket it cannot read.
READ_ERRORS = (OSError, ValueError, KeyError, IndexError, EOFError, struct.error, zlib.error,
               uproot.deserialization.DeserializationError)


@dataclass(frozen=True, slots=True)
class Branch:
    """One branch as the merge rewrites it: flat (a number or fixed-size array per event) or jagged."""

    name: str
    dtype: np.dtype[Any]
    jagged: bool
    counter: str | None

    def root_type(self) -> np.dtype[Any] | ak.types.ListType:
        """The type to give ``mktree``."""
        if self.jagged:
            return ak.types.ListType(ak.types.NumpyType(str(self.dtype)))
        return self.dtype


@dataclass(frozen=True, slots=True)
class Jagged:
    """A variable-length array per entry: all values one after the other, and where each entry starts."""

    content: np.ndarray[Any, Any]
    offsets: np.ndarray[Any, np.dtype[np.int64]]

    @property
    def nbytes(self) -> int:
        return int(self.content.nbytes + self.offsets.nbytes)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def to_awkward(self) -> ak.Array:
        start, stop = int(self.offsets[0]), int(self.offsets[-1])
        return ak.Array(ak.contents.ListOffsetArray(ak.index.Index64(self.offsets - start),
                                                    ak.contents.NumpyArray(self.content[start:stop])))


@dataclass(frozen=True, slots=True)
class TreeLayout:
    """The branches of a tree (counters of jagged branches left out: the writer makes them) and its title."""

    title: str
    branches: tuple[Branch, ...]

    @property
    def names(self) -> list[str]:
        return [branch.name for branch in self.branches]

    def describe(self) -> str:
        return ", ".join(f"{b.name}:{'var*' if b.jagged else ''}{b.dtype}" for b in self.branches)


@dataclass(frozen=True, slots=True)
class RangeData:
    """What one range output holds: its event numbers, layout, arrays (numpy, or Jagged) and compression."""

    event_numbers: np.ndarray[Any, np.dtype[np.int64]]
    layout: TreeLayout
    arrays: dict[str, Any]
    compression: uproot.compression.Compression | None


def one_line(text: object) -> str:
    """An error's text on one line (uproot's messages span several)."""
    return " ".join(str(text).split())


def is_root_file(path: Path) -> bool:
    """Whether the file starts with ROOT's magic bytes."""
    with open(path, "rb") as stream:
        return stream.read(len(ROOT_MAGIC)) == ROOT_MAGIC


def _layout(tree: uproot.TTree, path: Path) -> TreeLayout:
    counters = {branch.count_branch.name for branch in tree.branches if branch.count_branch is not None}
    branches = []
    for branch in tree.branches:
        if branch.name in counters:
            continue
        interpretation = branch.interpretation
        if branch.branches:
            problem = "has sub-branches"
        elif isinstance(interpretation, AsDtype):
            branches.append(Branch(branch.name, interpretation.to_dtype, False, None))
            continue
        elif isinstance(interpretation, AsJagged) and isinstance(interpretation.content, AsDtype) \
                and interpretation.content.to_dtype.shape == () and interpretation.header_bytes == 0 \
                and branch.count_branch is not None:
            branches.append(Branch(branch.name, interpretation.content.to_dtype, True, branch.count_branch.name))
            continue
        else:
            problem = f"is {branch.typename} ({interpretation})"
        raise UnsupportedTreeError(f"{path}: branch {branch.name!r} {problem}; the default merge writes "
                                   "numbers, fixed-size arrays of numbers and variable-length arrays of numbers "
                                   "with a counter branch; give the task a merge.command for other trees")
    if not branches:
        raise UnsupportedTreeError(f"{path}: tree {TREE!r} has no branches")
    return TreeLayout(str(tree.title), tuple(branches))


Fingerprint = tuple[object, ...]


def _fingerprint(tree: uproot.TTree) -> Fingerprint:
    """What fixes a tree's layout, read cheaply from its branch and leaf records (uproot's interpretation of
    a branch costs far more); trees with the same fingerprint have the same layout."""
    return (str(tree.title), *((type(branch).__name__, branch.name, len(branch.branches),
                                *((type(leaf).__name__, leaf.member("fTitle")) for leaf in branch.member("fLeaves")))
                               for branch in tree.branches))


def _raw(branch: uproot.TBranch, jagged: bool) -> tuple[bytes, np.ndarray[Any, np.dtype[np.int64]] | None]:
    """A branch's bytes over all its baskets and, for a jagged branch, where each entry starts in them (and
    where the last one ends)."""
    datas = []
    starts = []
    size = 0
    for number in range(branch.num_baskets):
        basket = branch.basket(number)
        data = basket.data
        if jagged:
            byte_offsets = basket.byte_offsets.astype(np.int64)
            data = data[byte_offsets[0]:byte_offsets[-1]]
            starts.append(byte_offsets[:-1] - byte_offsets[0] + size)
        datas.append(data)
        size += len(data)
    joined = datas[0].tobytes() if len(datas) == 1 else b"".join(d.tobytes() for d in datas)
    if not jagged:
        return joined, None
    return joined, np.concatenate([*starts, np.array([size], dtype=np.int64)])


def _values(branch: uproot.TBranch, spec: Branch, entries: int, path: Path) -> Any:
    """One branch's values as numpy (flat) or awkward (jagged) arrays in native byte order."""
    stored = spec.dtype.base.newbyteorder(">")
    data, byte_offsets = _raw(branch, spec.jagged)
    if len(data) % stored.itemsize:
        raise UnreadableOutputError(path, f"branch {spec.name!r} holds {len(data)} bytes, not a whole number of "
                                          f"{stored} values")
    content = np.frombuffer(data, dtype=stored).astype(spec.dtype.base)
    if not spec.jagged:
        values = content.reshape(-1, *spec.dtype.shape)
        found = len(values)
    else:
        assert byte_offsets is not None
        if np.any(byte_offsets % stored.itemsize) or np.any(np.diff(byte_offsets) < 0):
            raise UnreadableOutputError(path, f"branch {spec.name!r} has entry offsets that do not fit its values")
        offsets = byte_offsets // stored.itemsize
        found = len(offsets) - 1
        values = Jagged(content, offsets)
    if found != entries:
        raise UnreadableOutputError(path, f"branch {spec.name!r} holds {found} entries, the tree {entries}")
    return values


def _events_tree(opened: uproot.ReadOnlyDirectory, path: Path) -> uproot.TTree:
    try:
        tree = opened[TREE]
    except READ_ERRORS as exc:
        raise UnreadableOutputError(path, f"no readable TTree {TREE!r}: {one_line(exc)}") from None
    if not isinstance(tree, uproot.TTree):
        raise UnsupportedTreeError(f"{path}: {TREE!r} is a {type(tree).__name__}, not a TTree; the default merge "
                                   "merges TTrees; give the task a merge.command for other objects")
    if EVENT_NUMBER not in tree:
        raise UnreadableOutputError(path, f"tree {TREE!r} has no branch {EVENT_NUMBER!r}")
    return tree


def _event_numbers(array: Any, path: Path) -> np.ndarray[Any, np.dtype[np.int64]]:
    if isinstance(array, ak.Array):
        raise UnreadableOutputError(path, f"branch {EVENT_NUMBER!r} holds a list per event, not one number")
    numbers = np.asarray(array)
    if numbers.ndim != 1 or numbers.dtype.kind not in "iu":
        raise UnreadableOutputError(path, f"branch {EVENT_NUMBER!r} holds {numbers.dtype}"
                                          f"{list(numbers.shape[1:]) or ''}, not one integer per event")
    return numbers.astype(np.int64, copy=False)


def _open(path: Path) -> uproot.ReadOnlyDirectory:
    return uproot.open(path, handler=uproot.source.file.MemmapSource, use_threads=False, array_cache=None,
                       object_cache=None)


def read_range(path: Path, layouts: dict[Fingerprint, TreeLayout] | None = None) -> RangeData:
    """Open a range output and read all its branches.

    ``layouts`` caches the layout of each tree fingerprint already seen (range outputs of one task share
    one). Raises UnreadableOutputError (a broken file, no tree, no event numbers, a basket that does not
    read) or UnsupportedTreeError (a branch the default merge cannot write).
    """
    try:
        with _open(path) as opened:
            tree = _events_tree(opened, path)
            entries = int(tree.num_entries)
            known = {} if layouts is None else layouts
            fingerprint = _fingerprint(tree)
            layout = known.get(fingerprint)
            if layout is None:
                layout = known[fingerprint] = _layout(tree, path)
            arrays = {spec.name: _values(tree[spec.name], spec, entries, path) for spec in layout.branches}
            if EVENT_NUMBER not in arrays:
                raise UnreadableOutputError(path, f"tree {TREE!r} has no branch {EVENT_NUMBER!r}")
            return RangeData(_event_numbers(arrays[EVENT_NUMBER], path), layout, arrays, opened.file.compression)
    except (UnreadableOutputError, UnsupportedTreeError):
        raise
    except READ_ERRORS as exc:
        raise UnreadableOutputError(path, f"not a readable ROOT file: {one_line(exc)}") from None


def read_back(path: Path) -> tuple[TreeLayout, np.ndarray[Any, np.dtype[np.int64]]]:
    """The layout and event numbers of a merged file, for its validation."""
    try:
        with _open(path) as opened:
            tree = _events_tree(opened, path)
            return _layout(tree, path), _event_numbers(tree[EVENT_NUMBER].array(library="np"), path)
    except (UnreadableOutputError, UnsupportedTreeError):
        raise
    except READ_ERRORS as exc:
        raise UnreadableOutputError(path, f"not a readable ROOT file: {one_line(exc)}") from None


def event_numbers_of(path: Path) -> np.ndarray[Any, np.dtype[np.int64]] | None:
    """The event numbers of a file when it is a ROOT file with ``events/event_number``, else None."""
    if not is_root_file(path):
        return None
    try:
        with _open(path) as opened:
            if TREE not in opened or EVENT_NUMBER not in opened[TREE]:
                return None
            return _event_numbers(opened[TREE][EVENT_NUMBER].array(library="np"), path)
    except READ_ERRORS as exc:
        raise UnreadableOutputError(path, f"not a readable ROOT file: {one_line(exc)}") from None

"""Writing the merged file: one TTree ``events`` with uproot, in large baskets, the same bytes every time.

The merged file's bytes depend only on the inputs' arrays and the part: the file and directory UUIDs are
derived from the part (``part_uuids``) and every ROOT time stamp (TDatime) is the fixed ``MERGED_DATIME``
while the file is written (``frozen_root_clock``), so a restarted merge writes the same bytes, the same adler32.
"""

from __future__ import annotations

import contextlib
import datetime
import itertools
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import uproot
import uproot._util

from event_service.merge.read import TREE, Branch, Jagged, TreeLayout

MERGED_DATIME = datetime.datetime(2000, 1, 1, 0, 0, 0)
CHUNK_BYTES = 32 << 20  # uncompressed bytes gathered before they are written as one basket per branch
_UUID_NAMESPACE = uuid.UUID("0b6f3f8e-3d4a-5c1e-9a57-2f0c8d1e6b42")
KEEP_COMPRESSION = "inputs"
_ALGORITHMS: dict[str, type[uproot.compression.Compression]] = {
    "zlib": uproot.compression.ZLIB, "lzma": uproot.compression.LZMA, "lz4": uproot.compression.LZ4,
    "zstd": uproot.compression.ZSTD}


def parse_compression(text: str) -> uproot.compression.Compression | None | str:
    """A compression setting: ``inputs`` (keep the first input's, as hadd -fk does), ``none``, or
    ``<algorithm>:<level>`` with algorithm zlib, lzma, lz4 or zstd (``zstd:1`` compresses toysim's hits
    several times faster than ``zlib:1``, to about the same size)."""
    if text == KEEP_COMPRESSION:
        return text
    if text == "none":
        return None
    algorithm, _, level = text.partition(":")
    if algorithm not in _ALGORITHMS or not level.isdigit() or not 1 <= int(level) <= 9:
        raise ValueError(f"compression {text!r} is not 'inputs', 'none' or <algorithm>:<level 1-9> with "
                         f"algorithm one of {', '.join(_ALGORITHMS)}")
    return _ALGORITHMS[algorithm](int(level))


_clock_lock = threading.Lock()
_clock_depth = 0
_real_datetime_to_code: Callable[[datetime.datetime], int] = uproot._util.datetime_to_code


def _fixed_datetime_to_code(moment: datetime.datetime) -> int:
    return _real_datetime_to_code(MERGED_DATIME)


@contextlib.contextmanager
def frozen_root_clock() -> Iterator[None]:
    """While inside, every ROOT time stamp uproot writes in this process is ``MERGED_DATIME``.

    uproot encodes each time stamp through ``uproot._util.datetime_to_code``; that one function is swapped
    while any merge is writing (nested and concurrent uses share it). A test checks that two merges a second
    apart give the same bytes, so a future uproot that stamps times elsewhere is noticed.
    """
    global _clock_depth
    with _clock_lock:
        if _clock_depth == 0:
            uproot._util.datetime_to_code = _fixed_datetime_to_code
        _clock_depth += 1
    try:
        yield
    finally:
        with _clock_lock:
            _clock_depth -= 1
            if _clock_depth == 0:
                uproot._util.datetime_to_code = _real_datetime_to_code


def part_uuids(seed: str) -> Callable[[], uuid.UUID]:
    """A ``uuid_function`` giving the same sequence of UUIDs for the same seed (file, then directories)."""
    counter = itertools.count()
    return lambda: uuid.uuid5(_UUID_NAMESPACE, f"{seed}#{next(counter)}")


def _concatenate(pieces: Sequence[Any], branch: Branch) -> Any:
    if not branch.jagged:
        return pieces[0] if len(pieces) == 1 else np.concatenate(pieces)
    if len(pieces) == 1:
        return pieces[0].to_awkward()
    counts = np.concatenate([np.diff(piece.offsets) for piece in pieces])
    offsets = np.zeros(len(counts) + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    return Jagged(np.concatenate([piece.content for piece in pieces]), offsets).to_awkward()


class MergedTreeWriter:
    """Writes range arrays, in the order given, into one new file's TTree ``events``, in large baskets.

    Each chunk is compressed and written by one background thread while the caller reads the next inputs
    (zlib and zstd release the GIL); chunks are written strictly in order, so the bytes do not depend on it.
    """

    def __init__(self, path: Path, layout: TreeLayout, compression: uproot.compression.Compression | None,
                 uuid_seed: str, chunk_bytes: int = CHUNK_BYTES) -> None:
        self.path = path
        self.layout = layout
        self.chunk_bytes = chunk_bytes
        self._pending: dict[str, list[Any]] = {name: [] for name in layout.names}
        self._pending_bytes = 0
        self._writing: Future[None] | None = None
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="merge-writer")
        counters = {branch.name: branch.counter for branch in layout.branches if branch.counter is not None}
        self._file = uproot.recreate(path, compression=compression, uuid_function=part_uuids(uuid_seed))
        try:
            self._tree = self._file.mktree(TREE, {b.name: b.root_type() for b in layout.branches},
                                           title=layout.title, counter_name=lambda name: counters[name])
        except BaseException:
            self._file.close()
            self._thread.shutdown()
            raise

    def add(self, arrays: dict[str, Any]) -> None:
        """Queue one range's arrays; a chunk is written once enough bytes are queued."""
        for name in self.layout.names:
            self._pending[name].append(arrays[name])
            self._pending_bytes += arrays[name].nbytes
        if self._pending_bytes >= self.chunk_bytes:
            self._flush()

    def _flush(self) -> None:
        if not self._pending[self.layout.names[0]]:
            return
        chunk = {branch.name: _concatenate(self._pending[branch.name], branch) for branch in self.layout.branches}
        self._pending = {name: [] for name in self.layout.names}
        self._pending_bytes = 0
        self._wait()
        self._writing = self._thread.submit(self._tree.extend, chunk)

    def _wait(self) -> None:
        """Wait for the chunk being written; its error, if any, is raised here."""
        if self._writing is not None:
            writing, self._writing = self._writing, None
            writing.result()

    def close(self) -> None:
        """Write what is queued and close the file."""
        try:
            self._flush()
            self._wait()
        finally:
            self._thread.shutdown()
            self._file.close()

    def abort(self) -> None:
        """Stop writing and close the file (the caller removes it). Called while another error propagates:
        an error of the chunk being written then is superseded by it."""
        self._thread.shutdown(cancel_futures=True)
        self._file.close()

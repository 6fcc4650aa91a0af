"""``toysim``: the reference payload, a toy detector simulation that speaks the payload protocol."""

from __future__ import annotations

import argparse
import http.client
import os
import sys
import time
import traceback
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self
from urllib.parse import unquote, urlsplit

import awkward as ak
import numpy as np
import uproot
import uproot.source.http

from payload_runner.channel import PayloadChannel
from payload_runner.errors import ChannelError, InputUnreadableError, ProtocolError, RangeFailure
from payload_runner.protocol import (
    ErrorReport,
    EventRangeMessage,
    NoMoreEvents,
    OutputReport,
    ReadyForEvents,
    parse_runner_message,
)

TREE = "events"
INPUT_BRANCHES = ("event_number", "px", "py", "pz", "e", "pdg")
SIMULATION_SEED = 0x70751
LAYER_RADII_CM = np.array([5.0, 10.0, 20.0, 35.0, 50.0, 70.0, 90.0, 110.0])
OPEN_FILES = 4
# What uproot raises for a file or basket it cannot read (local, HTTP or XRootD).
READ_ERRORS = (OSError, ValueError, KeyError, http.client.HTTPException, uproot.deserialization.DeserializationError)

EXIT_SETUP = 2
EXIT_CRASH_ASKED = 3
EXIT_RUNNER_SILENT = 4
EXIT_RUNNER_PROTOCOL = 5

# Branch types as objects, not datashape strings: uproot would parse a string on every file.
OUTPUT_TYPES: dict[str, np.dtype[Any] | ak.types.ListType] = {
    "event_number": np.dtype(np.int64),
    "nparticles": np.dtype(np.int32),
    "edep_sum": np.dtype(np.float64),
    "hit_edep": ak.types.ListType(ak.types.NumpyType("float32")),
    "hit_layer": ak.types.ListType(ak.types.NumpyType("int32")),
    "hit_x": ak.types.ListType(ak.types.NumpyType("float32")),
    "hit_y": ak.types.ListType(ak.types.NumpyType("float32")),
    "hit_z": ak.types.ListType(ak.types.NumpyType("float32")),
}


@dataclass(frozen=True)
class Options:
    """What the command line asks for."""

    outdir: Path
    cost_ms: float
    crash_at_range: int | None
    hang_at_range: int | None
    fail_range_ids: frozenset[str]
    runner_timeout_s: float | None


def input_location(event_range: EventRangeMessage) -> tuple[str, dict[str, Any]]:
    """Where to read a range's input and the uproot options for it (PFN, else the LFN in the cwd)."""
    pfn = event_range.pfn or event_range.lfn
    scheme = urlsplit(pfn).scheme.lower()
    if scheme in ("http", "https"):
        return pfn, {"handler": uproot.source.http.HTTPSource}
    if scheme == "root":  # uproot's default for root:// is fsspec-xrootd; XRootD's own client is what we have
        return pfn, {"handler": uproot.source.xrootd.XRootDSource}
    if scheme == "file":
        parts = urlsplit(pfn)
        if parts.netloc not in ("", "localhost"):
            raise InputUnreadableError(f"{pfn!r}: a file URL names no host (file:///absolute/path)")
        return unquote(parts.path), {}
    if scheme == "s3":
        raise InputUnreadableError(f"{pfn!r}: toysim holds no object-store credentials; give a pre-signed "
                                   "https:// URL as the PFN instead")
    if scheme:
        raise InputUnreadableError(f"{pfn!r}: unsupported input scheme {scheme!r} (use a path, file://, "
                                   "http(s):// or root://)")
    return str(Path(pfn).resolve()), {}


def _events_tree(opened: uproot.ReadOnlyDirectory, location: str) -> uproot.TTree:
    """The generator tree of an opened input, checked for the branches toysim reads."""
    try:
        tree = opened[TREE]
    except READ_ERRORS as exc:
        raise InputUnreadableError(f"input {location!r} holds no readable TTree {TREE!r}: {one_line(exc)}") from None
    if not isinstance(tree, uproot.TTree):
        raise InputUnreadableError(f"input {location!r}: {TREE!r} is a {type(tree).__name__}, not a TTree")
    missing = [name for name in INPUT_BRANCHES if name not in tree]
    if missing:
        raise InputUnreadableError(f"input {location!r}: tree {TREE!r} lacks branches {', '.join(missing)}")
    return tree


class InputFiles:
    """The last few input trees opened, so consecutive ranges of one file open it once."""

    def __init__(self, size: int = OPEN_FILES) -> None:
        self._size = size
        self._open: OrderedDict[str, tuple[uproot.ReadOnlyDirectory, uproot.TTree]] = OrderedDict()

    def tree(self, event_range: EventRangeMessage) -> uproot.TTree:
        """The input tree of a range, opened once for consecutive ranges of the same file."""
        location, options = input_location(event_range)
        if location in self._open:
            self._open.move_to_end(location)
            return self._open[location][1]
        try:
            opened = uproot.open(location, **options)
        except (*READ_ERRORS, ImportError) as exc:
            raise InputUnreadableError(f"cannot open input {location!r}: {one_line(exc)}") from None
        try:
            tree = _events_tree(opened, location)
        except BaseException:
            opened.close()
            raise
        self._open[location] = (opened, tree)
        while len(self._open) > self._size:
            _, (evicted, _) = self._open.popitem(last=False)
            evicted.close()
        return tree

    def close(self) -> None:
        while self._open:
            _, (opened, _) = self._open.popitem()
            opened.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()


def read_range(tree: uproot.TTree, event_range: EventRangeMessage) -> ak.Array:
    """Read only the range's entries of the input tree."""
    entries = int(tree.num_entries)
    if event_range.last_entry >= entries:
        raise RangeFailure("ERR_TOYSIM_RANGE", f"events {event_range.start_event}-{event_range.last_event} "
                                               f"are beyond the {entries} events of {event_range.lfn}")
    try:
        return tree.arrays(list(INPUT_BRANCHES), entry_start=event_range.first_entry,
                           entry_stop=event_range.last_entry + 1, library="ak")
    except READ_ERRORS as exc:
        raise RangeFailure("ERR_TOYSIM_READ", f"cannot read events {event_range.start_event}-{event_range.last_event}"
                                              f" of {event_range.lfn}: {one_line(exc)}") from None


def _visible_fraction(pdg: np.ndarray) -> np.ndarray:
    """The share of a particle's energy the toy detector sees, by species."""
    magnitude = np.abs(pdg)
    fraction = np.full(len(pdg), 0.7)  # charged hadrons
    fraction[(magnitude == 22) | (magnitude == 11) | (magnitude == 111)] = 0.95  # electromagnetic
    fraction[magnitude == 13] = 0.02  # muons leave a minimum-ionising trace
    fraction[(magnitude == 2112) | (magnitude == 130)] = 0.6  # neutral hadrons
    return fraction


def simulate_event(event_number: int, px: np.ndarray, py: np.ndarray, pz: np.ndarray, e: np.ndarray,
                   pdg: np.ndarray) -> dict[str, Any]:
    """The toy detector response of one event; the same event number and particles give the same hits."""
    rng = np.random.default_rng([SIMULATION_SEED, event_number])
    resolution = 0.1 / np.sqrt(np.maximum(e, 1e-3)) + 0.02
    deposit = np.maximum(e * _visible_fraction(pdg) * (1.0 + resolution * rng.standard_normal(len(e))), 0.0)
    hits_per_particle = 1 + rng.poisson(2.0 + np.minimum(deposit, 50.0))
    owner = np.repeat(np.arange(len(e)), hits_per_particle)
    weights = rng.exponential(1.0, size=len(owner))
    share = weights / np.bincount(owner, weights, minlength=len(e))[owner]
    layer = rng.integers(0, len(LAYER_RADII_CM), size=len(owner)).astype(np.int32)
    momentum = np.maximum(np.sqrt(px**2 + py**2 + pz**2), 1e-9)
    radius = LAYER_RADII_CM[layer] * (1.0 + 0.01 * rng.standard_normal(len(owner)))
    return {
        "event_number": event_number,
        "nparticles": len(e),
        "edep_sum": float(deposit.sum()),
        "hit_edep": (deposit[owner] * share).astype(np.float32),
        "hit_layer": layer,
        "hit_x": (radius * px[owner] / momentum[owner]).astype(np.float32),
        "hit_y": (radius * py[owner] / momentum[owner]).astype(np.float32),
        "hit_z": (radius * pz[owner] / momentum[owner]).astype(np.float32),
    }


def simulate(events: ak.Array) -> dict[str, Any]:
    """The detector response of every event of a range, as columns for the output tree."""
    numbers = events["event_number"].to_numpy()
    offsets = np.concatenate([[0], np.cumsum(ak.num(events["px"]).to_numpy())])
    flat = {name: ak.flatten(events[name]).to_numpy().astype(np.int64 if name == "pdg" else np.float64)
            for name in ("px", "py", "pz", "e", "pdg")}
    rows = [simulate_event(int(number), *(flat[name][offsets[i]:offsets[i + 1]]
                                          for name in ("px", "py", "pz", "e", "pdg")))
            for i, number in enumerate(numbers)]
    columns: dict[str, Any] = {}
    for name, kind in OUTPUT_TYPES.items():
        if isinstance(kind, ak.types.ListType):
            parts = [row[name] for row in rows]
            columns[name] = ak.unflatten(np.concatenate(parts), [len(part) for part in parts])
        else:
            columns[name] = np.asarray([row[name] for row in rows], dtype=kind)
    return columns


def burn_cpu(until_cpu_s: float) -> None:
    """Keep the CPU busy until this process has used ``until_cpu_s`` seconds (time.process_time)."""
    while time.process_time() < until_cpu_s:
        pass


def write_output(columns: dict[str, Any], path: Path) -> None:
    """Write the range's output under a temporary name, then rename it: a finished file is never partial."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with uproot.recreate(temporary) as output:
            tree = output.mktree(TREE, OUTPUT_TYPES, title="toy detector hits",
                                 counter_name=lambda counted: "nhits")
            tree.extend(columns)
        os.replace(temporary, path)
    except OSError as exc:
        temporary.unlink(missing_ok=True)
        raise RangeFailure("ERR_TOYSIM_OUTPUT", f"cannot write {path}: {exc.strerror or exc}") from None
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def process_range(event_range: EventRangeMessage, inputs: InputFiles, options: Options) -> OutputReport:
    """Simulate one range and write its output file; the report carries its CPU and wall seconds."""
    cpu_start, wall_start = time.process_time(), time.perf_counter()
    events = read_range(inputs.tree(event_range), event_range)
    columns = simulate(events)
    burn_cpu(cpu_start + options.cost_ms * event_range.events / 1000.0)
    path = options.outdir / f"HITS.{event_range.range_id}.root"
    write_output(columns, path)
    return OutputReport(path=str(path), range_id=event_range.range_id,
                        cpu_s=round(time.process_time() - cpu_start, 3),
                        wall_s=round(time.perf_counter() - wall_start, 3))


def one_line(text: object) -> str:
    """A message (or an exception's text) on one line: uproot's messages span several."""
    return " ".join(str(text).split())


def _stop(message: str, code: int) -> int:
    print(f"toysim: {one_line(message)}", file=sys.stderr, flush=True)
    return code


def serve(channel: PayloadChannel, inputs: InputFiles, options: Options) -> int:
    """Ask for ranges and process them until the runner says ``No more events``; return the exit code."""
    received = 0
    while True:
        channel.send(ReadyForEvents().dump())
        text = channel.recv(options.runner_timeout_s)
        if text is None:
            return _stop(f"no answer from the runner on {channel.address} within {options.runner_timeout_s} s",
                         EXIT_RUNNER_SILENT)
        try:
            message = parse_runner_message(text)
        except ProtocolError as exc:
            return _stop(f"the runner sent a malformed message: {exc}", EXIT_RUNNER_PROTOCOL)
        if isinstance(message, NoMoreEvents):
            return 0
        received += 1
        if received == options.crash_at_range:
            print(f"toysim: crashing at range {received} ({message.range_id}) as --crash-at-range asks",
                  file=sys.stderr, flush=True)
            os._exit(EXIT_CRASH_ASKED)
        if received == options.hang_at_range:
            print(f"toysim: hanging at range {received} ({message.range_id}) as --hang-at-range asks",
                  file=sys.stderr, flush=True)
            while True:
                time.sleep(3600)
        if message.range_id in options.fail_range_ids:
            channel.send(ErrorReport("ERR_TOYSIM_INJECTED", message.range_id,
                                     "failure asked for by --fail-range-ids").dump())
            continue
        try:
            report = process_range(message, inputs, options)
        except InputUnreadableError as exc:
            channel.send(ErrorReport("ERR_TOYSIM_INPUT", message.range_id, str(exc)).dump())
            return _stop(str(exc), EXIT_SETUP)
        except RangeFailure as exc:
            channel.send(ErrorReport(exc.code, message.range_id, exc.text).dump())
            continue
        except Exception as exc:  # reported to the runner with a code, and the traceback kept on stderr
            traceback.print_exc(file=sys.stderr)
            channel.send(ErrorReport("ERR_TOYSIM_PROCESS", message.range_id,
                                     f"{type(exc).__name__}: {one_line(exc)}").dump())
            continue
        channel.send(report.dump())


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text}")
    return value


def _non_negative(text: str) -> float:
    value = float(text)
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="toysim", description="Toy detector simulation speaking the event-service payload protocol over "
                                   "the ZeroMQ channel named by $EVENT_SERVICE_CHANNEL.")
    parser.add_argument("--outdir", type=Path, default=Path("."), help="where output files go (default: .)")
    parser.add_argument("--cost-ms", type=_non_negative, default=0.0,
                        help="CPU milliseconds each event takes at least, the simulation included")
    parser.add_argument("--runner-timeout", type=_non_negative, default=0.0,
                        help="give up (exit 4) when the runner does not answer within this many seconds; "
                             "0 waits forever")
    parser.add_argument("--crash-at-range", type=_positive_int, metavar="K",
                        help="for tests: exit with code 3 on receiving the K-th range, without answering")
    parser.add_argument("--hang-at-range", type=_positive_int, metavar="K",
                        help="for tests: stop talking and sleep forever on receiving the K-th range")
    parser.add_argument("--fail-range-ids", default="", metavar="ID,ID",
                        help="for tests: answer ERR_TOYSIM_INJECTED for these event range ids")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    outdir = args.outdir.resolve()
    options = Options(outdir=outdir, cost_ms=args.cost_ms, crash_at_range=args.crash_at_range,
                      hang_at_range=args.hang_at_range,
                      fail_range_ids=frozenset(filter(None, args.fail_range_ids.split(","))),
                      runner_timeout_s=args.runner_timeout or None)
    try:
        outdir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        return _stop(f"cannot create the output folder {outdir}: {exc.strerror or exc}", EXIT_SETUP)
    try:
        channel = PayloadChannel()
    except (ChannelError, ValueError) as exc:
        return _stop(str(exc), EXIT_SETUP)
    try:
        with channel, InputFiles() as inputs:
            return serve(channel, inputs, options)
    except KeyboardInterrupt:
        return _stop("interrupted", 130)


if __name__ == "__main__":
    sys.exit(main())

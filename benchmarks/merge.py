"""Merge: 1,000 range outputs into one file with merge_part (uproot, or ROOT's hadd), against copying the bytes."""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import awkward as ak
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from event_service.ledger import RangeOutput
from event_service.merge.errors import HaddNotFoundError
from event_service.merge.hadd import find_hadd
from event_service.merge.part import MergedFile, merge_part
from event_service.merge.plan import plan_merge
from event_service.statuses import RangeStatus
from event_service.stores import LocalStore
from payload_runner.payloads.toysim import LAYER_RADII_CM, write_output

TASK = "bench-merge"
HADD = "hadd"  # the leg that merges with event-service-hadd (ROOT's hadd, fast cloning)
HADD_COMMAND = str(Path(sys.executable).with_name("event-service-hadd"))
MEAN_HITS = 82  # toysim's mean hits per event with make-input's generator events (measured)


def load_average() -> str:
    return ", ".join(f"{value:.2f}" for value in os.getloadavg())


def toysim_columns(rng: np.random.Generator, first_number: int, events: int) -> dict[str, object]:
    """Columns shaped and distributed like toysim's output (same branches and types), drawn at once."""
    nhits = np.maximum(1, rng.normal(MEAN_HITS, 30, events).astype(np.int64))
    total = int(nhits.sum())
    layer = rng.integers(0, len(LAYER_RADII_CM), total).astype(np.int32)
    direction = rng.normal(size=(3, total))
    direction /= np.linalg.norm(direction, axis=0)
    radius = LAYER_RADII_CM[layer] * (1.0 + 0.01 * rng.standard_normal(total))
    edep = rng.exponential(0.5, total).astype(np.float32)
    offsets = np.concatenate([[0], np.cumsum(nhits)])
    return {
        "event_number": np.arange(first_number, first_number + events, dtype=np.int64),
        "nparticles": np.maximum(1, rng.poisson(12, events)).astype(np.int32),
        "edep_sum": np.add.reduceat(edep.astype(np.float64), offsets[:-1]),
        "hit_edep": ak.unflatten(edep, nhits),
        "hit_layer": ak.unflatten(layer, nhits),
        "hit_x": ak.unflatten((radius * direction[0]).astype(np.float32), nhits),
        "hit_y": ak.unflatten((radius * direction[1]).astype(np.float32), nhits),
        "hit_z": ak.unflatten((radius * direction[2]).astype(np.float32), nhits),
    }


def make_outputs(store: LocalStore, scratch: Path, ranges: int, per_range: int) -> list[RangeOutput]:
    """``ranges`` range outputs of ``per_range`` events each, written by toysim's writer, put in the store."""
    rng = np.random.default_rng(per_range)
    scratch.mkdir(parents=True, exist_ok=True)
    outputs = []
    for number in range(ranges):
        first, last = number * per_range, (number + 1) * per_range - 1
        range_id = f"{TASK}.1.{first}-{last}"
        path = scratch / f"HITS.{range_id}.root"
        write_output(toysim_columns(rng, first + 1, per_range), path)
        stored = store.put(f"{TASK}/{range_id}/1/{path.name}", path)
        path.unlink()
        outputs.append(RangeOutput(range_id, 1, "EVNT.bench._000001.root", first, last, RangeStatus.FINISHED, 1,
                                   stored.key, None, stored.adler32, stored.size))
    return outputs


def copy_baseline(sources: list[Path], dest: Path) -> float:
    """Read every input and write them one after the other into one file, made durable once (as the merge
    makes its output durable once). Returns seconds."""
    start = time.perf_counter()
    with open(dest, "wb") as out:
        for source in sources:
            with open(source, "rb") as stream:
                out.write(stream.read())
        out.flush()
        os.fsync(out.fileno())
    elapsed = time.perf_counter() - start
    dest.unlink()
    return elapsed


def timed_merge(outputs: list[RangeOutput], store: LocalStore, workdir: Path, leg: str,
                profile: bool) -> tuple[float, MergedFile]:
    """One merge of every output into one file: ``leg`` is a compression setting of the default (uproot)
    merge, or HADD."""
    part = plan_merge(outputs, TASK, 10**12)[0]
    profiler = cProfile.Profile() if profile else None
    start = time.perf_counter()
    if profiler is not None:
        profiler.enable()
    if leg == HADD:
        merged = merge_part(part, {None: store}, workdir, HADD_COMMAND)
    else:
        merged = merge_part(part, {None: store}, workdir, compression=leg)
    if profiler is not None:
        profiler.disable()
    elapsed = time.perf_counter() - start
    if profiler is not None:
        text = io.StringIO()
        pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(12)
        print(text.getvalue())
    merged.path.unlink()
    return elapsed, merged


@dataclass
class Result:
    per_range: int
    ranges: int
    compression: str
    input_mb: float
    output_mb: float
    merge_s: float
    copy_s: float
    deterministic: bool

    @property
    def ratio(self) -> float:
        return self.merge_s / self.copy_s


def bench_size(tmp: Path, ranges: int, per_range: int, merges: list[str], rounds: int,
               profile: bool) -> list[Result]:
    """Each round runs the copy and a merge per compression setting, in an order that rotates."""
    store = LocalStore(tmp / f"store-{per_range}")
    made = time.perf_counter()
    outputs = make_outputs(store, tmp / "scratch", ranges, per_range)
    sources = [store.path(output.key) for output in outputs]
    print(f"  {ranges} outputs of {per_range} events made in {time.perf_counter() - made:.1f} s", flush=True)
    legs = ["copy", *merges]
    times: dict[str, list[float]] = {leg: [] for leg in legs}
    checksums: dict[str, set[str]] = {leg: set() for leg in merges}
    sizes: dict[str, int] = {}
    for round_number in range(rounds):
        for leg in legs[round_number % len(legs):] + legs[:round_number % len(legs)]:
            os.sync()  # untimed: no leg pays for writing back the gigabyte the previous one left dirty
            if leg == "copy":
                times[leg].append(copy_baseline(sources, tmp / "baseline.bin"))
                continue
            elapsed, merged = timed_merge(outputs, store, tmp / "work", leg, profile and round_number == rounds - 1)
            assert merged.events == ranges * per_range, merged
            times[leg].append(elapsed)
            checksums[leg].add(merged.adler32)
            sizes[leg] = merged.size
        print(f"  round {round_number + 1}: " + ", ".join(f"{leg} {times[leg][-1]:.3f} s" for leg in legs), flush=True)
    input_mb = sum(output.size for output in outputs) / 1e6
    copy_s = statistics.median(times["copy"])
    shutil.rmtree(store.root)
    return [Result(per_range, ranges, leg, input_mb, sizes[leg] / 1e6, statistics.median(times[leg]), copy_s,
                   len(checksums[leg]) == 1) for leg in merges]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--ranges", type=int, default=1000, help="range outputs merged into one file")
    parser.add_argument("--events", default="10,100,1000",
                        help="events per range, one size per comma-separated value")
    parser.add_argument("--compression", default="inputs,zstd:1",
                        help="the default merge's compression settings to measure, comma-separated (see merge_part); "
                             "'' measures no uproot merge")
    parser.add_argument("--no-hadd", action="store_true",
                        help="skip the merge by event-service-hadd (measured when ROOT's hadd is found)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per size, the legs' order rotating")
    parser.add_argument("--profile", action="store_true", help="print where the last merge of each size spent time")
    parser.add_argument("--tmp", type=Path, default=Path("/tmp"), help="where the store and work directory go")
    args = parser.parse_args()
    print(f"merge benchmark, {time.strftime('%Y-%m-%d %H:%M %Z')}, {os.cpu_count()} cores, "
          f"load average {load_average()}", flush=True)
    legs = [setting for setting in args.compression.split(",") if setting]
    if not args.no_hadd:
        try:
            print(f"hadd: {find_hadd()}", flush=True)
            legs.append(HADD)
        except HaddNotFoundError as exc:
            print(f"not measuring the hadd merge: {exc}", flush=True)
    tmp = Path(tempfile.mkdtemp(prefix="es-bench-merge-", dir=args.tmp))
    results = []
    try:
        for per_range in (int(value) for value in args.events.split(",")):
            print(f"size: {per_range} events per range", flush=True)
            results += bench_size(tmp, args.ranges, per_range, legs, args.rounds, args.profile)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"load average at the end {load_average()}")
    print(f"| events/range | input MB ({args.ranges:,} files) | merge | merged MB | merge s | copy s "
          "| merge / copy | merge s per input MB | same adler32 every round |")
    print("| ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | --- |")
    for r in results:
        how = "hadd -fk (event-service-hadd)" if r.compression == HADD else f"uproot, {r.compression}"
        print(f"| {r.per_range:,} | {r.input_mb:,.1f} | {how} | {r.output_mb:,.1f} | {r.merge_s:.2f} "
              f"| {r.copy_s:.3f} "
              f"| {r.ratio:.1f}x | {r.merge_s / r.input_mb:.3f} | {'yes' if r.deterministic else 'NO'} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``nullsim``: the smallest real payload, a text file of each range's event numbers, and its merge program.

It speaks the same payload protocol as ``toysim`` but reads no input and simulates nothing: for every range it
writes ``EVENTS.<range id>.txt`` holding the range's events, one ``<input LFN> <event number>`` per line, and
reports it. What is left is the cost the event service itself puts on a range (hand-over, stage-out with its
checksum, the ledger), which is what the makespan benchmark compares with one Airflow task per range.
``nullsim merge --inputs LIST --output PATH`` is its merge program (the ``merge.command`` contract): it checks
that every input holds only such lines, its events consecutive and ascending, and that each input continues the
events of the one before it (or starts the next input file), then concatenates them.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from payload_runner.channel import PayloadChannel
from payload_runner.errors import ChannelError, NullsimInputError, ProtocolError
from payload_runner.protocol import (
    EventRangeMessage,
    NoMoreEvents,
    OutputReport,
    ReadyForEvents,
    parse_runner_message,
)

EXIT_SETUP = 2
EXIT_RUNNER_SILENT = 4
EXIT_RUNNER_PROTOCOL = 5
EXIT_BAD_INPUT = 6


def output_text(event_range: EventRangeMessage) -> str:
    """A range's output: its events, one ``<LFN> <event number>`` per line."""
    return "".join(f"{event_range.lfn} {number}\n"
                   for number in range(event_range.start_event, event_range.last_event + 1))


def write_output(event_range: EventRangeMessage, outdir: Path) -> OutputReport:
    """Write the range's output under a temporary name, then rename it, and return the report."""
    cpu_start, wall_start = time.process_time(), time.perf_counter()
    path = outdir / f"EVENTS.{event_range.range_id}.txt"
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(output_text(event_range), encoding="ascii")
    os.replace(temporary, path)
    return OutputReport(path=str(path), range_id=event_range.range_id,
                        cpu_s=round(time.process_time() - cpu_start, 3),
                        wall_s=round(time.perf_counter() - wall_start, 3))


def serve(channel: PayloadChannel, outdir: Path, runner_timeout_s: float | None) -> int:
    """Ask for ranges and write their outputs until the runner says ``No more events``."""
    while True:
        channel.send(ReadyForEvents().dump())
        text = channel.recv(runner_timeout_s)
        if text is None:
            print(f"nullsim: no answer from the runner within {runner_timeout_s} s", file=sys.stderr)
            return EXIT_RUNNER_SILENT
        try:
            message = parse_runner_message(text)
        except ProtocolError as exc:
            print(f"nullsim: the runner sent a malformed message: {exc}", file=sys.stderr)
            return EXIT_RUNNER_PROTOCOL
        if isinstance(message, NoMoreEvents):
            return 0
        channel.send(write_output(message, outdir).dump())


def _events(path: Path) -> tuple[str, list[int], str]:
    """The input file and event numbers of one output, checked; and its text."""
    try:
        text = path.read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as exc:
        raise NullsimInputError(f"cannot read {path}: {exc}") from None
    lfns, numbers = set(), []
    for line in text.splitlines():
        lfn, _, number = line.rpartition(" ")
        if not lfn or not number.isdigit():
            raise NullsimInputError(f"{path} holds a line that is not '<LFN> <event number>': {line[:80]!r}")
        lfns.add(lfn)
        numbers.append(int(number))
    if not numbers:
        raise NullsimInputError(f"{path} holds no event")
    if len(lfns) != 1:
        raise NullsimInputError(f"{path} holds events of {len(lfns)} input files; a range has one")
    if numbers != list(range(numbers[0], numbers[0] + len(numbers))):
        raise NullsimInputError(f"{path}: the event numbers are not consecutive and ascending")
    return lfns.pop(), numbers, text if text.endswith("\n") else text + "\n"


def merge(listing: Path, output: Path) -> int:
    """Concatenate the listed outputs into ``output`` (written whole or not at all); returns the events."""
    inputs = [Path(line) for line in listing.read_text(encoding="utf-8").splitlines() if line]
    if not inputs:
        raise NullsimInputError(f"{listing} lists no input")
    temporary = output.with_name(f".{output.name}.{os.getpid()}.tmp")
    events = 0
    previous: tuple[Path, str, int] | None = None
    done: set[str] = set()
    try:
        with open(temporary, "w", encoding="ascii") as stream:
            for path in inputs:
                lfn, numbers, text = _events(path)
                if previous is not None and lfn == previous[1]:
                    if numbers[0] <= previous[2]:
                        raise NullsimInputError(f"{path} starts at event {numbers[0]} of {lfn}, not after event "
                                                f"{previous[2]} of {previous[0]}")
                elif lfn in done:
                    raise NullsimInputError(f"{path} goes back to input {lfn}, whose events came before")
                elif previous is not None:
                    done.add(previous[1])
                previous = (path, lfn, numbers[-1])
                stream.write(text)
                events += len(numbers)
        os.replace(temporary, output)
    finally:
        temporary.unlink(missing_ok=True)
    return events


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nullsim", description=__doc__.splitlines()[0])
    parser.add_argument("--outdir", type=Path, default=Path("."), help="where output files go (default: .)")
    parser.add_argument("--runner-timeout", type=float, default=0.0,
                        help="give up (exit 4) when the runner does not answer within this many seconds")
    sub = parser.add_subparsers(dest="command")
    merging = sub.add_parser("merge", help="merge nullsim outputs (the merge.command contract)")
    merging.add_argument("--inputs", type=Path, required=True, help="a file listing the inputs, one per line")
    merging.add_argument("--output", type=Path, required=True, help="the merged file to write")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "merge":
        try:
            events = merge(args.inputs, args.output)
        except (NullsimInputError, OSError) as exc:
            print(f"nullsim merge: {exc}", file=sys.stderr)
            return EXIT_BAD_INPUT
        print(f"nullsim merge: {events} events into {args.output}")
        return 0
    outdir = args.outdir.resolve()
    try:
        outdir.mkdir(parents=True, exist_ok=True)
        channel = PayloadChannel()
    except (OSError, ChannelError, ValueError) as exc:
        print(f"nullsim: {exc}", file=sys.stderr)
        return EXIT_SETUP
    with channel:
        return serve(channel, outdir, args.runner_timeout or None)


if __name__ == "__main__":
    sys.exit(main())

"""ROOT's ``hadd`` behind the merge-command contract: baskets copied as they are (fast cloning), reproducible bytes.

``event-service-hadd --inputs LIST --output PATH`` merges the files LIST names, in its order, with
``hadd -fk``: the inputs' compressed baskets are copied without being decompressed and recompressed, which is
what makes a merge of large range outputs run near the speed of copying their bytes. The target is opened
with ROOT's ``reproducible`` option (a fixed UUID and dates), so a retried merge writes the same bytes, the
same adler32, as the default merge does. ``hadd`` is looked up in ``--hadd``, ``$EVENT_SERVICE_HADD``, the
``PATH``, then in the ``ROOT`` Python package's ``bin/`` (``pip install root`` puts it there, not on the
``PATH``). Exit codes: 0 merged, 2 bad arguments or no ``hadd``, 3 ``hadd`` failed (its output is removed).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from event_service import settings
from event_service.merge.errors import HaddNotFoundError

EXIT_USAGE = 2
EXIT_HADD_FAILED = 3
HADD_ENV = settings.HADD.name


def find_hadd(explicit: str | None = None) -> Path:
    """The ``hadd`` program to run (see the module docstring for where it is looked up)."""
    named = explicit or settings.HADD.get()
    if named:
        found = shutil.which(named)
        if found is None:
            raise HaddNotFoundError(f"hadd {named!r} (from {'--hadd' if explicit else '$' + HADD_ENV}) "
                                    "is not an executable file")
        return Path(found)
    on_path = shutil.which("hadd")
    if on_path is not None:
        return Path(on_path)
    spec = importlib.util.find_spec("ROOT")  # locates the package without importing it (that takes seconds)
    for location in (spec.submodule_search_locations or []) if spec is not None else []:
        candidate = Path(location) / "bin" / "hadd"
        if os.access(candidate, os.X_OK):
            return candidate
    raise HaddNotFoundError(f"no hadd: not given with --hadd or ${HADD_ENV}, not on the PATH, and no ROOT Python "
                            "package holding bin/hadd (install ROOT, e.g. `pip install root`)")


def read_inputs(listing: Path) -> list[Path]:
    """The input paths LIST names, one per line, each an existing file."""
    try:
        lines = listing.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise ValueError(f"cannot read the input list {listing}: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise ValueError(f"input list {listing} is not UTF-8 text: {exc}") from None
    paths = [Path(line) for line in lines if line.strip()]
    if not paths:
        raise ValueError(f"input list {listing} names no file")
    for number, path in enumerate(paths, 1):
        if "?" in str(path) or "#" in str(path):
            raise ValueError(f"input list {listing}, line {number}: {str(path)!r} holds '?' or '#', which ROOT "
                             "reads as file options or an archive member")
        if not path.is_file():
            raise ValueError(f"input list {listing}, line {number}: {path} is not a file")
    return paths


def hadd_command(hadd: Path, listing: Path, output: Path) -> list[str]:
    """The ``hadd`` command line: errors only (``-v 1``; not a line per input), keep the inputs' compression,
    fast-clone, a reproducible target, the inputs read from ``listing`` (hadd's ``@file``: the kernel's limit
    on arguments does not bound their number)."""
    return [str(hadd), "-v", "1", "-fk", f"{output}?reproducible={output.name}", f"@{listing}"]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="event-service-hadd", description=(
        "Merge ROOT files with hadd (fast cloning, reproducible output) under the event service's merge-command "
        "contract; use it as merge.command: event-service-hadd"))
    parser.add_argument("--inputs", required=True, type=Path, help="text file: one input path per line, in order")
    parser.add_argument("--output", required=True, type=Path, help="the merged file to write; must not exist")
    parser.add_argument("--hadd", help=f"the hadd program (default: ${HADD_ENV}, the PATH, the ROOT package)")
    args = parser.parse_args(argv)
    try:
        hadd = find_hadd(args.hadd)
        inputs = read_inputs(args.inputs)
        if args.output.exists():
            raise ValueError(f"output {args.output} already exists")
        if not args.output.parent.is_dir():
            raise ValueError(f"output folder {args.output.parent} does not exist")
    except (ValueError, HaddNotFoundError) as exc:
        print(f"event-service-hadd: {exc}", file=sys.stderr)
        return EXIT_USAGE
    done = subprocess.run(hadd_command(hadd, args.inputs, args.output), stdin=subprocess.DEVNULL, check=False)
    if done.returncode != 0 or not args.output.is_file():
        args.output.unlink(missing_ok=True)
        how = f"exit code {done.returncode}" if done.returncode >= 0 else f"signal {-done.returncode}"
        print(f"event-service-hadd: {hadd} failed ({how}) merging {len(inputs)} files into {args.output}",
              file=sys.stderr)
        return EXIT_HADD_FAILED
    print(f"event-service-hadd: merged {len(inputs)} files into {args.output} ({args.output.stat().st_size} bytes) "
          f"with {hadd}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

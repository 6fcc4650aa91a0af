"""A payload speaking the protocol that sends one bad message on its first range, then behaves (test helper)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import zmq

from payload_runner.channel import CHANNEL_ENV, PAYLOAD_ID_ENV

MODES = ("garbage", "frames", "wrong-id", "outside", "escape", "symlink")


def bad_message(mode: str, range_id: str, elsewhere: Path) -> list[bytes]:
    """The frames the payload sends instead of its report of ``range_id``."""
    here = Path.cwd()
    if mode == "garbage":
        return [b"\xff\xfe\x00 not text at all \x80"]
    if mode == "frames":
        return [b"Ready for events", b"a second frame"]
    if mode == "wrong-id":
        out = here / "HITS.stolen.root"
        out.write_bytes(b"output of a range never sent")
        return [f"{out},ID:rt.9.0-9,CPU:1,WALL:1".encode()]
    elsewhere.mkdir(parents=True, exist_ok=True)
    outside = elsewhere / f"HITS.{range_id}.root"
    outside.write_bytes(b"output written outside the work directory")
    if mode == "outside":
        return [f"{outside},ID:{range_id},CPU:1,WALL:1".encode()]
    if mode == "escape":
        up = os.path.relpath(outside, here)  # ../../…: absolute only in its first segment
        return [f"{here}/{up},ID:{range_id},CPU:1,WALL:1".encode()]
    link = here / f"HITS.{range_id}.link.root"
    link.symlink_to(outside)
    return [f"{link},ID:{range_id},CPU:1,WALL:1".encode()]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mode", choices=MODES, required=True)
    parser.add_argument("--marker", type=Path, required=True, help="exists once some payload misbehaved")
    parser.add_argument("--elsewhere", type=Path, required=True, help="a folder outside the work directory")
    args = parser.parse_args()
    context = zmq.Context()
    sock = context.socket(zmq.DEALER)
    sock.setsockopt(zmq.IDENTITY, os.environ[PAYLOAD_ID_ENV].encode())
    sock.setsockopt(zmq.LINGER, 1000)
    sock.connect(os.environ[CHANNEL_ENV])
    try:
        while True:
            sock.send(b"Ready for events")
            text = sock.recv().decode()
            if text == "No more events":
                return 0
            event_range = json.loads(text)[0]
            range_id = event_range["eventRangeID"]
            if not args.marker.exists():
                args.marker.write_text(range_id)
                print(f"misbehaving on {range_id}: {args.mode}", flush=True)
                sock.send_multipart(bad_message(args.mode, range_id, args.elsewhere))
                if args.mode in ("garbage", "frames"):
                    sock.recv()  # the runner kills this process; nothing comes back
                continue  # asks for events again, without reporting the range it held
            out = Path.cwd() / f"HITS.{range_id}.root"
            out.write_bytes(f"events {event_range['startEvent']}-{event_range['lastEvent']}".encode())
            sock.send(f"{out},ID:{range_id},CPU:0.1,WALL:0.1".encode())
    finally:
        sock.close()
        context.term()


if __name__ == "__main__":
    sys.exit(main())

"""adler32 checksums written as PanDA writes them: 8 lowercase hex digits, zero padded."""

from __future__ import annotations

import re
import zlib
from pathlib import Path
from typing import BinaryIO

ADLER32_PATTERN = re.compile(r"^[0-9a-f]{8}$")
_CHUNK = 1 << 20


def format_adler32(value: int) -> str:
    """Format an adler32 integer the PanDA way (``0000abcd``)."""
    return f"{value & 0xFFFFFFFF:08x}"


def adler32_bytes(data: bytes) -> str:
    """The adler32 of a byte string."""
    return format_adler32(zlib.adler32(data, 1))


def adler32_stream(stream: BinaryIO) -> tuple[str, int]:
    """The adler32 and size of everything left in a binary stream, read in 1 MiB chunks."""
    value, size = 1, 0
    while chunk := stream.read(_CHUNK):
        value = zlib.adler32(chunk, value)
        size += len(chunk)
    return format_adler32(value), size


def adler32_file(path: str | Path) -> tuple[str, int]:
    """The adler32 and size of a file."""
    with open(path, "rb") as stream:
        return adler32_stream(stream)


def normalize_adler32(text: str) -> str:
    """Check and normalize a reported adler32 (case-insensitive, must be 8 hex digits)."""
    lowered = text.strip().lower()
    if not ADLER32_PATTERN.match(lowered):
        raise ValueError(f"adler32 must be 8 hexadecimal digits, got {text!r}")
    return lowered

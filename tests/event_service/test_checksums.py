"""adler32 helpers: PanDA's format, and the same values as the standard library's zlib whatever computes them."""

from __future__ import annotations

import io
import os
import zlib
from pathlib import Path

import pytest

from event_service.checksums import (
    adler32_bytes,
    adler32_file,
    adler32_stream,
    adler32_update,
    format_adler32,
    normalize_adler32,
)


def test_known_values_in_pandas_format() -> None:
    assert adler32_bytes(b"hello") == "062c0215"
    assert adler32_bytes(b"") == "00000001"
    assert format_adler32(0xABCD) == "0000abcd"


@pytest.mark.parametrize("size", [0, 1, 5551, 5552, 1 << 20, (3 << 20) + 17])
def test_the_same_values_as_the_standard_librarys_zlib(size: int, tmp_path: Path) -> None:
    data = os.urandom(size)
    expected = f"{zlib.adler32(data):08x}"
    assert adler32_bytes(data) == expected
    assert adler32_stream(io.BytesIO(data)) == (expected, size)
    (tmp_path / "f").write_bytes(data)
    assert adler32_file(tmp_path / "f") == (expected, size)
    value = 1
    for start in range(0, size, 4093):  # carried over uneven pieces
        value = adler32_update(memoryview(data)[start:start + 4093], value)
    assert format_adler32(value) == expected


def test_reported_values_are_normalized_or_refused() -> None:
    assert normalize_adler32("062C0215") == "062c0215"
    with pytest.raises(ValueError, match="8 hexadecimal digits"):
        normalize_adler32("62c0215")

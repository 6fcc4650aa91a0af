"""Object keys: the task/range/attempt layout and the rules that keep every key inside its store."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from event_service.stores import InvalidKeyError, object_key, validate_key, validate_prefix
from event_service.stores.keys import is_valid_key


def test_object_key_layout() -> None:
    assert object_key("mc_sim", "mc_sim.3.21-30", 2, "HITS.pool.root") == "mc_sim/mc_sim.3.21-30/2/HITS.pool.root"
    assert object_key("t", "1234-5678-9-10", 0, "out_1.root") == "t/1234-5678-9-10/0/out_1.root"


@pytest.mark.parametrize(("task", "range_id", "attempt", "filename"), [
    ("a/b", "r", 1, "f"), ("t", "../r", 1, "f"), ("t", "r", 1, "a/f"), ("t", "r", 1, ".."), ("", "r", 1, "f"),
    ("t", "r", -1, "f"), ("t", "r", True, "f"), ("t", "r", "1", "f"), ("t", "r", 1, ".f"), ("t", "r\\x", 1, "f"),
])
def test_object_key_refuses_bad_parts(task: str, range_id: str, attempt: int, filename: str) -> None:
    with pytest.raises(InvalidKeyError) as raised:
        object_key(task, range_id, attempt, filename)
    assert isinstance(raised.value, ValueError)


@pytest.mark.parametrize("key", ["a", "a/b/c", "Task_1/r.1.1-10/3/HITS.root.1", "t/r:1/1/x+y=z@w,v~u-"])
def test_good_keys(key: str) -> None:
    assert validate_key(key) == key


@pytest.mark.parametrize("key", ["", "/a", "a/", "a//b", "..", "a/../b", ".", "./a", "a\\b", "a\x00b", ".a",
                                 "a/.b", "a b", "a\nb", "a?b", "a#b", "a%2e", "é", "-a", "x" * 256, 42, None])
def test_bad_keys(key: object) -> None:
    with pytest.raises(InvalidKeyError) as raised:
        validate_key(key)
    assert repr(key) in str(raised.value)


def test_prefixes() -> None:
    assert [validate_prefix(p) for p in ["", "t", "t/", "t/r1", "t/r1/"]] == ["", "t", "t/", "t/r1", "t/r1/"]
    for bad in ["/", "/t", "t//", "../", "t/../", ".t", "t/.x", "t\\"]:
        with pytest.raises(InvalidKeyError):
            validate_prefix(bad)


@given(st.lists(st.text(min_size=0, max_size=12), min_size=1, max_size=4))
def test_any_accepted_key_stays_inside_its_root(segments: list[str]) -> None:
    key = "/".join(segments)
    root = Path("/store/root")
    if not is_valid_key(key):
        with pytest.raises(InvalidKeyError):
            validate_key(key)
        return
    assert validate_key(key) == key
    resolved = Path(os.path.normpath(root.joinpath(*key.split("/"))))
    assert resolved.is_relative_to(root) and resolved != root
    assert resolved.relative_to(root).as_posix() == key

"""Archive outputs: several ranges' files in one tar, found by name, read safely, verified and merged."""

from __future__ import annotations

import io
import tarfile
import zipfile
from pathlib import Path

import pytest

from event_service.ledger import Ledger
from event_service.merge.archives import ArchiveReader, find_member
from event_service.merge.completion import check_completion
from event_service.merge.errors import ArchiveError, CorruptedOutputsError
from event_service.merge.part import merge_part, report_corrupted
from event_service.messages import OutputRef, RangeUpdate
from event_service.spec import InputFile
from event_service.statuses import RangeStatus
from event_service.stores import LocalStore
from tests.event_service.merge.conftest import Task, merged_numbers, task_spec, toysim_output


def test_a_member_is_found_by_its_exact_path_or_a_whole_token_in_its_name() -> None:
    names = ["out/HITS.7-3-1-11-1.root", "out/HITS.7-3-1-111-1.root", "log.txt"]
    assert find_member(names, "log.txt") == "log.txt"
    assert find_member(names, "7-3-1-11-1") == "out/HITS.7-3-1-11-1.root"
    assert find_member(names, "7-3-1-111-1") == "out/HITS.7-3-1-111-1.root"
    with pytest.raises(ArchiveError, match=r"no member named '7-3-1-1-1'"):
        find_member(names, "7-3-1-1-1")
    with pytest.raises(ArchiveError, match="2 members hold 'HITS'"):
        find_member(names, "HITS")


def tar_of(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w") as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return path


def test_members_are_copied_by_content_never_by_their_own_paths(tmp_path: Path) -> None:
    archive = tar_of(tmp_path / "a.tar", {"../escape.root": b"one", "/etc/abs.root": b"two"})
    with tarfile.open(archive, "a") as opened:
        link = tarfile.TarInfo("link.root")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        opened.addfile(link)
    with ArchiveReader(archive) as reader:
        assert reader.names() == ["../escape.root", "/etc/abs.root"]  # the link is no regular file
        reader.extract(find_member(reader.names(), "escape"), tmp_path / "x")
    assert (tmp_path / "x").read_bytes() == b"one"
    assert not (tmp_path.parent / "escape.root").exists()


def test_zip_archives_are_read_too_and_garbage_is_refused(tmp_path: Path) -> None:
    with zipfile.ZipFile(tmp_path / "a.zip", "w") as opened:
        opened.writestr("HITS.1-1-1-1-1.root", b"data")
    with ArchiveReader(tmp_path / "a.zip") as reader:
        assert reader.extract(find_member(reader.names(), "1-1-1-1-1"), tmp_path / "y").read_bytes() == b"data"
    (tmp_path / "junk.tar").write_bytes(b"not an archive at all" * 100)
    with pytest.raises(ArchiveError, match="junk.tar is not a readable tar or zip archive"):
        ArchiveReader(tmp_path / "junk.tar")


def archived_task(ledger: Ledger, tmp: Path, inputs: list[InputFile], per_archive: int = 3) -> Task:
    """A task of 12 ranges whose toysim outputs were reported in tars of ``per_archive`` ranges."""
    spec = task_spec("arch", inputs, tmp)
    ledger.create_task(spec)
    store = LocalStore(tmp / "objects")
    task = Task("arch", spec, ledger, store, inputs, tmp)
    claimed = ledger.claim(task.name, "pilot", 1000).ranges
    for start in range(0, len(claimed), per_archive):
        batch = claimed[start:start + per_archive]
        members = {}
        for rng in batch:
            item = next(i for i in inputs if i.lfn == rng.lfn)
            made = toysim_output(tmp / f"HITS.{rng.range_id}.root", item, rng.first_event, rng.last_event)
            members[f"HITS.{rng.range_id}.root"] = made.read_bytes()
        stored = store.put(f"arch/archives/outputs.{start}.tar", tar_of(tmp / f"outputs.{start}.tar", members))
        updates = [RangeUpdate(range_id=rng.range_id, status="finished",
                               output=OutputRef(key=stored.key, adler32=stored.adler32, size=stored.size,
                                                member=rng.range_id)) for rng in batch]
        assert {r.result for r in ledger.update(task.name, "pilot", updates)} == {"accepted"}
    return task


def test_ranges_in_archives_merge_in_event_order(sqlite_ledger: Ledger, tmp_path: Path,
                                                 evnt: list[InputFile]) -> None:
    task = archived_task(sqlite_ledger, tmp_path, evnt)
    assert task.ledger.range_info(task.name, "arch.1.0-9").output.member == "arch.1.0-9"
    assert check_completion(task.ledger, task.name, {None: task.store}).state == "complete"
    merged = [merge_part(part, {None: task.store}, tmp_path / "work") for part in task.plan()]
    assert [n for m in merged for n in merged_numbers(m)] == list(range(1, 121))


def test_a_damaged_archive_sends_back_every_range_in_it_and_a_missing_member_only_its_own(
        sqlite_ledger: Ledger, tmp_path: Path, evnt: list[InputFile]) -> None:
    task = archived_task(sqlite_ledger, tmp_path, evnt)
    first_archive = task.object_path("arch.1.0-9")
    with open(first_archive, "r+b") as opened:
        opened.seek(600)
        opened.write(b"\xde\xad\xbe\xef")
    # the second archive is replaced by one without the member of arch.1.40-49, under the same checksum
    second = task.output("arch.1.30-39")
    rebuilt = tar_of(tmp_path / "rebuilt.tar", {"HITS.arch.1.30-39.root": b"x"})
    task.store.delete(second.key)
    stored = task.store.put(second.key, rebuilt)
    task.ledger.mark_corrupted(task.name, ["arch.1.30-39", "arch.1.40-49", "arch.1.50-59"], "test")
    claimed = {r.range_id for r in task.ledger.claim(task.name, "pilot2", 10).ranges}
    assert claimed == {"arch.1.30-39", "arch.1.40-49", "arch.1.50-59"}
    task.ledger.update(task.name, "pilot2", [RangeUpdate(
        range_id=r, status="finished", output=OutputRef(key=stored.key, adler32=stored.adler32, size=stored.size,
                                                          member=r)) for r in sorted(claimed)])

    with pytest.raises(CorruptedOutputsError) as caught:
        merge_part(task.plan()[0], {None: task.store}, tmp_path / "work")
    reasons = caught.value.reasons
    assert {r for r in reasons if "an archive holding the outputs of 3 ranges" in reasons[r]} == {
        "arch.1.0-9", "arch.1.10-19", "arch.1.20-29"}
    assert all(reasons[r].startswith("output damaged in the store") and "arch/archives/outputs.0.tar" in reasons[r]
               for r in ("arch.1.0-9", "arch.1.10-19"))
    assert reasons["arch.1.40-49"].startswith("output missing") and "no member named 'arch.1.40-49'" in \
        reasons["arch.1.40-49"]
    assert report_corrupted(task.ledger, caught.value) == len(reasons)
    assert task.ledger.range_info(task.name, "arch.1.0-9").status == RangeStatus.READY


def test_completion_checks_each_archive_once_and_names_the_ranges_it_holds(
        sqlite_ledger: Ledger, tmp_path: Path, evnt: list[InputFile]) -> None:
    task = archived_task(sqlite_ledger, tmp_path, evnt, per_archive=4)
    task.store.delete(task.output("arch.2.0-9").key)
    verdict = check_completion(task.ledger, task.name, {None: task.store})
    assert verdict.state == "failed"
    assert verdict.corrupted == ["arch.1.40-49", "arch.1.50-59", "arch.2.0-9", "arch.2.10-19"]


def test_a_member_whose_stream_is_damaged_is_an_archive_error(tmp_path: Path) -> None:
    archive = tmp_path / "outputs.zip"
    payload = bytes(range(256)) * 400
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as opened:
        opened.writestr("HITS.task.1.0-9.root", payload)
    data = bytearray(archive.read_bytes())
    start = data.index(b"HITS.task.1.0-9.root") + len("HITS.task.1.0-9.root")
    for offset in range(start + 10, start + 60):  # the deflate stream, not the headers
        data[offset] ^= 0xFF
    archive.write_bytes(bytes(data))
    with ArchiveReader(archive) as reader, pytest.raises(ArchiveError, match="cannot read member"):
        reader.extract("HITS.task.1.0-9.root", tmp_path / "out.root")
    assert not (tmp_path / "out.root").exists()

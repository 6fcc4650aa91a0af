"""Validation histograms of merged files and their certification against a reference set."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import awkward as ak
import numpy as np
import pytest
import uproot

from event_service.checksums import adler32_file
from event_service.errors import SpecError
from event_service.inputs.generate import make_inputs
from event_service.ledger import Ledger
from event_service.merge.certify import (
    Validation,
    certify_merged,
    compare,
    fill_histograms,
    load_reference,
    validate,
    write_validation,
)
from event_service.merge.errors import ReferenceSetError
from event_service.merge.part import MergedFile
from event_service.merge.register import catalog_entries, register_output
from event_service.messages import OutputRef, RangeUpdate
from event_service.spec import MergeSpec, TaskSpec
from event_service.stores import LocalStore, S3Store
from payload_runner.payloads.toysim import simulate, write_output
from tests.event_service.conftest import spec_data
from tests.servers import S3Server


def toysim_file(folder: Path, name: str, events: int, seed: int, scale_edep: float = 1.0) -> Path:
    """What toysim writes for ``events`` generated events (an independent sample per seed)."""
    inputs = make_inputs(folder / f"evnt-{name}", events=events, files=1, seed=seed)
    with uproot.open(inputs[0].url.removeprefix("file://")) as opened:
        hits = simulate(opened["events"].arrays())
    if scale_edep != 1.0:  # a detector response gone wrong
        hits = {**hits, "edep_sum": hits["edep_sum"] * scale_edep,
                "hit_edep": hits["hit_edep"] * np.float32(scale_edep)}
    write_output(hits, folder / f"{name}.root")
    return folder / f"{name}.root"


@pytest.fixture(scope="module")
def samples(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("certify")
    return {"reference": toysim_file(folder, "reference", 800, seed=101),
            "good": toysim_file(folder, "good", 800, seed=202),
            "bad": toysim_file(folder, "bad", 800, seed=303, scale_edep=1.3)}


def test_every_numeric_branch_gets_a_per_event_histogram(samples: dict[str, Path]) -> None:
    events, histograms = fill_histograms(samples["good"])
    assert events == 800
    by_name = {h.name: h for h in histograms}
    assert set(by_name) == {"nparticles", "nhits", "edep_sum", "mean(hit_edep)", "mean(hit_layer)", "mean(hit_x)",
                            "mean(hit_y)", "mean(hit_z)"}
    with uproot.open(samples["good"]) as opened:
        tree = opened["events"]
        nparticles = tree["nparticles"].array(library="np")
        edep = tree["edep_sum"].array(library="np")
        hit_x = tree["hit_x"].array()
    # Integers get one bin per value, from the smallest to the largest seen.
    particles = by_name["nparticles"]
    assert particles.edges == [v - 0.5 for v in range(int(nparticles.min()), int(nparticles.max()) + 2)]
    assert particles.counts == [int(np.count_nonzero(nparticles == v))
                                for v in range(int(nparticles.min()), int(nparticles.max()) + 1)]
    for histogram in histograms:
        assert sum(histogram.counts) + histogram.underflow + histogram.overflow == histogram.entries
        assert (histogram.underflow, histogram.overflow) == (0, 0)  # binned over its own range
    assert by_name["edep_sum"].entries == 800 and by_name["edep_sum"].mean == pytest.approx(float(edep.mean()))
    assert by_name["mean(hit_x)"].entries == int(ak.sum(ak.num(hit_x) > 0))
    assert by_name["mean(hit_x)"].mean == pytest.approx(float(ak.mean(ak.mean(hit_x, axis=1))))


def test_an_independent_good_sample_is_certified(samples: dict[str, Path], tmp_path: Path) -> None:
    reference, as_json, as_png = write_validation(samples["reference"], tmp_path / "ref")
    assert as_json.name == "reference.root.validation.json" and as_png.read_bytes()[:4] == b"\x89PNG"
    assert reference.certification is None and reference.comparisons == []
    loaded = load_reference(as_json.as_uri())
    assert loaded == reference
    verdict = validate(samples["good"], loaded, reference_url=as_json.as_uri())
    assert verdict.certification == "certified"
    assert {c.name for c in verdict.comparisons} == {h.name for h in reference.histograms}
    assert all(c.passed and c.p_value >= 0.001 and c.ndf > 0 for c in verdict.comparisons)
    # The good sample was filled with the reference's bins.
    assert all(h.edges == reference.histogram(h.name).edges for h in verdict.histograms)  # type: ignore[union-attr]


def test_a_shifted_energy_response_is_suspect(samples: dict[str, Path], tmp_path: Path) -> None:
    reference, _, _ = write_validation(samples["reference"], tmp_path / "ref")
    verdict, as_json, _ = write_validation(samples["bad"], tmp_path / "bad", reference, reference_url="file:///r")
    assert verdict.certification == "suspect"
    failed = {c.name for c in verdict.comparisons if not c.passed}
    assert {"edep_sum", "mean(hit_edep)"} <= failed
    assert not failed & {"nparticles", "nhits", "mean(hit_layer)"}  # what the shift does not touch still agrees
    assert Validation.model_validate_json(as_json.read_text()) == verdict


def test_chi_square_of_identical_and_of_disjoint_histograms(samples: dict[str, Path]) -> None:
    _, histograms = fill_histograms(samples["good"])
    same = compare(histograms[0], histograms[0], 0.01)
    assert (same.chi2, same.p_value, same.passed) == (0.0, 1.0, True)
    moved = histograms[0].model_copy(update={"counts": [0] * len(histograms[0].counts),
                                             "overflow": histograms[0].entries})
    apart = compare(histograms[0], moved, 0.01)
    assert apart.p_value < 1e-10 and not apart.passed
    rebinned = histograms[0].model_copy(update={"edges": [e + 1 for e in histograms[0].edges]})
    assert compare(histograms[0], rebinned, 0.01).note == "binned differently from the reference"


def test_a_branch_of_the_reference_missing_from_the_file_makes_it_suspect(samples: dict[str, Path]) -> None:
    reference = validate(samples["reference"])
    extra = reference.histograms[0].model_copy(update={"name": "mean(hit_time)", "branch": "hit_time"})
    widened = reference.model_copy(update={"histograms": [*reference.histograms, extra]})
    verdict = validate(samples["good"], widened)
    missing = next(c for c in verdict.comparisons if c.name == "mean(hit_time)")
    assert (missing.passed, missing.note, verdict.certification) == (False, "the file has no such branch", "suspect")


@pytest.mark.parametrize(("content", "words"), [
    (b"{not json", "not JSON (line 1, column 2"),
    (json.dumps({"file_name": "x"}).encode(), "not a validation set (events: Field required)"),
])
def test_a_bad_reference_set_is_named(tmp_path: Path, content: bytes, words: str) -> None:
    path = tmp_path / "ref.json"
    path.write_bytes(content)
    with pytest.raises(ReferenceSetError) as caught:
        load_reference(path.as_uri())
    assert str(caught.value).startswith(f"reference set {path.as_uri()}: {words}")
    with pytest.raises(ReferenceSetError, match="cannot read it: No such file or directory"):
        load_reference((tmp_path / "absent.json").as_uri())


def test_a_reference_in_s3_is_read_through_the_store(samples: dict[str, Path], tmp_path: Path, s3_server: S3Server,
                                                     s3_bucket: str) -> None:
    def open_parent(url: str) -> S3Store:
        bucket, _, prefix = url.removeprefix("s3://").partition("/")
        return S3Store(bucket, prefix, endpoint_url=s3_server.endpoint_url, region=s3_server.region,
                       access_key=s3_server.access_key, secret_key=s3_server.secret_key)

    _, as_json, _ = write_validation(samples["reference"], tmp_path / "ref")
    with open_parent(f"s3://{s3_bucket}/refs") as store:
        store.put("toysim.validation.json", as_json)
    url = f"s3://{s3_bucket}/refs/toysim.validation.json"
    assert load_reference(url, open_parent=open_parent) == Validation.model_validate_json(as_json.read_text())
    with pytest.raises(ReferenceSetError, match=f"reference set s3://{s3_bucket}/refs/absent.json: "):
        load_reference(f"s3://{s3_bucket}/refs/absent.json", open_parent=open_parent)


def test_a_custom_merges_non_root_output_is_not_validated(tmp_path: Path) -> None:
    text_file = tmp_path / "merged.txt"
    text_file.write_text("not ROOT")
    merge = MergeSpec.model_validate({"output_url": "file:///tmp/out"})
    assert certify_merged(text_file, tmp_path / "v", merge) is None


def test_the_certification_block_of_a_spec() -> None:
    spec = TaskSpec.parse(spec_data(merge={"output_url": "file:///tmp/out", "certification": {
        "reference": "s3://refs/toysim.validation.json"}}))
    assert spec.merge.certification is not None and spec.merge.certification.min_p_value == 0.001
    with pytest.raises(SpecError, match=r"merge\.certification\.min_p_value"):
        TaskSpec.parse(spec_data(merge={"output_url": "file:///tmp/out", "certification": {
            "reference": "file:///r.json", "min_p_value": 1.5}}))


def test_registration_puts_the_validation_beside_the_file_and_in_the_catalog(samples: dict[str, Path],
                                                                            tmp_path: Path, sqlite_url: str) -> None:
    spec: dict[str, Any] = spec_data(name="cert", events=(800,), per_range=800)
    with Ledger(sqlite_url) as ledger:
        ledger.create_task(TaskSpec.parse(spec))
        [claimed] = ledger.claim("cert", "w1", 1).ranges
        ledger.update("cert", "w1", [RangeUpdate(range_id=claimed.range_id, status="finished", output=OutputRef(
            key=f"cert/{claimed.range_id}/1/HITS.root", adler32="00000001", size=1))])
        merged_path = tmp_path / "work" / "cert.merged._000001.root"
        merged_path.parent.mkdir()
        merged_path.write_bytes(samples["good"].read_bytes())
        adler32, size = adler32_file(merged_path)
        merged = MergedFile(1, merged_path.name, merged_path, 800, adler32, size, (claimed.range_id,), 1, 800)
        reference = validate(samples["reference"])
        verdict, as_json, as_png = write_validation(merged_path, tmp_path / "v", reference, reference_url="file:///r")
        storage = LocalStore(tmp_path / "results")
        entry = register_output(ledger, "cert", merged, storage, "cert.merged", validation=[as_json, as_png],
                                certification=verdict.certification)
        [stored] = catalog_entries(ledger, task="cert")
    assert stored == entry
    assert (entry.certification, entry.validation) == ("certified", f"{storage.url}/{as_json.name}")
    assert storage.head(as_json.name) is not None and storage.head(as_png.name) is not None
    assert entry.to_dict()["certification"] == "certified"

"""The monitor reads a merged file's validation set from beside it in normal storage, for the task page."""

from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient

from event_service.api.app import create_app
from event_service.checksums import adler32_file
from event_service.ledger import Ledger
from event_service.merge.certify import Comparison, Histogram, Validation
from event_service.merge.part import MergedFile
from event_service.merge.register import register_output
from event_service.messages import OutputRef, RangeUpdate
from event_service.stores import LocalStore
from tests.event_service.conftest import make_spec

ADMIN, MONITOR = "validation-admin", "validation-reader"


def merged_file(ledger: Ledger, tmp_path: Path, index: int, range_id: str) -> MergedFile:
    path = tmp_path / "work" / f"val.merged._{index:06d}.root"
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(f"merged file {index}".encode() * 50)
    adler32, size = adler32_file(path)
    return MergedFile(index, path.name, path, 10, adler32, size, (range_id,), 1, 10)


def test_the_validation_set_of_a_merged_file_is_served(ledger: Ledger, tmp_path: Path) -> None:
    results = tmp_path / "results"
    _, token = ledger.create_task(make_spec(name="val", events=(20,), per_range=10,
                                            merge={"output_url": results.as_uri()}))
    claimed = [r.range_id for r in ledger.claim("val", "w1", 2).ranges]
    ledger.update("val", "w1", [RangeUpdate(range_id=rid, status="finished", output=OutputRef(
        key=f"val/{rid}/1/HITS.root", adler32="00000001", size=1)) for rid in claimed])
    storage = LocalStore(results)

    first = merged_file(ledger, tmp_path, 1, claimed[0])
    validation = Validation(
        file_name=first.file_name, events=10, reference="file:///refs/good.validation.json", min_p_value=0.001,
        certification="suspect",
        histograms=[Histogram(name="edep_sum", branch="edep_sum", of="value", edges=[0.0, 1.0, 2.0],
                              counts=[4, 6], entries=10, mean=1.1, std=0.4)],
        comparisons=[Comparison(name="edep_sum", chi2=12.5, ndf=1, p_value=0.0004, passed=False)])
    as_json = tmp_path / "work" / f"{first.file_name}.validation.json"
    as_json.write_text(validation.model_dump_json())
    register_output(ledger, "val", first, storage, "val.merged", validation=[as_json], certification="suspect")
    second = merged_file(ledger, tmp_path, 2, claimed[1])
    register_output(ledger, "val", second, storage, "val.merged")  # a custom merge's file: no validation set

    with TestClient(create_app(ledger, ADMIN, monitor_token=MONITOR)) as client:
        def get(file_name: str, bearer: str = MONITOR) -> tuple[int, object]:
            reply = client.get(f"/api/v1/monitor/tasks/val/outputs/{file_name}/validation",
                               headers={"Authorization": f"Bearer {bearer}"})
            return reply.status_code, reply.json()

        assert get(first.file_name) == (200, validation.model_dump(mode="json"))
        assert get(first.file_name, ADMIN)[0] == 200
        assert get(first.file_name, token)[0] == 403  # task tokens never read the monitoring views
        assert get(second.file_name) == (404, {"detail": f"{second.file_name} of task 'val' has no validation set"})
        assert get("val.merged._000009.root") == (
            404, {"detail": "task 'val' has no merged file 'val.merged._000009.root' in the catalog"})
        # Read once, then kept: the page asks on every refresh without touching the storage again.
        storage.delete(f"{first.file_name}.validation.json")
        assert get(first.file_name) == (200, validation.model_dump(mode="json"))
        detail = client.get("/api/v1/monitor/tasks/val", headers={"Authorization": f"Bearer {MONITOR}"}).json()
    [shown] = [o for o in detail["outputs"] if o["file_name"] == first.file_name]
    assert (shown["certification"], shown["validation"]) == ("suspect", f"{storage.url}/{as_json.name}")

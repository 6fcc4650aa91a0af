"""The monitor page in a real headless chromium: it loads cleanly, shows the ledger's progress, follows it."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from event_service.api.app import create_app
from event_service.api.server import ServerThread
from event_service.checksums import adler32_file
from event_service.ledger import Ledger
from event_service.merge.certify import Comparison, Histogram, Validation
from event_service.merge.part import MergedFile
from event_service.merge.register import register_output
from event_service.messages import OutputRef, RangeUpdate
from event_service.stores import LocalStore
from tests.event_service.api.monitor.cdp import Page, chromium
from tests.event_service.conftest import make_spec

pytestmark = pytest.mark.browser

ADMIN = "page-test-admin"
MONITOR = "page-test-monitor"
TOKEN_KEY = "event-service-monitor-token"
ARTIFACTS = Path(__file__).resolve().parents[4] / ".artifacts"


@dataclass
class Served:
    url: str
    ledger: Ledger


def r(i: int) -> str:
    return f"live.1.{10 * i}-{10 * i + 9}"


def finish(ledger: Ledger, worker: str, *indices: int) -> None:
    results = ledger.update("live", worker, [RangeUpdate(
        range_id=r(i), status="finished", cpu_s=0.8 * (i + 1), wall_s=1.0 * (i + 1),
        output=OutputRef(key=f"live/{r(i)}/out.root", adler32="0000abcd", size=100)) for i in indices])
    assert {res.result for res in results} == {"accepted"}


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    """Task ``live``: 60 events in 6 ranges; w1 on node-a holds four and has finished two."""
    with Ledger(f"sqlite:///{tmp_path / 'ledger.sqlite'}") as ledger:
        ledger.create_task(make_spec(name="live", events=(60,), per_range=10,
                                     merge={"output_url": (tmp_path / "results").as_uri()}))
        ledger.claim("live", "w1", 4, host="node-a")
        finish(ledger, "w1", 0, 1)
        with ServerThread(create_app(ledger, ADMIN, monitor_token=MONITOR)) as server:
            yield Served(server.url, ledger)


def keep(page: Page, tmp_path: Path, name: str) -> Path:
    """A screenshot in the test's folder, copied to .artifacts/ in the repository."""
    shot = page.screenshot(tmp_path / name)
    ARTIFACTS.mkdir(exist_ok=True)
    kept = Path(shutil.copy(shot, ARTIFACTS / name))
    print(f"screenshot: {kept}")
    return kept


ROW = "document.querySelector('tr[data-task=\"live\"]')"
SUMMARY = "document.querySelector('section.summary[data-task=\"live\"]')"
SEGMENTS = ("Object.fromEntries([...{0}.querySelectorAll('.bar .seg')]"
            ".map(s => [s.dataset.status, Number(s.dataset.count)]))")


def test_the_page_shows_the_ledger_and_follows_it(served: Served, tmp_path: Path) -> None:
    with chromium(tmp_path / "profile") as page:
        # a user who has given the monitor token in this tab before (the login form is tested below)
        page.call("Page.addScriptToEvaluateOnNewDocument",
                  source=f"sessionStorage.setItem({json.dumps(TOKEN_KEY)}, {json.dumps(MONITOR)})")
        page.navigate(f"{served.url}/monitor/?refresh=1")

        # the task list: the ledger's progress
        assert page.wait_for(f"{ROW}?.dataset.eventsDone", "the task's row") == "20"
        assert page.evaluate(f"{ROW}.querySelector('.events').textContent") == "20 / 60 events (33.3 %)"
        assert page.evaluate(SEGMENTS.format(ROW)) == {"finished": 2, "sent": 2, "ready": 2}
        assert page.evaluate(f"{ROW}.querySelector('.workers').textContent") == "1"
        assert page.evaluate(f"{ROW}.dataset.state") == "running"

        # ranges finish: the page follows by itself, without reloading
        page.evaluate("window.stillTheSamePage = true")
        updates = int(page.evaluate("document.body.dataset.updates"))
        finish(served.ledger, "w1", 2, 3)
        page.wait_for(f"{ROW}.dataset.eventsDone === '40'", "40 events done")
        assert page.evaluate(f"{ROW}.querySelector('.events').textContent") == "40 / 60 events (66.7 %)"
        assert page.evaluate(SEGMENTS.format(ROW)) == {"finished": 4, "ready": 2}
        assert page.evaluate("window.stillTheSamePage") is True
        assert int(page.evaluate("document.body.dataset.updates")) > updates
        keep(page, tmp_path, "monitor-task-list.png")

        # the task page
        page.evaluate(f"{ROW}.querySelector('a.task-link').click()")
        page.wait_for(f"{SUMMARY}?.dataset.eventsDone === '40'", "the task page")
        assert page.evaluate("location.search") == "?task=live&refresh=1"
        charts = page.evaluate("[...document.querySelectorAll('svg[data-chart]')].map(c => c.dataset.chart)")
        assert charts == ["rate", "durations", "efficiency", "attempts"]
        # the duration histogram counts the four finished ranges; the attempts chart: 4 ranges once, 2 never
        assert page.evaluate("[...document.querySelectorAll('svg[data-chart=durations] rect')]"
                             ".reduce((n, r) => n + Number(r.dataset.value), 0)") == 4
        assert page.evaluate("[...document.querySelectorAll('svg[data-chart=attempts] rect')]"
                             ".map(r => Number(r.dataset.value))") == [2, 4]
        assert page.evaluate("[...document.querySelectorAll('table[data-table=workers] tbody tr')]"
                             ".map(tr => [...tr.cells].slice(0, 3).map(c => c.textContent))") == [
            ["w1", "node-a", "live"]]
        served.ledger.claim("live", "w2", 2, host="node-b")
        served.ledger.update("live", "w2", [RangeUpdate(range_id=r(4), status="failed",
                                                        error_code="ERR_PAYLOAD_CRASH")])
        served.ledger.claim("live", "w2", 1, host="node-b")
        finish(served.ledger, "w2", 4, 5)
        page.wait_for(f"{SUMMARY}.dataset.state === 'done'", "the task done")
        for table, row in (("failures-by-code", ["ERR_PAYLOAD_CRASH", "1"]), ("failures-by-host", ["node-b", "1"])):
            assert page.evaluate(f"[...document.querySelectorAll('table[data-table={table}] tbody tr')]"
                                 ".map(tr => [...tr.cells].map(c => c.textContent))") == [row]
        assert page.evaluate("[...document.querySelectorAll('svg[data-chart=attempts] rect')]"
                             ".map(r => Number(r.dataset.value))") == [5, 1]
        assert page.evaluate(f"{SUMMARY}.querySelector('.events').textContent") == "60 / 60 events (100 %)"
        assert page.evaluate(f"{SUMMARY}.querySelector('.eta').textContent") == "0 s"
        assert page.evaluate(SEGMENTS.format(SUMMARY)) == {"finished": 6}

        # a merged file is registered with its validation histograms: the page reads and draws them
        merged = tmp_path / "work" / "live.merged._000001.root"
        merged.parent.mkdir()
        merged.write_bytes(b"merged events" * 100)
        adler32, size = adler32_file(merged)
        validation = Validation(file_name=merged.name, events=60, reference="file:///refs/live.validation.json",
                                min_p_value=0.001, certification="certified", histograms=[
                                    Histogram(name=name, branch=name, of="value", edges=[0.0, 1.0, 2.0, 3.0],
                                              counts=[10, 30, 20], entries=60) for name in ("nhits", "edep_sum")],
                                comparisons=[Comparison(name=name, chi2=1.0, ndf=2, p_value=0.6, passed=True)
                                             for name in ("nhits", "edep_sum")])
        as_json = merged.parent / f"{merged.name}.validation.json"
        as_json.write_text(validation.model_dump_json())
        register_output(served.ledger, "live", MergedFile(1, merged.name, merged, 60, adler32, size,
                                                          tuple(r(i) for i in range(6)), 1, 60),
                        LocalStore(tmp_path / "results"), "live.merged", validation=[as_json],
                        certification="certified")
        card = f"document.querySelector('section[data-validation=\"{merged.name}\"]')"
        page.wait_for(f"{card}?.querySelectorAll('figure[data-histogram]').length === 2", "the validation card")
        assert page.evaluate(f"{card}.querySelector('.badge').textContent") == "certified"
        assert page.evaluate(f"[...{card}.querySelectorAll('figure svg rect')].map(r => Number(r.dataset.value))") \
            == [10, 30, 20, 10, 30, 20]
        keep(page, tmp_path, "monitor-task-page.png")

        assert page.errors() == []
        # nothing came from anywhere but this server (no CDN, no font service)
        assert {url.split("/monitor/")[0].split("/api/")[0] for url in page.requested_urls()
                if not url.startswith("data:")} == {served.url}


def test_standalone_the_page_asks_for_the_monitor_token(served: Served, tmp_path: Path) -> None:
    with chromium(tmp_path / "profile") as page:
        page.navigate(f"{served.url}/monitor/?refresh=1")
        page.wait_for("!document.getElementById('login').hidden", "the token form")
        assert page.evaluate("document.getElementById('view').textContent") == ""
        page.evaluate(f"document.getElementById('token').value = {json.dumps(MONITOR)}; "
                      "document.getElementById('login').requestSubmit()")
        assert page.wait_for(f"{ROW}?.dataset.eventsDone", "the task list") == "20"
        assert page.evaluate("document.getElementById('login').hidden") is True
        assert page.evaluate(f"sessionStorage.getItem({json.dumps(TOKEN_KEY)})") == MONITOR
        assert MONITOR not in page.evaluate("document.documentElement.outerHTML")  # kept, never shown
        # the only error: the first request, refused before the token was given
        assert [e for e in page.errors() if "401" not in e] == []

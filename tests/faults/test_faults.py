"""One real task through kill -9, SIGTERM, an object-store outage, lost database connections and corrupted outputs."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import uproot

from event_service.api.client import AdminClient
from event_service.inputs.generate import make_inputs
from event_service.ledger import Ledger
from event_service.merge.completion import check_completion
from event_service.merge.errors import CorruptedOutputsError
from event_service.merge.part import MergedFile, merge_part, report_corrupted
from event_service.merge.plan import plan_merge
from event_service.spec import TaskSpec
from event_service.stores import ObjectStore, S3Store
from tests import pg
from tests.faults.harness import Deployment, terminate_backends
from tests.servers import RestartableSeaweedFS, S3Server

TASK = "faults"
EVENTS, FILES, PER_RANGE = 600, 2, 5
RANGES = EVENTS // PER_RANGE
COST_MS = 80  # toysim CPU per event: about 0.4 s of CPU per event range
LEASE_S = 10
MAX_ATTEMPTS = 8  # a range may lose attempts to a kill, the outage and a corruption and still finish
FIRST_RUNNERS = 6
KILLED = FIRST_RUNNERS // 3
LATE_RUNNERS = 2
OUTAGE_S = 20.0
CORRUPT_EVERY = 20  # every 20th output: 5 %
PER_MERGED_FILE = 200
RUNNER_OPTIONS = ("--workers", "1", "--grace", "30", "--outage-timeout", "120")
SUITE_DEADLINE_S = 360.0  # the watchdog's bound on the whole run; phases have their own deadlines
ADMIN = "faults-admin"
PREFIX = "ranges"

Transition = dict[str, Any]


def runner_environment(server: S3Server) -> dict[str, str]:
    """This environment with the test S3 server's credentials as the only AWS ones."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("AWS_")}
    env.update(AWS_ACCESS_KEY_ID=server.access_key, AWS_SECRET_ACCESS_KEY=server.secret_key,
               AWS_DEFAULT_REGION=server.region)
    return env


def task_spec(inputs_dir: Path, bucket: str, endpoint_url: str, merged: Path) -> TaskSpec:
    inputs = make_inputs(inputs_dir, events=EVENTS, files=FILES)
    return TaskSpec.parse({
        "name": TASK, "inputs": [item.model_dump() for item in inputs], "events_per_range": PER_RANGE,
        "max_attempts": MAX_ATTEMPTS, "lease_seconds": LEASE_S, "workers": FIRST_RUNNERS,
        "payload": {"command": f"toysim --cost-ms {COST_MS}"},
        "object_store": {"url": f"s3://{bucket}/{PREFIX}", "endpoint_url": endpoint_url},
        "merge": {"output_url": merged.as_uri(), "max_events_per_file": PER_MERGED_FILE},
    }, "fault-injection task")


def corrupt_object(client: Any, bucket: str, key: str) -> None:
    """Overwrite an object's bytes in the middle, keeping its size and its metadata (adler32 included)."""
    head = client.head_object(Bucket=bucket, Key=key)
    data = bytearray(client.get_object(Bucket=bucket, Key=key)["Body"].read())
    middle = len(data) // 2
    data[middle:middle + 64] = bytes(b ^ 0xFF for b in data[middle:middle + 64])
    client.put_object(Bucket=bucket, Key=key, Body=bytes(data), Metadata=head["Metadata"])
    after = client.head_object(Bucket=bucket, Key=key)
    assert (after["ContentLength"], after["Metadata"]) == (head["ContentLength"], head["Metadata"])


def merge_task(ledger: Ledger, spec: TaskSpec, stores: Mapping[str | None, ObjectStore],
               workdir: Path) -> tuple[list[MergedFile], dict[str, str]]:
    """Merge every part of the plan as the Airflow merge does: corrupted outputs are marked and listed."""
    plan = plan_merge(ledger.outputs(spec.name), spec.name, spec.merge.max_events_per_file,
                      ranges=spec.event_ranges())
    merged: list[MergedFile] = []
    caught: dict[str, str] = {}
    for part in plan:
        try:
            merged.append(merge_part(part, stores, workdir))
        except CorruptedOutputsError as exc:
            report_corrupted(ledger, exc)
            caught.update(exc.reasons)
    return merged, caught


def event_numbers(path: Path) -> list[int]:
    with uproot.open(path) as opened:
        return [int(n) for n in opened["events"]["event_number"].array(library="np")]


def by_range(history: Iterable[Transition]) -> dict[str, list[Transition]]:
    found: dict[str, list[Transition]] = defaultdict(list)
    for t in history:
        found[t["range_id"]].append(t)
    return found


def lost_to(history: Iterable[Transition], code: str, after: float = 0.0,
            holders: Callable[[str | None], bool] = lambda _worker: True) -> set[str]:
    """Ranges that went back to ready with error ``code`` after ``after`` while held by a matching worker."""
    lost = set()
    for range_id, moves in by_range(history).items():
        holder = None
        for t in moves:
            if t["to_status"] == "sent":
                holder = t["worker"]
            if t["error_code"] == code and t["to_status"] == "ready" and t["at"] >= after and holders(holder):
                lost.add(range_id)
    return lost


def redispatched(moves: list[Transition], after: float, away_from: set[str]) -> bool:
    """A ``sent`` to another worker after ``after``, then ``finished``."""
    sent = [i for i, t in enumerate(moves) if t["to_status"] == "sent" and t["at"] >= after
            and t["worker"] not in away_from]
    return bool(sent) and any(t["to_status"] == "finished" for t in moves[sent[0]:])


@pytest.fixture
def weed() -> Iterator[RestartableSeaweedFS]:
    """A SeaweedFS of this test's own, which it stops and starts again."""
    with RestartableSeaweedFS() as server:
        yield server


@pytest.mark.faults
def test_one_task_survives_every_fault(pg_server: str, weed: RestartableSeaweedFS, tmp_path: Path,
                                       record_property: Callable[[str, object], None]) -> None:
    figures: dict[str, Any] = {"ranges": RANGES, "events": EVENTS, "events_per_range": PER_RANGE,
                               "toysim_cost_ms": COST_MS, "lease_s": LEASE_S}
    with contextlib.ExitStack() as stack:
        schema = stack.enter_context(pg.fresh_schema(pg_server))
        s3 = weed.start()
        admin_s3 = s3.client()
        stack.callback(admin_s3.close)
        bucket = f"faults-{secrets.token_hex(4)}"
        admin_s3.create_bucket(Bucket=bucket)
        spec = task_spec(tmp_path / "evnt", bucket, s3.endpoint_url, tmp_path / "merged")
        ledger = stack.enter_context(Ledger(schema.url, pool_size=2, max_overflow=2))
        api_application = f"{schema.application_name}-api"
        deploy = stack.enter_context(Deployment(tmp_path / "run", TASK, ledger, runner_environment(s3),
                                                SUITE_DEADLINE_S))
        deploy.start_api(pg.schema_url(pg_server, schema.name, api_application), ADMIN)
        with AdminClient(deploy.api_url, ADMIN) as admin:
            deploy.token = admin.create_task(spec).token
        stores: dict[str | None, ObjectStore] = {None: stack.enter_context(S3Store(
            bucket, PREFIX, endpoint_url=s3.endpoint_url, region=s3.region, access_key=s3.access_key,
            secret_key=s3.secret_key))}

        began, began_wall = time.monotonic(), time.time()
        phases: dict[str, float] = {}

        def phase(name: str) -> None:
            phases[name] = round(time.monotonic() - began, 1)

        first = [deploy.start_runner(f"runner-{n}", *RUNNER_OPTIONS).name for n in range(1, FIRST_RUNNERS + 1)]
        victims, drained, survivors = set(first[:KILLED]), first[KILLED], first[KILLED + 1:]

        # 1. kill -9 a third of the runners while they hold ranges.
        deploy.wait_until(lambda: deploy.finished() >= RANGES // 10 and all(deploy.held().get(v) for v in victims),
                          "tenth of the ranges finished while the runners to kill hold ranges", 150)
        for name in sorted(victims):
            deploy.kill(name)
        killed_at = time.time()
        phase("kill -9")
        in_flight_at_kill = {r for name in victims for r in deploy.held().get(name, ())}
        assert in_flight_at_kill, "the killed runners held no range"

        # 2. SIGTERM another runner: it drains and exits 0, holding nothing.
        deploy.wait_until(lambda: bool(deploy.held().get(drained)), f"range held by {drained}", 60)
        deploy.terminate(drained)
        sigterm_at, sigterm_mono = time.time(), time.monotonic()
        phase("SIGTERM")
        code = deploy.wait_exit(drained, 90)
        drain_s = time.monotonic() - sigterm_mono
        drained_summary = deploy.runners[drained].summary()
        assert code == 0, deploy.diagnosis()
        assert drained_summary is not None and drained_summary["reason"] == "drained", drained_summary
        assert drained not in deploy.held(), "the drained runner still holds ranges"

        # 3. The dispatch API's database connections terminated while runners work.
        terminated = [terminate_backends(pg_server, api_application)]
        phase("pg_terminate_backend 1")
        assert terminated[0] >= 1, "the API held no database connection to terminate"
        deploy.wait_for_progress(3, "after the API lost its database connections", 90)

        # 4. The object store stopped for 20 s, then started again on the same ports and data.
        deploy.wait_until(lambda: deploy.finished() >= RANGES * 3 // 10, "30 % of the ranges finished", 150)
        in_flight_at_outage = {r for name in survivors for r in deploy.held().get(name, ())}
        outage_at = time.time()
        weed.stop()
        phase("object store stopped")
        stopped = time.monotonic()
        while time.monotonic() - stopped < OUTAGE_S:
            deploy.check()  # a runner that dies while the store is down fails the test here
            time.sleep(0.2)
        assert [n for n in survivors if deploy.runners[n].process.poll() is None] == survivors
        weed.start()
        store_back_at = time.time()
        phase("object store back")

        # 5. New runners join as the store comes back (while ranges are surely left for them), and the API
        # loses its database connections again while the survivors report their kept outputs.
        late = [deploy.start_runner(f"runner-{n}", *RUNNER_OPTIONS).name
                for n in range(FIRST_RUNNERS + 1, FIRST_RUNNERS + 1 + LATE_RUNNERS)]
        terminated.append(terminate_backends(pg_server, api_application))
        second_loss_at = time.time()
        phase("pg_terminate_backend 2")

        def each_finished_one(names: list[str], after: float) -> bool:
            finishers = {t["worker"] for t in ledger.transitions(TASK) if t["to_status"] == "finished"
                         and t["at"] > after}
            return finishers.issuperset(names)

        deploy.wait_until(lambda: each_finished_one(survivors, store_back_at),
                          "finished range from every surviving runner after the store came back", 120)
        phase("runners recovered")
        deploy.wait_until(lambda: each_finished_one(late, second_loss_at), "finished range from every new runner", 90)
        phase("new runners working")

        # 6. Every range finished; the runners leave on their own, exit code 0.
        deploy.wait_until(lambda: deploy.counts() == {"finished": RANGES}, "finished task", 240)
        for name in [*survivors, *late]:
            assert deploy.wait_exit(name, 90) == 0, deploy.diagnosis()
        phase("all ranges finished")

        # 7. 5 % of the stored outputs corrupted after they were reported finished.
        outputs = ledger.outputs(TASK)
        corrupted = {o.range_id: o for o in outputs[::CORRUPT_EVERY]}
        for output in corrupted.values():
            corrupt_object(admin_s3, bucket, f"{PREFIX}/{output.key}")
        corrupted_at = time.time()
        verdict = check_completion(ledger, TASK, stores)
        assert verdict.state == "complete", verdict.message  # the metadata still match: only the bytes differ
        merged, caught = merge_task(ledger, spec, stores, tmp_path / "merge-1")
        phase("first merge")
        assert set(caught) == set(corrupted), caught
        assert deploy.counts() == {"finished": RANGES - len(corrupted), "ready": len(corrupted)}

        # 8. The corrupted ranges are re-dispatched, finish on their next attempt, and the merge succeeds.
        redo = deploy.start_runner(f"runner-{FIRST_RUNNERS + LATE_RUNNERS + 1}", *RUNNER_OPTIONS).name
        assert deploy.wait_exit(redo, 120) == 0, deploy.diagnosis()
        assert deploy.counts() == {"finished": RANGES}
        verdict = check_completion(ledger, TASK, stores)
        assert verdict.state == "complete", verdict.message
        merged, caught = merge_task(ledger, spec, stores, tmp_path / "merge-2")
        assert not caught, caught
        phase("second merge")
        wall_s = time.monotonic() - began

        history = ledger.transitions(TASK)
        finished_rows = ledger.finished_ranges(TASK)
        summaries = {name: runner.summary() for name, runner in deploy.runners.items()}
        outputs_made = [o for runner in deploy.runners.values() for o in runner.outputs()]
        answers = deploy.api_answers_by_status()

    # The merged files hold exactly the task's events, each once.
    seen: Counter[int] = Counter()
    for item in merged:
        seen.update(event_numbers(item.path))
    assert seen == Counter(range(1, EVENTS + 1))
    assert sum(item.events for item in merged) == EVENTS

    moves = by_range(history)
    # Every range a killed runner held came back when its lease lapsed and went to another worker; no other
    # lease lapsed (the drained runner gave its ranges back, the survivors kept theirs through every fault).
    lost_to_kill = lost_to(history, "lease_expired", killed_at, lambda worker: worker in victims)
    assert lost_to_kill == in_flight_at_kill
    assert lost_to(history, "lease_expired") == lost_to_kill
    assert all(redispatched(moves[r], killed_at, victims) for r in in_flight_at_kill)

    # The drained runner finished or gave back what it held; none of its ranges waited for a lease to lapse.
    given_back = {t["range_id"] for t in history if t["worker"] == drained and t["from_status"] == "sent"
                  and t["to_status"] == "ready" and t["at"] >= sigterm_at}
    drained_finished = {t["range_id"] for t in history if t["worker"] == drained and t["to_status"] == "finished"
                        and t["at"] >= sigterm_at}
    assert given_back or drained_finished

    # The runners saw the outage (uploads failed, then went up again once the store answered); any range
    # whose output could not be kept failed and was re-dispatched.
    reuploads = sum((summaries[name] or {}).get("reuploads", 0) for name in survivors)
    assert reuploads >= 1, "no runner had to upload an output again: the outage went unnoticed"
    lost_to_outage = lost_to(history, "ERR_STAGEOUT", outage_at)
    assert all(redispatched(moves[r], outage_at, set()) for r in lost_to_outage)

    # Every corrupted output was re-dispatched and finished on the next attempt.
    for range_id in corrupted:
        steps = [(t["from_status"], t["to_status"]) for t in moves[range_id] if t["at"] >= corrupted_at]
        assert steps[:2] == [("finished", "corrupted"), ("corrupted", "ready")], steps
        assert redispatched(moves[range_id], corrupted_at, set()), moves[range_id]
    final_attempt = {row.range_id: row.attempt for row in finished_rows}
    assert all(final_attempt[r] == o.attempt + 1 for r, o in corrupted.items())

    # No request failed with a server error other than a deliberate 503 (retried by the runners).
    assert not {code for code in answers if code >= 500 and code != 503}, answers

    # CPU: what the payloads spent on outputs that never counted, by cause, against the ranges in flight.
    final = {(row.range_id, row.attempt) for row in finished_rows}
    cause_of = {(t["range_id"], t["attempt"]): t["error_code"] for t in history
                if t["to_status"] == "ready" and t["error_code"]}
    lost_cpu: dict[str, float] = defaultdict(float)
    lost_outputs: Counter[str] = Counter()
    for o in outputs_made:
        key = (o["range_id"], o["attempt"])
        if key not in final:
            cause = {"lease_expired": "kill -9", "ERR_STAGEOUT": "store outage",
                     "corrupted": "corruption"}.get(cause_of.get(key) or "", cause_of.get(key) or "unknown")
            lost_cpu[cause] += o["cpu_s"]
            lost_outputs[cause] += 1
    range_cpu = max(o["cpu_s"] for o in outputs_made)
    assert lost_outputs["kill -9"] <= len(in_flight_at_kill)
    assert lost_cpu["kill -9"] <= len(in_flight_at_kill) * range_cpu
    assert lost_outputs["store outage"] <= len(in_flight_at_outage)
    assert lost_cpu["store outage"] <= len(in_flight_at_outage) * range_cpu
    assert lost_outputs["corruption"] == len(corrupted)
    assert set(lost_outputs) <= {"kill -9", "store outage", "corruption"}, lost_outputs

    figures.update({
        "runners": {"started": len(summaries), "killed": sorted(victims), "drained": drained, "late": late,
                    "redo": redo},
        "kill -9": {"in_flight": len(in_flight_at_kill), "redispatched": len(lost_to_kill),
                    "outputs_lost": lost_outputs["kill -9"],
                    "cpu_lost_in_outputs_s": round(lost_cpu["kill -9"], 2),
                    "cpu_bound_s": round(len(in_flight_at_kill) * range_cpu, 2)},
        "SIGTERM": {"exit_code": code, "finished_while_draining": len(drained_finished),
                    "given_back": len(given_back), "released_by_runner": drained_summary["released"],
                    "seconds_to_exit": round(drain_s, 1)},
        "store outage": {"seconds": OUTAGE_S, "in_flight": len(in_flight_at_outage),
                         "uploads_again": reuploads, "redispatched": len(lost_to_outage),
                         "outputs_lost": lost_outputs["store outage"],
                         "cpu_lost_in_outputs_s": round(lost_cpu["store outage"], 2),
                         "claims_during": sum(1 for t in history if t["to_status"] == "sent"
                                              and outage_at <= t["at"] < store_back_at)},
        "pg_terminate_backend": {"connections_ended": terminated,
                                 "api_answers": {str(k): v for k, v in sorted(answers.items())}},
        "corruption": {"corrupted": len(corrupted), "caught_by_merge": len(corrupted),
                       "redispatched": len(corrupted), "cpu_lost_in_outputs_s": round(lost_cpu["corruption"], 2)},
        "cpu_s": {"payload_total": round(sum(o["cpu_s"] for o in outputs_made), 2),
                  "in_merged_outputs": round(sum(r.cpu_s or 0.0 for r in finished_rows), 2),
                  "max_per_range": round(range_cpu, 3)},
        "merged_files": [{"file": m.file_name, "events": m.events, "adler32": m.adler32} for m in merged],
        "phases_s": phases, "wall_s": round(wall_s, 1), "started_at": began_wall,
    })
    print("\nfault-injection figures:\n" + "\n".join(f"  {key}: {json.dumps(value)}"
                                                      for key, value in figures.items()))
    record_property("fault_figures", json.dumps(figures))

"""The PanDA server methods a pilot calls, over the ledger: getJob, updateJob, getEventRanges, updateEventRanges.

Each method takes the request's fields (see ``event_service.api.panda.wire``) and returns the reply as a dict
with PanDA's ``StatusCode`` (0 success, 20 no jobs, 30 failure). A malformed request raises
PandaRequestError before anything in the ledger changes; in a batch of range reports, each entry is judged
on its own and ``Returns`` says which were taken.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from event_service.api.errors import PandaRequestError, UnservableStoreError
from event_service.api.panda.ids import PandaRangeId
from event_service.api.panda.jobs import (
    ConsumerJob,
    create_job,
    get_job,
    set_state,
    task_name,
)
from event_service.api.panda.site import (
    StorageEndpoint,
    queue_description,
    task_endpoints,
)
from event_service.api.panda.wire import int_field, json_field, text_field
from event_service.checksums import normalize_adler32
from event_service.ledger import Ledger
from event_service.messages import MAX_BATCH, MAX_OBJECT_BYTES, OutputRef, RangeUpdate
from event_service.spec import LFN_PATTERN, TaskSpec
from event_service.statuses import RangeStatus, TaskState

log = logging.getLogger(__name__)

OK, NO_JOBS, FAILURE = 0, 20, 30
# The generic PanDA pilot runs ./<basename of transformation> <jobPars>; it fetches the script only from a
# few known URLs, or copies it from $HARVESTER_WORKDIR (payload_runner/pilot_shim holds it).
LAUNCHER = "eventservice-payload"
DEFAULT_TRANSFORMATION = f"http://pandaserver-doma.cern.ch:25080/trf/user/{LAUNCHER}"
CHANNEL_MARKER = "PILOT_EVENTRANGECHANNEL"
RANGE_STATUS = {"running": "running", "finished": "finished", "done": "finished", "failed": "failed",
                "fatal": "fatal", "cancelled": "failed"}


@dataclass(frozen=True)
class PandaSettings:
    """What the server puts in consumer jobs."""

    transformation: str = DEFAULT_TRANSFORMATION
    max_walltime_s: int = 86_400
    max_ranges_per_call: int = 100


@dataclass
class _Entry:
    """One range report of an updateEventRanges call, with its archive when version 1 gave one."""

    raw: Any
    archive: Mapping[str, Any] | None
    result: bool = False
    reason: str | None = None
    range_id: PandaRangeId | None = None


class PandaService:
    """PanDA's server methods for the tasks in one ledger."""

    def __init__(self, ledger: Ledger, settings: PandaSettings | None = None) -> None:
        self.ledger = ledger
        self.settings = settings or PandaSettings()

    # -- queues ---------------------------------------------------------------------------------------

    def _assigned(self, queue: str) -> list[tuple[int, TaskSpec]]:
        """Running tasks served to ``queue``, oldest first, with their ledger ids."""
        found = []
        for name in self.ledger.task_names():
            spec = self.ledger.task_spec(name)
            if spec.panda is not None and queue in spec.panda.queues:
                found.append((self.ledger.task(name).id, spec))
        return sorted(found, key=lambda item: item[0])

    def queue_data(self, queue: str) -> dict[str, Any]:
        """The queue description for ``--queuedata-url``: its storage is the newest running task's store."""
        for _task_id, spec in reversed(self._assigned(queue)):
            if self.ledger.status(spec.name).state != TaskState.RUNNING:
                continue
            assert spec.panda is not None
            try:
                endpoints = task_endpoints(spec)
            except UnservableStoreError:
                continue
            return queue_description(queue, endpoints, zip_time_gap=spec.panda.zip_time_gap, cores=spec.panda.cores)
        return queue_description(queue, [], zip_time_gap=60, cores=1)

    def schedconfig(self) -> dict[str, Any]:
        """Every queue some task is served to, described, keyed by name."""
        queues = sorted({queue for name in self.ledger.task_names()
                         if (panda := self.ledger.task_spec(name).panda) is not None for queue in panda.queues})
        return {queue: self.queue_data(queue) for queue in queues}

    def storage_data(self) -> dict[str, Any]:
        """Every store of every task served to PanDA, keyed by endpoint name (for ``--storagedata-url``)."""
        described: dict[str, Any] = {}
        for name in self.ledger.task_names():
            spec = self.ledger.task_spec(name)
            if spec.panda is None:
                continue
            try:
                endpoints = task_endpoints(spec)
            except UnservableStoreError:
                continue
            for endpoint in endpoints:
                described[endpoint.name] = endpoint.describe(spec.panda.queues[0])
        return described

    # -- jobs -----------------------------------------------------------------------------------------

    def get_job(self, fields: Mapping[str, Any]) -> dict[str, Any]:
        """A consumer job of the oldest running task of the pilot's queue that has ranges ready."""
        queue = text_field(fields, "computingElement", required=False) or text_field(fields, "siteName")
        assert queue is not None
        node = text_field(fields, "node", required=False)
        label = text_field(fields, "prodSourceLabel", required=False, max_chars=64)
        skipped = []
        for task_id, spec in self._assigned(queue):
            status = self.ledger.status(spec.name)
            if status.state != TaskState.RUNNING or not status.counts[RangeStatus.READY]:
                continue
            try:
                endpoints = task_endpoints(spec)
            except UnservableStoreError as exc:
                skipped.append(f"task {spec.name!r}: {exc}")
                continue
            job = create_job(self.ledger, task_id, queue, node, label)
            log.info("getJob: consumer job %d of task %s for queue %s on %s", job.panda_id, spec.name, queue, node)
            return self._definition(job, spec, endpoints[0], label)
        why = "; ".join(skipped) if skipped else "no running task of this queue has event ranges ready"
        return {"StatusCode": NO_JOBS, "errorDialog": f"no jobs for queue {queue!r}: {why}"}

    def _definition(self, job: ConsumerJob, spec: TaskSpec, store: StorageEndpoint,
                    label: str | None) -> dict[str, Any]:
        assert spec.panda is not None
        return {
            "StatusCode": OK, "PandaID": job.panda_id, "jobsetID": job.task_id, "taskID": job.task_id,
            "jobDefinitionID": job.task_id, "jobName": f"{spec.name}.{job.panda_id}", "taskName": spec.name,
            "eventService": "True", "prodSourceLabel": label or "managed", "processingType": "eventservice",
            "attemptNr": 1, "currentPriority": 1000, "coreCount": spec.panda.cores,
            "maxWalltime": self.settings.max_walltime_s, "maxCpuCount": 0,
            "transformation": self.settings.transformation, "jobPars": f"{spec.payload.command} {CHANNEL_MARKER}",
            # Inputs are not staged in by the pilot: each event range carries its file's PFN and the payload
            # reads the events it needs. The archives of outputs go to the es_events store; no log file.
            "inFiles": "", "GUID": "", "scopeIn": "", "fsize": "", "checksum": "", "realDatasetsIn": "",
            "prodDBlocks": "", "ddmEndPointIn": "", "outFiles": "", "scopeOut": "", "realDatasets": "",
            "destinationDblock": "", "ddmEndPointOut": store.name, "destinationSE": store.name, "logFile": "",
            "swRelease": "", "homepackage": "", "cmtConfig": "",
        }

    def update_job(self, fields: Mapping[str, Any]) -> dict[str, Any]:
        """Record the job's state; renews the leases of what it holds, and a final state releases them."""
        panda_id = int_field(fields, "jobId", minimum=1)
        state = text_field(fields, "state", max_chars=32)
        assert panda_id is not None and state is not None
        node = text_field(fields, "node", required=False)
        n_events = int_field(fields, "nEvents", required=False)
        code = text_field(fields, "pilotErrorCode", required=False, max_chars=64)
        error = text_field(fields, "pilotErrorDiag", required=False, max_chars=4096)
        before, job = set_state(self.ledger, panda_id, state, node=node, n_events=n_events,
                                error_code=code if code not in (None, "0") else None, error=error or None)
        name = task_name(self.ledger, job.task_id)
        beat = self.ledger.heartbeat(name, job.worker, job.node, restarted=job.final and not before.final)
        if beat.released:
            log.info("updateJob: consumer job %d ended %s; %d ranges it held went back", panda_id, state,
                     beat.released)
        command = "tobekilled" if beat.state == TaskState.CANCELLED and not job.final else "NULL"
        return {"StatusCode": OK, "command": command}

    def _job_of(self, fields: Mapping[str, Any]) -> tuple[ConsumerJob, str]:
        panda_id = int_field(fields, "pandaID", minimum=1)
        assert panda_id is not None
        job = get_job(self.ledger, panda_id)
        for name in ("taskID", "jobsetID"):
            given = int_field(fields, name, required=False)
            if given is not None and given != job.task_id:
                raise PandaRequestError(f"{name} {given} does not match PandaID {panda_id}, which is of task "
                                        f"{job.task_id}")
        return job, task_name(self.ledger, job.task_id)

    def get_event_ranges(self, fields: Mapping[str, Any]) -> dict[str, Any]:
        """Up to ``nRanges`` ranges for the job, under lease; an empty list when none is left for it."""
        job, name = self._job_of(fields)
        wanted = int_field(fields, "nRanges", required=False, default=1, minimum=1, maximum=MAX_BATCH)
        assert wanted is not None
        if job.final:
            return {"StatusCode": OK, "eventRanges": []}
        spec = self.ledger.task_spec(name)
        scope = spec.panda.scope if spec.panda is not None else "events"
        reply = self.ledger.claim(name, job.worker, min(wanted, self.settings.max_ranges_per_call), host=job.node)
        if reply.ranges:
            self.ledger.heartbeat(name, job.worker, job.node)
        return {"StatusCode": OK, "eventRanges": [{
            "eventRangeID": str(PandaRangeId.from_ledger(job.task_id, job.panda_id, r.range_id, r.attempt)),
            "LFN": r.lfn, "GUID": r.guid, "scope": scope, "startEvent": r.first_event + 1,
            "lastEvent": r.last_event + 1, "PFN": r.url} for r in reply.ranges]}

    def check_events_availability(self, fields: Mapping[str, Any]) -> dict[str, Any]:
        """How many ranges of the job's task are ready now."""
        job, name = self._job_of(fields)
        ready = self.ledger.status(name).counts[RangeStatus.READY]
        return {"StatusCode": OK, "nEventRanges": 0 if job.final else ready}

    # -- range reports --------------------------------------------------------------------------------

    def update_event_ranges(self, fields: Mapping[str, Any]) -> dict[str, Any]:
        """Range reports, version 0 (each range alone) or 1 (ranges whose outputs share an archive)."""
        version = int_field(fields, "version", required=False, default=0, maximum=1)
        reports = json_field(fields, "eventRanges")
        if not isinstance(reports, list):
            raise PandaRequestError(f"field 'eventRanges' must be a JSON list, got {type(reports).__name__}")
        entries = self._entries(reports, version)
        if len(entries) > MAX_BATCH:
            raise PandaRequestError(f"field 'eventRanges' reports {len(entries)} ranges; at most {MAX_BATCH} a call")
        by_job: dict[int, list[_Entry]] = {}
        for entry in entries:
            self._parse_entry(entry)
            if entry.range_id is not None:
                by_job.setdefault(entry.range_id.panda_id, []).append(entry)
        commands: dict[str, str | None] = {}
        for panda_id, group in by_job.items():
            commands[str(panda_id)] = self._apply(panda_id, group)
        returns = [entry.result for entry in entries]
        reasons = [f"{entry.raw.get('eventRangeID') if isinstance(entry.raw, dict) else entry.raw!r}: {entry.reason}"
                   for entry in entries if not entry.result]
        reply: dict[str, Any] = {"StatusCode": OK, "Returns": returns, "Command": commands}
        if reasons:
            reply["errorDialog"] = "; ".join(reasons)[:4096]
            log.warning("updateEventRanges refused %d of %d reports: %s", len(reasons), len(entries),
                        reply["errorDialog"])
        return reply

    @staticmethod
    def _entries(reports: list[Any], version: int) -> list[_Entry]:
        if version == 0:
            return [_Entry(raw, None) for raw in reports]
        entries = []
        for index, group in enumerate(reports):
            if not isinstance(group, dict) or not isinstance(group.get("eventRanges"), list):
                raise PandaRequestError(f"eventRanges[{index}]: a version 1 report is an object with a list "
                                        "'eventRanges' and an optional 'zipFile'")
            archive = group.get("zipFile")
            if archive is not None and not isinstance(archive, dict):
                raise PandaRequestError(f"eventRanges[{index}].zipFile must be an object or null")
            entries.extend(_Entry(raw, archive) for raw in group["eventRanges"])
        return entries

    @staticmethod
    def _parse_entry(entry: _Entry) -> None:
        if not isinstance(entry.raw, dict):
            entry.reason = f"a range report is an object with eventRangeID and eventStatus, got {entry.raw!r:.80}"
            return
        try:
            entry.range_id = PandaRangeId.parse(entry.raw.get("eventRangeID"))
        except PandaRequestError as exc:
            entry.reason = str(exc)
            return
        status = entry.raw.get("eventStatus")
        if status not in RANGE_STATUS:
            entry.range_id = None
            entry.reason = f"eventStatus {status!r} is not one of {', '.join(RANGE_STATUS)}"

    def _apply(self, panda_id: int, group: list[_Entry]) -> str | None:
        """Turn one job's reports into ledger updates; returns the job's command."""
        try:
            job = get_job(self.ledger, panda_id)
            name = task_name(self.ledger, job.task_id)
        except PandaRequestError as exc:
            for entry in group:
                entry.reason = str(exc)
            return None
        spec = self.ledger.task_spec(name)
        updates: list[tuple[_Entry, RangeUpdate]] = []
        for entry in group:
            try:
                updates.append((entry, self._update(entry, job, spec)))
            except ValidationError as exc:
                entry.reason = "; ".join(str(e["msg"]).removeprefix("Value error, ") for e in exc.errors())
            except ValueError as exc:  # PandaRequestError, a bad checksum
                entry.reason = str(exc)
        if updates:
            results = self.ledger.update(name, job.worker, [update for _, update in updates], own_keys=False)
            for (entry, _), result in zip(updates, results, strict=True):
                entry.result = result.result != "rejected"
                entry.reason = result.reason
        beat = self.ledger.heartbeat(name, job.worker, job.node)
        return "tobekilled" if beat.state == TaskState.CANCELLED else None

    def _update(self, entry: _Entry, job: ConsumerJob, spec: TaskSpec) -> RangeUpdate:
        assert entry.range_id is not None and isinstance(entry.raw, dict)
        ident = entry.range_id
        if ident.task_id != job.task_id:
            raise PandaRequestError(f"the range is of task {ident.task_id}, PandaID {job.panda_id} of task "
                                    f"{job.task_id}")
        range_id = ident.ledger_range_id(spec)
        status = RANGE_STATUS[entry.raw["eventStatus"]]
        if status == "finished":
            if entry.archive is None:
                raise PandaRequestError("a finished range needs its output: report it with version 1 and a zipFile")
            return RangeUpdate(range_id=range_id, status="finished", attempt=ident.attempt,
                               output=self._archive_output(entry.archive, job, spec, ident))
        code = entry.raw.get("errorCode")
        diag = entry.raw.get("errorDiag") or entry.raw.get("errorDialog")
        if status == "failed" and entry.raw["eventStatus"] == "cancelled":
            code, diag = code or "cancelled", diag or "the pilot cancelled the range"
        return RangeUpdate(range_id=range_id, status=status, attempt=ident.attempt,
                           error_code=None if code is None else str(code)[:64],
                           error=None if diag is None else str(diag)[:4096])

    @staticmethod
    def _archive_output(archive: Mapping[str, Any], job: ConsumerJob, spec: TaskSpec,
                        ident: PandaRangeId) -> OutputRef:
        lfn = archive.get("lfn")
        if not isinstance(lfn, str) or not re.fullmatch(LFN_PATTERN, lfn):
            raise PandaRequestError(f"zipFile.lfn {lfn!r} is not a file name ([A-Za-z0-9._+-], no '/')")
        store_ref = int_field(archive, "objstoreID", minimum=0)
        size = int_field(archive, "fsize", minimum=0, maximum=MAX_OBJECT_BYTES)
        checksum = archive.get("adler32")
        if not isinstance(checksum, str):
            raise PandaRequestError(f"zipFile.adler32 must be 8 hexadecimal digits, got {checksum!r}")
        adler32 = normalize_adler32(checksum)
        endpoints = task_endpoints(spec)
        chosen = next((e for e in endpoints if e.id == store_ref), None)
        if chosen is None:
            raise PandaRequestError(f"zipFile.objstoreID {store_ref} is not a store of task {spec.name!r} "
                                    f"(its stores: {', '.join(f'{e.id} {e.url}' for e in endpoints)})")
        assert size is not None
        return OutputRef(key=chosen.archive_key(job.queue, lfn), adler32=adler32, size=size,
                         store=None if chosen is endpoints[0] else chosen.url, member=str(ident))

"""Every ``EVENT_SERVICE_*`` environment variable of the core and the worker: name, meaning, default, read here."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

# Standard library only: `event-service` and `payload-runner` read these before anything heavy is imported.


@dataclass(frozen=True)
class Variable:
    """One environment variable: its name, who reads it, what it means, and its default (None: unset)."""

    name: str
    read_by: str
    meaning: str
    default: str | None = None

    def get(self, environ: Mapping[str, str] | None = None) -> str | None:
        """The variable's value; an empty value counts as unset and gives the default."""
        value = (os.environ if environ is None else environ).get(self.name)
        return value if value else self.default


DB = Variable("EVENT_SERVICE_DB", "event-service serve, the Airflow plugin's mounted API",
              "the ledger's database URL (postgresql://… or sqlite:////abs/path); `serve --db` overrides it; in "
              "Airflow the ledger connection is used when it is unset")
ADMIN_TOKEN = Variable("EVENT_SERVICE_ADMIN_TOKEN", "the dispatch API, the event-service commands",
                       "the admin token: the API accepts it for every task and for admin routes; the commands "
                       "send it when --token is not given")
MONITOR_TOKEN = Variable("EVENT_SERVICE_MONITOR_TOKEN", "the dispatch API",
                         "a read-only token for the monitoring views and /metrics")
PANDA_TOKEN = Variable("EVENT_SERVICE_PANDA_TOKEN", "the dispatch API",
                       "the token PanDA pilots present on the /server/panda/ routes (the admin token works too)")
URL = Variable("EVENT_SERVICE_URL", "the event-service commands (tasks, status, create, cancel)",
               "the dispatch API's URL when --server is not given")
TOKEN = Variable("EVENT_SERVICE_TOKEN", "payload-runner",
                 "the runner's task token when --token is not given; never passed on to payloads")
CHANNEL = Variable("EVENT_SERVICE_CHANNEL", "payloads (set by payload-runner)",
                   "the ZeroMQ address a payload connects to for its event ranges")
PAYLOAD_ID = Variable("EVENT_SERVICE_PAYLOAD_ID", "payloads (set by payload-runner)",
                      "the identity a payload process gives the runner on the channel")
HADD = Variable("EVENT_SERVICE_HADD", "event-service-hadd",
                "the hadd program to run; without it, hadd on the PATH, then the ROOT wheel's")
WORKDIR = Variable("EVENT_SERVICE_WORKDIR", "the Airflow operators run_pilot, merge, register_output",
                   "the folder under which pilots make <task>/slot<n>/ and merges and registrations their "
                   "temporary folders (default: es-pilots/ in the working directory for pilots, the system's "
                   "temporary folder for the others)")

VARIABLES: tuple[Variable, ...] = (DB, ADMIN_TOKEN, MONITOR_TOKEN, PANDA_TOKEN, URL, TOKEN, CHANNEL, PAYLOAD_ID,
                                   HADD, WORKDIR)

"""A real PanDA pilot (3.7.0.36, from PyPI's source distribution) run against this project's server."""

from __future__ import annotations

import hashlib
import io
import os
import re
import signal
import subprocess
import sys
import tarfile
import tempfile
import urllib.request
from collections.abc import Mapping
from pathlib import Path

from payload_runner.pilot_shim import SHIM_DIR

PILOT_VERSION = "3.7.0.36"
CACHE = Path(__file__).resolve().parents[1] / ".cache"
SIMPLE_INDEX = "https://pypi.org/simple"


class PilotUnavailable(RuntimeError):
    """The pilot's source distribution could not be fetched from PyPI."""


def pilot_source() -> Path:
    """The unpacked source distribution (``pilot.py`` beside the ``pilot`` package), fetched once."""
    folder = CACHE / f"panda-pilot-{PILOT_VERSION}"
    if (folder / "pilot.py").is_file():
        return folder
    CACHE.mkdir(exist_ok=True)
    page = f"{SIMPLE_INDEX}/panda-pilot/"
    name = f"panda-pilot-{PILOT_VERSION}.tar.gz"
    try:
        with urllib.request.urlopen(page, timeout=60) as reply:
            html = reply.read().decode()
        link = re.search(rf'href="([^"]*/{re.escape(name)})#sha256=([0-9a-f]{{64}})"', html)
        if link is None:
            raise PilotUnavailable(f"{page} lists no {name}")
        with urllib.request.urlopen(link.group(1), timeout=300) as reply:
            data = reply.read()
    except OSError as exc:
        raise PilotUnavailable(f"cannot fetch {name} from {page}: {exc}") from exc
    if hashlib.sha256(data).hexdigest() != link.group(2):
        raise PilotUnavailable(f"{link.group(1)}: the download does not match its sha256")
    with tempfile.TemporaryDirectory(dir=CACHE) as scratch:
        with tarfile.open(fileobj=io.BytesIO(data)) as archive:
            archive.extractall(scratch, filter="data")
        (Path(scratch) / f"panda-pilot-{PILOT_VERSION}").rename(folder)
    return folder


def run_pilot(queue: str, server_url: str, token: str, workdir: Path, *, env: Mapping[str, str] | None = None,
              timeout_s: float = 300) -> subprocess.CompletedProcess[str]:
    """Run one pilot for ``queue`` until it exits; its log is in the result's stdout.

    The pilot reads its queue and storage from the server, authenticates with ``token`` (as an OIDC token
    file), finds the yampl stand-in and the payload launcher in payload_runner/pilot_shim, and is told not
    to kill other processes of this user when it ends (PILOT_NOKILL).
    """
    source = pilot_source()
    workdir.mkdir(parents=True, exist_ok=True)
    token_dir = workdir / "auth"
    token_dir.mkdir(exist_ok=True)
    (token_dir / "token").write_text(token)
    environment = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("X509_", "PYTEST", "COV_"))},
        "PYTHONPATH": str(SHIM_DIR),
        "HARVESTER_WORKDIR": str(SHIM_DIR),
        "PILOT_NOKILL": "1",
        "OIDC_AUTH_TOKEN": "token",
        "OIDC_AUTH_ORIGIN": "event-service.test",
        "OIDC_AUTH_DIR": f"{token_dir}/",
        "LOCAL_AGIS_SCHEDCONF": f"{server_url}/server/panda/schedconfig",
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        **(env or {}),
    }
    host, _, port = server_url.rpartition(":")
    command = [sys.executable, str(source / "pilot.py"), "-q", queue, "--pilot-user", "generic", "-w", "generic",
               "--url", host, "-p", port, "--queuedata-url", f"{server_url}/server/panda/queuedata/{{pandaqueue}}",
               "--storagedata-url", f"{server_url}/server/panda/storagedata", "-j", "managed", "-d",
               "-a", str(workdir), "--use-rucio-traces", "False"]
    process = subprocess.Popen(command, cwd=workdir, env=environment, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    try:
        out, _ = process.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(process.pid, signal.SIGKILL)  # the pilot made itself a process group leader
        except ProcessLookupError:
            pass
        process.kill()
        out, _ = process.communicate()
        raise AssertionError(f"the pilot did not end within {timeout_s} s; its log ends:\n{out[-6000:]}") from None
    return subprocess.CompletedProcess(command, process.returncode, out, "")

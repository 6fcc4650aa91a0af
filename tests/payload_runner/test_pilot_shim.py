"""The yampl stand-in and the payload launcher that let an unmodified PanDA pilot drive this project's payloads."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType

import pytest

from event_service.api.panda.service import CHANNEL_MARKER as SERVER_MARKER
from event_service.api.panda.service import LAUNCHER as SERVER_LAUNCHER
from payload_runner.channel import PayloadChannel
from payload_runner.pilot_shim import CHANNEL_MARKER, LAUNCHER, SHIM_DIR


@pytest.fixture
def yampl(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    monkeypatch.setenv("YAMPL_ZMQ_DIR", str(tmp_path))
    spec = importlib.util.spec_from_file_location("yampl", SHIM_DIR / "yampl.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def recv(socket: object, timeout_s: float = 5.0) -> tuple[int, bytes]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        size, data = socket.try_recv_raw()  # type: ignore[attr-defined]
        if size >= 0:
            return size, data
        time.sleep(0.01)
    raise AssertionError("nothing received")


def test_the_server_socket_talks_to_yampl_clients_and_to_this_projects_payload_channel(yampl: ModuleType,
                                                                                       tmp_path: Path) -> None:
    server = yampl.ServerSocket("EventService_EventRanges_1", "local")
    assert server.try_recv_raw() == (-1, b"")
    server.send_raw(b"nobody asked")  # no peer yet: dropped, no error
    client = yampl.ClientSocket("EventService_EventRanges_1", "local")
    client.send_raw(b"Ready for events")
    assert recv(server) == (16, b"Ready for events")
    server.send_raw(b'[{"eventRangeID": "1-1-1-1-1"}]')
    assert client.recv_raw()[1] == b'[{"eventRangeID": "1-1-1-1-1"}]'
    # the payload channel this project's payloads use connects to the same address
    with PayloadChannel(yampl.address("EventService_EventRanges_1")) as channel:
        channel.send("Ready for events")
        assert recv(server)[1] == b"Ready for events"
        server.send_raw(b"No more events")
        assert channel.recv(5.0) == "No more events"
    time.sleep(0.1)
    server.send_raw(b"No more events")  # the payload has gone: the pilot says it once more, and must not fail
    client.close()
    server.close()
    assert not (tmp_path / "yampl-EventService_EventRanges_1").exists()
    with pytest.raises(ValueError, match="must be non-empty and hold no '/'"):
        yampl.address("../x")


def test_the_launcher_points_the_payload_at_the_pilot_socket_and_drops_the_marker(tmp_path: Path) -> None:
    assert (LAUNCHER, CHANNEL_MARKER) == (SERVER_LAUNCHER, SERVER_MARKER)
    launcher = SHIM_DIR / LAUNCHER
    env = {**os.environ, "PILOT_EVENTRANGECHANNEL": "EventService_EventRanges_7", "YAMPL_ZMQ_DIR": str(tmp_path)}
    shown = subprocess.run(["sh", str(launcher), sys.executable, "-c",
                            "import os, sys; print(os.environ['EVENT_SERVICE_CHANNEL'], sys.argv[1:])",
                            "a b", CHANNEL_MARKER, "c"], env=env, capture_output=True, text=True, check=True)
    assert shown.stdout.strip() == f"ipc://{tmp_path}/yampl-EventService_EventRanges_7 ['a b', 'c']"
    del env["PILOT_EVENTRANGECHANNEL"]
    refused = subprocess.run(["sh", str(launcher), "true"], env=env, capture_output=True, text=True)
    assert refused.returncode == 64 and "PILOT_EVENTRANGECHANNEL is not set" in refused.stderr

"""The ZeroMQ channel: real round trips between a runner and several payloads, timeouts, isolation."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from payload_runner.channel import (
    CHANNEL_ENV,
    MAX_IPC_PATH,
    PAYLOAD_ID_ENV,
    PayloadChannel,
    RunnerChannel,
    channel_address,
)
from payload_runner.errors import ChannelClosedError, ChannelError


def test_round_trip(tmp_path: Path) -> None:
    address = channel_address(tmp_path)
    assert address.startswith(f"ipc://{tmp_path.resolve()}/")
    with RunnerChannel(address) as runner, PayloadChannel(address) as payload:
        payload.send("Ready for events")
        received = runner.recv(5)
        assert received is not None
        peer, text = received
        assert text == "Ready for events"
        runner.send(peer, "No more events")
        assert payload.recv(5) == "No more events"
    assert runner.closed and payload.closed
    assert not Path(address.removeprefix("ipc://")).exists()


def test_two_payloads_on_one_runner_get_their_own_answers(tmp_path: Path) -> None:
    address = channel_address(tmp_path)
    with RunnerChannel(address) as runner, PayloadChannel(address, identity="slot-1") as first, \
            PayloadChannel(address, identity="slot-2") as second:
        first.send("from first")
        second.send("from second")
        messages = {}
        for _ in range(2):
            received = runner.recv(5)
            assert received is not None
            messages[received[1]] = received[0]
        assert messages == {"from first": b"slot-1", "from second": b"slot-2"}
        runner.send(b"slot-2", "for second")
        runner.send(b"slot-1", "for first")
        assert first.recv(5) == "for first"
        assert second.recv(5) == "for second"
        assert first.recv(0.05) is None and second.recv(0.05) is None


def test_two_runners_in_one_directory_do_not_cross(tmp_path: Path) -> None:
    address_a, address_b = channel_address(tmp_path), channel_address(tmp_path)
    assert address_a != address_b
    with RunnerChannel(address_a) as runner_a, RunnerChannel(address_b) as runner_b, \
            PayloadChannel(address_a) as payload_a, PayloadChannel(address_b) as payload_b:
        payload_a.send("to a")
        payload_b.send("to b")
        got_a, got_b = runner_a.recv(5), runner_b.recv(5)
        assert got_a is not None and got_a[1] == "to a"
        assert got_b is not None and got_b[1] == "to b"
        assert runner_a.recv(0.1) is None and runner_b.recv(0.1) is None
        runner_a.send(got_a[0], "answer a")
        assert payload_a.recv(5) == "answer a"
        assert payload_b.recv(0.1) is None


def test_timeouts_return_none_and_wait_about_that_long(tmp_path: Path) -> None:
    address = channel_address(tmp_path)
    with RunnerChannel(address) as runner, PayloadChannel(address) as payload:
        start = time.monotonic()
        assert runner.recv(0.2) is None
        assert payload.recv(0.2) is None
        elapsed = time.monotonic() - start
        assert 0.39 <= elapsed < 2.0
        assert runner.recv(0) is None
        with pytest.raises(ValueError, match="-1"):
            runner.recv(-1)


def test_a_payload_in_another_process_reads_the_address_from_the_environment(tmp_path: Path) -> None:
    address = channel_address(tmp_path)
    code = ("from payload_runner.channel import PayloadChannel\n"
            "with PayloadChannel() as channel:\n"
            "    channel.send('hello from ' + str(channel.identity))\n"
            "    print(channel.recv(10))\n")
    with RunnerChannel(address) as runner:
        env = {**os.environ, CHANNEL_ENV: address, PAYLOAD_ID_ENV: "worker-7"}
        process = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, text=True)
        received = runner.recv(30)
        assert received == (b"worker-7", "hello from worker-7")
        runner.send(b"worker-7", "No more events")
        out, _ = process.communicate(timeout=30)
    assert process.returncode == 0 and out.strip() == "No more events"


def test_sending_to_a_payload_that_is_not_there_raises(tmp_path: Path) -> None:
    with RunnerChannel(channel_address(tmp_path)) as runner:
        with pytest.raises(ChannelError, match="no payload b'ghost' is connected"):
            runner.send(b"ghost", "No more events")


def test_payload_without_an_address_says_what_to_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(CHANNEL_ENV, raising=False)
    with pytest.raises(ChannelError, match=CHANNEL_ENV):
        PayloadChannel()


def test_binding_over_a_live_runner_is_refused_and_a_stale_socket_is_replaced(tmp_path: Path) -> None:
    address = channel_address(tmp_path)
    with RunnerChannel(address):
        with pytest.raises(ChannelError, match="another process is listening"):
            RunnerChannel(address)
        assert Path(address.removeprefix("ipc://")).exists()
    stale = Path(address.removeprefix("ipc://"))
    code = f"import socket; s = socket.socket(socket.AF_UNIX); s.bind({str(stale)!r})"
    subprocess.run([sys.executable, "-c", code], check=True)  # a socket file nobody listens on
    assert stale.exists()
    with RunnerChannel(address) as runner, PayloadChannel(address) as payload:
        payload.send("Ready for events")
        assert runner.recv(5) is not None


def test_closed_channels_refuse_use_and_close_twice(tmp_path: Path) -> None:
    address = channel_address(tmp_path)
    runner = RunnerChannel(address)
    payload = PayloadChannel(address)
    payload.close()
    runner.close()
    runner.close()
    with pytest.raises(ChannelClosedError, match="closed"):
        payload.send("Ready for events")
    with pytest.raises(ChannelClosedError, match="closed"):
        runner.recv(0)


def test_close_with_an_undelivered_message_does_not_hang(tmp_path: Path) -> None:
    payload = PayloadChannel(channel_address(tmp_path), linger_s=0.2)  # nobody is listening
    payload.send("Ready for events")
    start = time.monotonic()
    payload.close()
    assert time.monotonic() - start < 2.0


def test_a_long_work_directory_falls_back_to_a_short_path(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    address = channel_address(deep)
    path = address.removeprefix("ipc://")
    assert path.startswith("/tmp/es-") and len(path.encode()) <= MAX_IPC_PATH
    with RunnerChannel(address) as runner, PayloadChannel(address) as payload:
        payload.send("Ready for events")
        assert runner.recv(5) is not None
    assert not Path(path).exists()


def test_bind_failure_names_the_address(tmp_path: Path) -> None:
    address = f"ipc://{tmp_path}/missing-folder/es.ipc"
    with pytest.raises(ChannelError, match="missing-folder"):
        RunnerChannel(address)

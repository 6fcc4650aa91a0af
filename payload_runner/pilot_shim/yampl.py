"""A yampl stand-in over ZeroMQ, so that an unmodified PanDA pilot can feed this project's payloads.

The pilot imports ``yampl`` and serves event ranges on ``yampl.ServerSocket(name, "local")``; AthenaMP
payloads connect with yampl's ``ClientSocket``. yampl is not on PyPI. This module gives the same classes
and methods (``send_raw``, ``try_recv_raw``, ``recv_raw``, and the ``str`` forms ``send``/``recv``) over a
ZeroMQ ROUTER (server) and DEALER (client) on ``ipc://$YAMPL_ZMQ_DIR/yampl-<name>`` (default /tmp), the
socket pair this project's payloads already speak. A message to a payload that has gone away is dropped,
as the pilot expects (it says "No more events" once more after the payload exits).
"""

from __future__ import annotations

import os
from pathlib import Path

import zmq

DIR_ENV = "YAMPL_ZMQ_DIR"


def address(name: str) -> str:
    """The ZeroMQ address of the yampl socket ``name``."""
    if not name or "/" in name or "\x00" in name:
        raise ValueError(f"yampl socket name {name!r} must be non-empty and hold no '/' or NUL")
    return f"ipc://{os.environ.get(DIR_ENV) or '/tmp'}/yampl-{name}"


class _Socket:
    def __init__(self, kind: int, name: str) -> None:
        self.name = name
        self.address = address(name)
        self._socket = zmq.Context.instance().socket(kind)
        self._socket.setsockopt(zmq.LINGER, 0)

    def _recv(self, flags: int) -> tuple[int, bytes]:
        raise NotImplementedError

    def try_recv_raw(self) -> tuple[int, bytes]:
        """``(size, bytes)`` of a waiting message, or ``(-1, b"")`` when none is waiting."""
        try:
            return self._recv(zmq.NOBLOCK)
        except zmq.Again:
            return -1, b""

    def recv_raw(self) -> tuple[int, bytes]:
        """Wait for the next message: ``(size, bytes)``."""
        return self._recv(0)

    def send(self, text: str) -> None:
        self.send_raw(text.encode())

    def recv(self) -> tuple[int, str]:
        size, data = self.recv_raw()
        return size, data.decode()

    def send_raw(self, data: bytes) -> None:
        raise NotImplementedError

    def close(self) -> None:
        self._socket.close(0)

    def __del__(self) -> None:
        self.close()


class ServerSocket(_Socket):
    """The pilot's end: answers whichever payload spoke last."""

    def __init__(self, name: str, context: str = "local") -> None:
        super().__init__(zmq.ROUTER, name)
        self._path = Path(self.address.removeprefix("ipc://"))
        self._path.unlink(missing_ok=True)  # a socket file left by a pilot that died
        self._socket.bind(self.address)
        self._peer: bytes | None = None

    def _recv(self, flags: int) -> tuple[int, bytes]:
        frames = self._socket.recv_multipart(flags)
        self._peer, data = frames[0], b"".join(frames[1:])
        return len(data), data

    def send_raw(self, data: bytes) -> None:
        if self._peer is None:
            return
        try:
            self._socket.send_multipart([self._peer, data], zmq.NOBLOCK)
        except zmq.ZMQError:
            pass  # the payload is gone; yampl drops the message too

    def close(self) -> None:
        if not self._socket.closed:
            super().close()
            self._path.unlink(missing_ok=True)


class ClientSocket(_Socket):
    """A payload's end."""

    def __init__(self, name: str, context: str = "local") -> None:
        super().__init__(zmq.DEALER, name)
        self._socket.connect(self.address)

    def _recv(self, flags: int) -> tuple[int, bytes]:
        data = b"".join(self._socket.recv_multipart(flags))
        return len(data), data

    def send_raw(self, data: bytes) -> None:
        self._socket.send(data)

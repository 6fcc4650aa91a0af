"""The ZeroMQ channel between the runner (one ROUTER) and its payload processes (one DEALER each)."""

from __future__ import annotations

import errno
import math
import os
import secrets
import socket
from pathlib import Path
from types import TracebackType
from typing import Self

import zmq

from event_service import settings
from payload_runner.errors import ChannelClosedError, ChannelError, ChannelFrameError

CHANNEL_ENV = settings.CHANNEL.name
PAYLOAD_ID_ENV = settings.PAYLOAD_ID.name
MAX_IPC_PATH = 100
SHORT_IPC_FOLDER = Path("/tmp")
DEFAULT_LINGER_S = 1.0

# The pattern: the runner binds one ROUTER socket; every payload process connects one DEALER socket.
# A DEALER sends single-frame messages; the ROUTER receives them as [peer identity, text] and answers
# with [peer identity, text], which reaches only that payload. No REQ/REP lock-step, so a payload that
# dies mid-exchange never wedges the runner's socket. Sockets are not thread-safe: use each channel
# from one thread.


def channel_address(workdir: str | Path) -> str:
    """A fresh ``ipc://`` address in ``workdir`` for one runner.

    Unix socket paths are limited to about 100 bytes; when the path in ``workdir`` would be longer,
    the address is a short unique path under /tmp instead (``/tmp/es-<random>.ipc``).
    """
    folder = Path(workdir).resolve()
    for _ in range(100):
        name = f"es-{secrets.token_hex(6)}.ipc"
        path = folder / name
        if len(os.fsencode(path)) > MAX_IPC_PATH:
            path = SHORT_IPC_FOLDER / name
        if not path.exists():
            return f"ipc://{path}"
    raise ChannelError(f"could not find an unused channel name in {folder} after 100 attempts")


def _timeout_ms(timeout_s: float | None) -> int | None:
    if timeout_s is None:
        return None
    if not math.isfinite(timeout_s) or timeout_s < 0:
        raise ValueError(f"a receive timeout is a finite number of seconds >= 0 or None, got {timeout_s!r}")
    return math.ceil(timeout_s * 1000)


def _ipc_path(address: str) -> Path | None:
    return Path(address.removeprefix("ipc://")) if address.startswith("ipc://") else None


def _check_not_in_use(path: Path, address: str) -> None:
    """Refuse to bind over a live socket (libzmq would silently take the path away from its owner)."""
    if not path.exists():
        return
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(os.fsdecode(path))
    except ConnectionRefusedError:
        return  # a stale socket file left by a runner that died: binding replaces it
    except OSError as exc:
        raise ChannelError(f"cannot bind {address}: {path} exists and is not a usable socket "
                           f"({exc.strerror or exc})") from None
    finally:
        probe.close()
    raise ChannelError(f"cannot bind {address}: another process is listening on it")


class _Channel:
    """What both ends share: a private context, one socket, a poller, bounded linger."""

    def __init__(self, address: str, kind: int, linger_s: float) -> None:
        if not isinstance(address, str) or "://" not in address:
            raise ValueError(f"a channel address is a ZeroMQ endpoint like ipc:///path, got {address!r}")
        if not math.isfinite(linger_s) or linger_s < 0:
            raise ValueError(f"linger is a finite number of seconds >= 0, got {linger_s!r}")
        self.address = address
        self._linger_ms = math.ceil(linger_s * 1000)
        self._context = zmq.Context()
        self._socket: zmq.Socket[bytes] = self._context.socket(kind)
        self._socket.setsockopt(zmq.LINGER, self._linger_ms)
        self._poller = zmq.Poller()
        self._poller.register(self._socket, zmq.POLLIN)
        self._closed = False

    def _live(self) -> zmq.Socket[bytes]:
        if self._closed:
            raise ChannelClosedError(f"the channel on {self.address} is closed")
        return self._socket

    def _frames(self, timeout_s: float | None) -> list[bytes] | None:
        sock = self._live()
        if not self._poller.poll(_timeout_ms(timeout_s)):
            return None
        return sock.recv_multipart(zmq.NOBLOCK)

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Close the socket; unsent messages get at most the linger time, so this never hangs."""
        if self._closed:
            return
        self._closed = True
        self._poller.unregister(self._socket)
        self._socket.close(self._linger_ms)
        self._context.term()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.address!r}{', closed' if self._closed else ''})"


def _decode(frame: bytes, peer: bytes | None, address: str) -> str:
    try:
        return frame.decode("utf-8")
    except UnicodeDecodeError as exc:
        who = f" from payload {peer!r}" if peer is not None else ""
        raise ChannelFrameError(f"a message{who} on {address} is not UTF-8 text ({exc.reason} at byte "
                                f"{exc.start}): {frame[:200]!r}", peer) from None


class RunnerChannel(_Channel):
    """The runner's end: binds a ROUTER socket; any number of payload processes connect to it."""

    def __init__(self, address: str, linger_s: float = DEFAULT_LINGER_S) -> None:
        super().__init__(address, zmq.ROUTER, linger_s)
        path = _ipc_path(address)
        try:
            # Sending to a payload that is gone raises instead of dropping the message silently.
            self._socket.setsockopt(zmq.ROUTER_MANDATORY, 1)
            if path is not None:
                _check_not_in_use(path, address)
            self._socket.bind(address)
        except zmq.ZMQError as exc:
            self.close()
            raise ChannelError(f"cannot bind {address}: {exc.strerror}") from None
        except BaseException:
            self.close()
            raise
        self._path = path

    def recv(self, timeout_s: float | None) -> tuple[bytes, str] | None:
        """The next message as (payload identity, text), or None when none came within ``timeout_s``."""
        frames = self._frames(timeout_s)
        if frames is None:
            return None
        peer = frames[0]
        if len(frames) != 2:
            raise ChannelFrameError(f"payload {peer!r} on {self.address} sent {len(frames) - 1} frames; "
                                    "a message is one frame from a DEALER socket", peer)
        return peer, _decode(frames[1], peer, self.address)

    def send(self, peer: bytes, text: str) -> None:
        """Send ``text`` to the payload with identity ``peer``; ChannelError if it is not connected."""
        sock = self._live()
        try:
            sock.send_multipart([peer, text.encode("utf-8")], zmq.NOBLOCK)
        except zmq.ZMQError as exc:
            if exc.errno == errno.EHOSTUNREACH:
                raise ChannelError(f"no payload {peer!r} is connected to {self.address}") from None
            if exc.errno == errno.EAGAIN:
                raise ChannelError(f"payload {peer!r} on {self.address} is not reading its messages "
                                   "(its queue is full)") from None
            raise ChannelError(f"cannot send to payload {peer!r} on {self.address}: {exc.strerror}") from None

    def close(self) -> None:
        """Close the socket and remove the ipc socket file."""
        was_open = not self._closed
        super().close()
        path = getattr(self, "_path", None)
        if was_open and path is not None:
            path.unlink(missing_ok=True)


class PayloadChannel(_Channel):
    """A payload's end: a DEALER socket connected to the runner's address.

    ``address`` defaults to ``$EVENT_SERVICE_CHANNEL``; ``identity`` (how the runner tells payload
    processes apart) defaults to ``$EVENT_SERVICE_PAYLOAD_ID`` when the runner sets it, else ZeroMQ
    picks a random one.
    """

    def __init__(self, address: str | None = None, identity: str | None = None,
                 linger_s: float = DEFAULT_LINGER_S) -> None:
        if address is None:
            address = settings.CHANNEL.get() or ""
            if not address:
                raise ChannelError(f"no channel to the runner: {CHANNEL_ENV} is not set (the payload runner "
                                   "sets it to the address the payload must connect to)")
        if identity is None:
            identity = settings.PAYLOAD_ID.get()
        super().__init__(address, zmq.DEALER, linger_s)
        try:
            if identity is not None:
                encoded = identity.encode("utf-8")
                if not 1 <= len(encoded) <= 255:
                    raise ValueError(f"a payload identity is 1-255 bytes, got {identity!r}")
                self._socket.setsockopt(zmq.IDENTITY, encoded)
            self._socket.connect(address)
        except zmq.ZMQError as exc:
            self.close()
            raise ChannelError(f"cannot connect to {address}: {exc.strerror}") from None
        except BaseException:
            self.close()
            raise
        self.identity = identity

    def send(self, text: str) -> None:
        """Send ``text`` to the runner (queued until the connection is up)."""
        self._live().send(text.encode("utf-8"))

    def recv(self, timeout_s: float | None) -> str | None:
        """The runner's next message, or None when none came within ``timeout_s`` (None waits forever)."""
        frames = self._frames(timeout_s)
        if frames is None:
            return None
        if len(frames) != 1:
            raise ChannelFrameError(f"the runner on {self.address} sent {len(frames)} frames; a message is one")
        return _decode(frames[0], None, self.address)

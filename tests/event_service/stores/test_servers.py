"""The test servers themselves: where they listen, and whom they let in."""

from __future__ import annotations

import socket

import pytest

from tests.servers import LOCAL_HOST, S3Server, XRootDServer, listening_addresses, non_loopback_ipv4


def test_seaweedfs_listens_on_loopback_and_only_on_the_ports_it_was_given(s3_server: S3Server) -> None:
    listening = listening_addresses(s3_server.pid)
    assert (LOCAL_HOST, s3_server.ports["s3.port"]) in listening
    assert {address for address, _ in listening} == {LOCAL_HOST}
    assert {port for _, port in listening} <= set(s3_server.ports.values())


def test_xrootd_lets_in_loopback_clients_only(xrootd_server: XRootDServer) -> None:
    # xrootd has no listen-address setting: it binds the wildcard address, and `xrd.allow host localhost`
    # makes it drop every connection that does not come from the loopback interface.
    assert {port for _, port in listening_addresses(xrootd_server.pid)} == {xrootd_server.port}
    other = non_loopback_ipv4()
    if other is None:
        pytest.skip("this machine has no non-loopback IPv4 address to connect from")
    with socket.create_connection((other, xrootd_server.port), timeout=5) as outsider:
        outsider.settimeout(5)
        try:
            answer = outsider.recv(16)
        except ConnectionResetError:  # closed with a reset rather than a FIN: refused all the same
            answer = b""
        assert answer == b""  # closed by the server at once
    with socket.create_connection((LOCAL_HOST, xrootd_server.port), timeout=5) as insider:
        insider.settimeout(0.5)
        with pytest.raises(TimeoutError):
            insider.recv(16)  # kept open, waiting for the XRootD handshake

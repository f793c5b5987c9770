"""ZeroMQ endpoints: which ones only this machine can reach, and bind addresses checked before binding.

libzmq takes a TCP port modulo 65536 (`tcp://127.0.0.1:99999` binds port 34463) and accepts hosts it can
only resolve at bind time, so a typo would serve somewhere unexpected; `check_bind` refuses it first.
"""

from __future__ import annotations

import ipaddress

TRANSPORTS = ("tcp", "ipc", "inproc")


def _host_port(endpoint: str) -> tuple[str, str]:
    rest = endpoint.partition("://")[2]
    host, sep, port = rest.rpartition(":")
    if not sep:
        return rest, ""
    return host.strip("[]"), port


def is_loopback(endpoint: str) -> bool:
    """True for endpoints only this machine can reach: ipc://, inproc:// and tcp:// on a loopback address."""
    transport = endpoint.partition("://")[0]
    if transport in ("ipc", "inproc"):
        return True
    if transport != "tcp":
        return False
    host, _ = _host_port(endpoint)
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # "*", an interface name or a host name: reachable from the network


def check_bind(endpoint: str) -> str:
    """The endpoint, or ValueError saying what is wrong with it as an address to bind."""
    transport, sep, rest = endpoint.partition("://")
    if not sep or transport not in TRANSPORTS or not rest:
        raise ValueError(f"bind address {endpoint!r} is not tcp://HOST:PORT, ipc://PATH or inproc://NAME")
    if transport != "tcp":
        return endpoint
    host, port = _host_port(endpoint)
    if not host or not port:
        raise ValueError(f"bind address {endpoint!r} needs HOST:PORT (e.g. tcp://127.0.0.1:5555)")
    if port != "*" and (not port.isdigit() or not 1 <= int(port) <= 65535):
        raise ValueError(f"bind address {endpoint!r}: port {port!r} is not 1..65535 (or * for any free one)")
    return endpoint

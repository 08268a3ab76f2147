"""Local TCP ports: is one free, and free ones to hand to servers gpumix starts (launch, run, tune, tests)."""

from __future__ import annotations

import socket
from collections.abc import Container

LOOPBACK = "127.0.0.1"


def port_is_free(port: int, host: str = LOOPBACK) -> bool:
    """True when a server could bind ``host:port`` now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # Servers set SO_REUSEADDR too, so a port in TIME_WAIT counts as free, as it will be for them.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = LOOPBACK, exclude: Container[object] = ()) -> int:
    """A port the kernel reports free on ``host`` (not one in ``exclude``: ports already handed out)."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((host, 0))
            port = int(sock.getsockname()[1])
        if port not in exclude:
            return port


def free_ports(count: int, host: str = LOOPBACK) -> list[int]:
    """``count`` distinct free ports on ``host``."""
    ports: list[int] = []
    while len(ports) < count:
        ports.append(free_port(host, exclude=ports))
    return ports

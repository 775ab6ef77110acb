"""TCP ports on this host: Triton's conventional ones, a free one, and whether one is taken."""

from __future__ import annotations

import socket

# Triton's own defaults (tritonserver, NVIDIA's container, deploy/): what clients expect.
TRITON_PORTS = {"http": 8000, "grpc": 8001, "metrics": 8002}


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on now (the kernel's pick); the caller binds it soon after."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def port_taken(host: str, port: int) -> bool:
    """True when something listens on ``host:port``."""
    with socket.socket() as s:
        # Taken means a listener: connections of a server just stopped linger in TIME_WAIT for
        # a minute, and tritonserver itself binds with SO_REUSEADDR, so a restart may reuse it.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False

"""What the pyfunc adjusts in the scoring-server worker that loads it (``mlflow models serve``).

* :func:`enable_nodelay` -- uvicorn binds its socket itself when ``--workers`` > 1
  (``socket.socket(family)``, protocol 0), and asyncio only sets TCP_NODELAY on accepted sockets
  whose protocol is IPPROTO_TCP. The response's headers and body then leave in two segments with
  Nagle's algorithm on, and the second waits for the client's delayed ACK: about 40 ms added to
  every request (measured in BENCHMARKS.md).
* :func:`limit_request_bodies` -- MLflow's FastAPI app reads the whole request body before the
  model sees it and sets no size limit; FastAPI applies ``max_body_size`` (HTTP 413) when it
  builds its middleware at the first request, so a default set at model load bounds every body.

Both only touch this process (a serving worker) and are idempotent.
"""

from __future__ import annotations

import asyncio.base_events
import socket

_PATCHED = "_lookalike_patched"


def enable_nodelay() -> bool:
    """Make asyncio set TCP_NODELAY on every TCP stream socket, whatever its ``proto`` field
    says (which is what it means to do). Returns True if it changed anything."""
    original = asyncio.base_events._set_nodelay
    if getattr(original, _PATCHED, False) or not hasattr(socket, "TCP_NODELAY"):
        return False

    def set_nodelay(sock) -> None:
        if sock.family in (socket.AF_INET, socket.AF_INET6) and sock.type == socket.SOCK_STREAM:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    setattr(set_nodelay, _PATCHED, True)
    asyncio.base_events._set_nodelay = set_nodelay
    return True


def limit_request_bodies(max_bytes: int) -> bool:
    """FastAPI apps of this process that set no ``max_body_size`` get ``max_bytes`` (larger
    bodies: HTTP 413 before they are read whole). Returns True if it changed anything."""
    try:
        from fastapi import FastAPI
    except ImportError:  # not in a scoring server
        return False
    original = FastAPI.build_middleware_stack
    if getattr(original, _PATCHED, False) or not hasattr(FastAPI, "build_middleware_stack"):
        return False

    def build_middleware_stack(self):
        if getattr(self, "max_body_size", None) is None:
            self.max_body_size = int(max_bytes)
        return original(self)

    setattr(build_middleware_stack, _PATCHED, True)
    FastAPI.build_middleware_stack = build_middleware_stack
    return True

"""What the pyfunc adjusts in the scoring-server worker that loads it (``mlflow models serve``).

* :func:`enable_nodelay` -- uvicorn binds its socket itself when ``--workers`` > 1
  (``socket.socket(family)``, protocol 0), and asyncio only sets TCP_NODELAY on accepted sockets
  whose protocol is IPPROTO_TCP. The response's headers and body then leave in two segments with
  Nagle's algorithm on, and the second waits for the client's delayed ACK: about 40 ms added to
  every request (measured in docs/benchmarks-history.md).
* :func:`guard_requests` -- MLflow's FastAPI app reads the whole request body before the
  model sees it and sets no size limit; FastAPI applies ``max_body_size`` (HTTP 413) when it
  builds its middleware at the first request, so a default set at model load bounds every body.
  The same hook puts a limit on requests in progress in front of the app (HTTP 503 beyond it).
* :func:`guard_connections` -- uvicorn has no timeout for a request head, and its own
  ``limit_concurrency`` counts open connections: 300 sockets that send half a request head and
  wait lock every client out with 503 for as long as they stay open (slowloris). Here a
  connection must send a whole request head within ``header_timeout`` of opening or of its
  previous answer, connections past ``max_connections`` are closed as they arrive, and the
  request limit counts requests, never idle or half-open connections.

On Databricks Model Serving the platform's own front end faces clients; these only touch a
worker of ``mlflow models serve`` (this process) and are idempotent.
"""

from __future__ import annotations

import asyncio.base_events
import importlib
import json
import os
import socket

_PATCHED = "_lookalike_patched"

# The server's limits reach its workers through the environment (lookalike.serving.server
# sets them from the serving settings); a model served by plain `mlflow models serve` gets
# these defaults, the same as conf/base.yaml's.
SERVER_LIMITS_ENV = {"max_concurrent_requests": ("LOOKALIKE_MAX_CONCURRENT_REQUESTS", 64),
                     "max_connections": ("LOOKALIKE_MAX_CONNECTIONS", 512),
                     "header_timeout_seconds": ("LOOKALIKE_HEADER_TIMEOUT_SECONDS", 5.0)}


def server_limits(environ=None) -> dict:
    """This worker's connection and request limits, from its environment (else defaults)."""
    environ = os.environ if environ is None else environ
    limits = {}
    for key, (name, default) in SERVER_LIMITS_ENV.items():
        text = environ.get(name)
        limits[key] = type(default)(text) if text else default
    return limits


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


def guard_requests(max_body_bytes: int, max_in_flight: int) -> bool:
    """FastAPI apps of this process that set no ``max_body_size`` get ``max_body_bytes``
    (larger bodies: HTTP 413 before they are read whole), and answer HTTP 503 to requests
    beyond ``max_in_flight`` in progress at once. Returns True if it changed anything."""
    try:
        from fastapi import FastAPI
    except ImportError:  # not in a scoring server
        return False
    original = getattr(FastAPI, "build_middleware_stack", None)
    if original is None or getattr(original, _PATCHED, False):
        return False

    def build_middleware_stack(self):
        if getattr(self, "max_body_size", None) is None:
            self.max_body_size = int(max_body_bytes)
        return InFlightLimit(original(self), max_in_flight)

    setattr(build_middleware_stack, _PATCHED, True)
    FastAPI.build_middleware_stack = build_middleware_stack
    return True


class InFlightLimit:
    """ASGI middleware: at most ``limit`` HTTP requests in progress; more get HTTP 503 at once
    (a bounded queue of work and memory, whatever the number of open connections)."""

    BUSY = json.dumps({"error_code": "TEMPORARILY_UNAVAILABLE",
                       "message": "server busy: too many requests in progress, retry"}).encode()

    def __init__(self, app, limit: int):
        self.app, self.limit, self.in_flight = app, int(limit), 0

    async def __call__(self, scope, receive, send):
        if scope.get("type") != "http":
            return await self.app(scope, receive, send)
        if self.in_flight >= self.limit:
            await send({"type": "http.response.start", "status": 503,
                        "headers": [(b"content-type", b"application/json"),
                                    (b"content-length", str(len(self.BUSY)).encode()),
                                    (b"retry-after", b"1")]})
            await send({"type": "http.response.body", "body": self.BUSY})
            return
        self.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1


# uvicorn's HTTP protocols (httptools when installed, else h11): both keep the request being
# answered in ``cycle`` and call ``on_response_complete`` after each answer.
_PROTOCOLS = (("uvicorn.protocols.http.httptools_impl", "HttpToolsProtocol"),
              ("uvicorn.protocols.http.h11_impl", "H11Protocol"))


def guard_connections(header_timeout: float, max_connections: int) -> bool:
    """Close connections that send no whole request head within ``header_timeout`` seconds
    of opening or of their previous answer, and connections beyond ``max_connections`` open
    at once in this worker. Returns True if it changed anything."""
    changed = False
    for module_name, class_name in _PROTOCOLS:
        try:
            protocol = getattr(importlib.import_module(module_name), class_name)
        except (ImportError, AttributeError):
            continue
        if getattr(protocol.connection_made, _PATCHED, False):
            continue
        _guard_protocol(protocol, float(header_timeout), int(max_connections))
        changed = True
    return changed


def _guard_protocol(protocol, header_timeout: float, max_connections: int) -> None:
    made, answered = protocol.connection_made, protocol.on_response_complete

    def expect_head(conn) -> None:
        # A new request replaces `cycle`: if it is still the one there was (none, or an
        # answered one) when the clock started, no request head came in time.
        waiting_for = conn.cycle

        def expire() -> None:
            idle = conn.cycle is waiting_for and (waiting_for is None
                                                  or waiting_for.response_complete)
            if idle and conn.transport is not None and not conn.transport.is_closing():
                conn.transport.close()

        conn.loop.call_later(header_timeout, expire)

    def connection_made(self, transport) -> None:
        made(self, transport)
        if len(self.connections) > max_connections:
            transport.close()  # connection_lost forgets it
            return
        expect_head(self)

    def on_response_complete(self) -> None:
        answered(self)
        if self.transport is not None and not self.transport.is_closing():
            expect_head(self)

    for function in (connection_made, on_response_complete):
        setattr(function, _PATCHED, True)
    protocol.connection_made = connection_made
    protocol.on_response_complete = on_response_complete

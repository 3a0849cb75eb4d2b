"""What the pyfunc adjusts in a scoring-server worker: TCP_NODELAY on accepted connections."""

from __future__ import annotations

import asyncio
import socket

import pytest

from lookalike.serving.worker import enable_nodelay


def _accepted_nodelay() -> int:
    """TCP_NODELAY of a connection asyncio accepts on a protocol-0 listening socket."""
    listener = socket.socket(family=socket.AF_INET)  # as uvicorn's Config.bind_socket does
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    seen = []

    async def main():
        def on_connect(reader, writer):
            seen.append(writer.get_extra_info("socket").getsockopt(socket.IPPROTO_TCP,
                                                                  socket.TCP_NODELAY))
            writer.close()

        server = await asyncio.start_server(on_connect, sock=listener)
        _, writer = await asyncio.open_connection(*listener.getsockname())
        for _ in range(100):
            if seen:
                break
            await asyncio.sleep(0.01)
        writer.close()
        server.close()
        await server.wait_closed()

    asyncio.run(main())
    return seen[0]


def test_accepted_sockets_get_nodelay_after_enable():
    enable_nodelay()
    assert _accepted_nodelay() != 0
    assert enable_nodelay() is False  # idempotent


_GUARDED_SERVER = r"""
import asyncio, socket, sys, threading, time
import uvicorn
from lookalike.serving.worker import InFlightLimit, guard_connections

assert guard_connections(header_timeout=0.5, max_connections=3)
assert not guard_connections(header_timeout=9, max_connections=9)  # idempotent

async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})

listener = socket.socket()
listener.bind(("127.0.0.1", 0))
port = listener.getsockname()[1]
server = uvicorn.Server(uvicorn.Config(app, log_level="error", http=sys.argv[1]))
threading.Thread(target=server.run, kwargs={"sockets": [listener]}, daemon=True).start()
while not server.started:
    time.sleep(0.05)

def closed(sock, wait):
    sock.settimeout(wait)
    try:
        return sock.recv(1) == b""
    except socket.timeout:
        return False
    except ConnectionResetError:  # closed with our unread bytes in its buffer
        return True

half_open = []
for _ in range(5):
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")
    half_open.append(sock)
# Past max_connections: closed on arrival; the first three wait for their head timeout.
print(sum(closed(s, 0.3) for s in half_open[3:]), sum(closed(s, 0.05) for s in half_open[:3]))
print(sum(closed(s, 1.5) for s in half_open[:3]))
for sock in half_open:
    sock.close()
time.sleep(0.2)
# A keep-alive client that answers in time is served twice; then idle, it is closed.
sock = socket.create_connection(("127.0.0.1", port))
for _ in range(2):
    sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    time.sleep(0.1)
    print(b"200 OK" in sock.recv(1000))
sock.sendall(b"GET / HTTP/1.1\r\n")
print(closed(sock, 1.5))
server.should_exit = True
"""


@pytest.mark.parametrize("http", ["httptools", "h11"])
def test_guarded_uvicorn_closes_half_open_and_excess_connections(http):
    """A real uvicorn with the guard, in a fresh process (the guard patches uvicorn's
    protocol classes for the whole process)."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", _GUARDED_SERVER, http], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["2", "0", "3", "True", "True", "True"], done.stdout


def test_in_flight_limit_answers_503_beyond_it():
    from lookalike.serving.worker import InFlightLimit

    entered, release = asyncio.Event(), asyncio.Event()

    async def slow_app(scope, receive, send):
        entered.set()
        await release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def main():
        limited = InFlightLimit(slow_app, 1)
        sent: list[list[dict]] = [[], []]

        def sender(i):
            async def send(message):
                sent[i].append(message)
            return send

        first = asyncio.create_task(limited({"type": "http"}, None, sender(0)))
        await entered.wait()
        await limited({"type": "http"}, None, sender(1))
        release.set()
        await first
        return [messages[0]["status"] for messages in sent], limited.in_flight

    assert asyncio.run(main()) == ([200, 503], 0)

"""What the pyfunc adjusts in a scoring-server worker: TCP_NODELAY on accepted connections."""

from __future__ import annotations

import asyncio
import socket

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

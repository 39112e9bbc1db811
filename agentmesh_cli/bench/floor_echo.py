"""The gateway scenario's floors: servers that answer each request at once with a fixed JSON
body, with no framework, no Redis, no Kafka.

- `bare`: an asyncio Protocol on uvloop. What it costs per request at a given rate is what
  serving HTTP from a Python event loop costs on this machine (the wake-ups, the socket
  calls, the kernel).
- `uvicorn`: a raw ASGI app under the gateway's own server (uvicorn with uvloop and
  httptools, as services/http.serve runs it): what the server alone costs per request,
  before the gateway's app does anything.

Run as its own process:

    python -m agentmesh_cli.bench.floor_echo PORT [bare|uvicorn]
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import uvloop

from agentmesh_cli.bench.floor_http import split_requests

ANSWER = b'{"in_reply_to":"floor"}'
RESPONSE = (b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
            % (len(ANSWER), ANSWER))


class EchoFloor(asyncio.Protocol):
    """One keep-alive connection: each complete request (by Content-Length) answered."""

    def __init__(self) -> None:
        self.buffer = b""
        self.transport: Any = None  # uvloop's transports are no asyncio.Transport subclasses

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        bodies, self.buffer = split_requests(self.buffer + data)
        if self.transport is not None:
            self.transport.write(RESPONSE * len(bodies))


async def serve(port: int) -> None:
    server = await asyncio.get_running_loop().create_server(EchoFloor, "127.0.0.1", port)
    async with server:
        await server.serve_forever()


async def echo_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """The raw ASGI app of the `uvicorn` floor."""
    if scope["type"] != "http":
        return
    while (await receive()).get("more_body"):
        pass
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(ANSWER)).encode())]})
    await send({"type": "http.response.body", "body": ANSWER})


def main(argv: list[str]) -> int:
    port, kind = int(argv[0]), (argv[1] if len(argv) > 1 else "bare")
    try:
        if kind == "uvicorn":
            import uvicorn

            uvicorn.run(echo_app, host="127.0.0.1", port=port, loop="uvloop", http="httptools",
                        log_level="warning", access_log=False, lifespan="off")
        else:
            uvloop.run(serve(port))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""The services scenario's floor: a bare HTTP/1.1 server with no framework that answers
`POST /tool/store_input` by doing what the memory service does for it (decode the JSON
body, build the item, one EVALSHA of the same store script, a JSON answer).

It is the best a Python service could do on this path, so the memory service's figures
can be read as a share of it. It checks nothing it does not need: it is a measuring
stick, not a service. Run as its own process:

    python -m agentmesh_cli.bench.floor_http PORT REDIS_URL MESH
"""

from __future__ import annotations

import asyncio
import sys
import time
import uuid

import orjson
import redis.asyncio as aioredis

from agentmesh_cli.constants import Keys

POOL = 64


class FloorServer(asyncio.Protocol):
    """One keep-alive connection: requests parsed from the buffer by Content-Length."""

    def __init__(self, store: aioredis.Redis, keys: Keys) -> None:
        self.store, self.keys = store, keys
        self.script = store.register_script(_store_script())
        self.buffer = b""
        self.transport: asyncio.Transport | None = None
        self.queue: asyncio.Queue[bytes] = asyncio.Queue()
        self.worker: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.worker = asyncio.get_running_loop().create_task(self._serve())

    def connection_lost(self, exc: Exception | None) -> None:
        if self.worker is not None:
            self.worker.cancel()

    def data_received(self, data: bytes) -> None:
        bodies, self.buffer = split_requests(self.buffer + data)
        for body in bodies:
            self.queue.put_nowait(body)

    async def _serve(self) -> None:
        # one request at a time per connection, in order, as HTTP/1.1 keep-alive requires
        while True:
            body = await self.queue.get()
            answer = await self._store(body)
            if self.transport is not None:
                self.transport.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                                     b"content-length: %d\r\n\r\n%s" % (len(answer), answer))

    async def _store(self, body: bytes) -> bytes:
        arguments = orjson.loads(body)["arguments"]
        data = arguments["input_data"]
        user, conversation = arguments["user_id"], data.get("conversation_id")
        item = {"message_id": str(uuid.uuid4()), "user_id": user, "conversation_id": conversation,
                "timestamp": time.time(), "content": data["content"], "metadata": data.get("metadata", {})}
        encoded = orjson.dumps(item)
        keys = [self.keys.memory_seq, self.keys.memory_message(item["message_id"]),
                self.keys.memory_user(user)]
        if conversation is not None:
            keys += [self.keys.memory_conversation(conversation),
                     self.keys.memory_conversation_user(conversation, user)]
        await self.script(keys=keys, args=[item["message_id"], repr(item["timestamp"]), encoded,
                                           self.keys.memory_events,
                                           b'{"event":"stored","item":' + encoded + b"}"])
        return orjson.dumps({"result": item})


def split_requests(buffer: bytes) -> tuple[list[bytes], bytes]:
    """The bodies of the complete requests at the start of `buffer` (by Content-Length),
    and what is left of it."""
    bodies = []
    while (head_end := buffer.find(b"\r\n\r\n")) >= 0:
        length = 0
        for line in buffer[:head_end].lower().split(b"\r\n"):
            if line.startswith(b"content-length:"):
                length = int(line[15:])
        end = head_end + 4 + length
        if len(buffer) < end:
            break
        bodies.append(buffer[head_end + 4:end])
        buffer = buffer[end:]
    return bodies, buffer


def _store_script() -> str:
    # the same script text as the memory service (importing it loads FastAPI, once, before
    # the server listens: outside every timed phase)
    from agentmesh_cli.services.memory_store import STORE_SCRIPT

    return STORE_SCRIPT


async def serve(port: int, redis_url: str, mesh: str) -> None:
    pool = aioredis.BlockingConnectionPool.from_url(redis_url, max_connections=POOL, timeout=10)
    store = aioredis.Redis(connection_pool=pool)
    keys = Keys(mesh)
    server = await asyncio.get_running_loop().create_server(
        lambda: FloorServer(store, keys), "127.0.0.1", port)
    async with server:
        await server.serve_forever()


def main(argv: list[str]) -> int:
    port, redis_url, mesh = int(argv[0]), argv[1], argv[2]
    try:
        asyncio.run(serve(port, redis_url, mesh))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

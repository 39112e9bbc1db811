"""The asyncio Redis client of a process that serves HTTP (memory, the gateway): its pool,
PING for GET /health, the readiness record, and the password kept out of what it shows."""

from __future__ import annotations

import asyncio
import json
import time
from urllib.parse import urlsplit

import redis
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from agentmesh_cli.constants import Keys
from agentmesh_cli.store import redis_errors

CONNECT_TIMEOUT_S = 1.0
COMMAND_TIMEOUT_S = 5.0


class AsyncRedis:
    def __init__(self, redis_url: str, mesh: str, connections: int) -> None:
        self.keys = Keys(mesh)
        self._password = urlsplit(redis_url).password or ""
        # one quick retry re-dials a pooled connection that Redis closed; no backoff and no
        # retry of a timeout, so a Redis that is down or hung answers 503 within one timeout.
        # A blocking pool: a burst of requests (100 streams reading their backlog at once)
        # waits for a connection instead of failing with "Too many connections"
        retry = Retry(NoBackoff(), 1, supported_errors=(redis.ConnectionError,))
        with redis_errors("connect"):
            pool = aioredis.BlockingConnectionPool.from_url(
                redis_url, max_connections=connections, timeout=COMMAND_TIMEOUT_S,
                socket_connect_timeout=CONNECT_TIMEOUT_S, socket_timeout=COMMAND_TIMEOUT_S,
                retry=retry)
            self.redis = aioredis.Redis.from_pool(pool)  # closes the pool when it closes

    async def ping(self, timeout: float) -> str | None:
        """None when Redis answers PING within `timeout`, else what failed."""
        try:
            await asyncio.wait_for(self.redis.ping(), timeout)
        except TimeoutError:
            return f"no answer to PING within {timeout} s"
        except (redis.RedisError, OSError) as exc:
            return self.hidden(str(exc) or type(exc).__name__)
        return None

    def hidden(self, text: str) -> str:
        """`text` without the Redis password (GET /health, which shows it, is open to all)."""
        return text.replace(self._password, "***") if self._password else text

    async def mark_ready(self, program: str, pid: int) -> None:
        """The same record Store.mark_ready writes: JSON {pid, ts}."""
        record = json.dumps({"pid": pid, "ts": time.time()})
        with redis_errors("mark ready"):
            await self.redis.set(self.keys.ready(program), record)

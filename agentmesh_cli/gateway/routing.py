"""The gateway's side of replica groups: a request to a group goes to one replica.

A `Dispatch` (routing/dispatch.py) over the state's cached registry and the shared
conversation table. Its calls (a Redis round trip for a new conversation) run in one
worker thread of their own, one at a time (Dispatch is not thread-safe), so a slow Redis
never stalls the gateway's event loop.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from agentmesh_cli import constants as C
from agentmesh_cli.replicas import Groups
from agentmesh_cli.routing.dispatch import Dispatch
from agentmesh_cli.store import Store


class GatewayRouting:
    def __init__(self, mesh: Any, registry: Any) -> None:
        self.store = Store(mesh.redis_url, mesh.config.mesh, timeout=1.0)
        self.dispatch = Dispatch(mesh.config, Groups(self.store), C.GATEWAY_SENDER, time.monotonic,
                                 registry=registry)
        self._worker = ThreadPoolExecutor(1, "gateway-routing")

    def is_group(self, name: str) -> bool:
        return self.dispatch.is_group(name)

    async def _run(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._worker, fn, *args)

    async def target(self, name: str, conversation: str) -> str:
        """The agent a message to `name` in `conversation` goes to (a group's: a replica)."""
        if not self.dispatch.is_group(name):
            return name
        return str(await self._run(self.dispatch.target, name, conversation))

    async def sent(self, replica: str, request_id: str, group: str) -> None:
        await self._run(self._sent, replica, request_id, group)

    def _sent(self, replica: str, request_id: str, group: str) -> None:
        self.dispatch.sent(replica, request_id, group, time.monotonic())
        self.dispatch.publish(time.monotonic())

    async def replied(self, request_id: str) -> None:
        await self._run(lambda: self.dispatch.replied(request_id, time.monotonic()))

    async def forget(self, request_id: str) -> None:
        await self._run(self.dispatch.forget, request_id)

    def close(self) -> None:
        self._worker.shutdown(wait=False)
        self.store.close()

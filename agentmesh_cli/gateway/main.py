"""The `gateway` program: the front door of one mesh, until SIGTERM or SIGINT."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Callable

import uvloop

from agentmesh_cli import constants as C
from agentmesh_cli import dozing
from agentmesh_cli.errors import StoreError
from agentmesh_cli.gateway.app import Gateway, create_app
from agentmesh_cli.gateway.kafka import GatewayBus
from agentmesh_cli.gateway.mcp import install_gateway_mcp
from agentmesh_cli.gateway.state import GatewayState
from agentmesh_cli.mesh import Mesh
from agentmesh_cli.services.mcp import served_hosts
from agentmesh_cli.services.seed import http_url
from agentmesh_cli.signing import mesh_signer
from agentmesh_cli.store import Store

log = logging.getLogger(__name__)

READY_RETRY_S = 1.0


def reply_address(host: str, port: int) -> str:
    """Stable per host and port: a restarted gateway reads the replies its last run asked for."""
    return f"{C.GATEWAY_SENDER}-{socket.gethostname()}-{port}"


def build(mesh: Mesh, host: str, port: int) -> Gateway:
    settings = mesh.config.gateway
    # a group by its name, and its replicas as declared (more when registered)
    declared = {a.name for a in mesh.config.agents} | {name for name, _ in mesh.config.concrete_agents()}
    state = GatewayState(mesh.redis_url, mesh.config.mesh, declared, kept=settings.events_kept,
                         ttl_s=settings.events_ttl)
    return Gateway(mesh, state, reply_address(host, port), mesh_signer(mesh))


def run(mesh: Mesh, host: str, port: int) -> None:
    from agentmesh_cli.services.http import serve

    gateway = build(mesh, host, port)

    def start_bus(loop: asyncio.AbstractEventLoop) -> GatewayBus:
        cfg = mesh.config
        # its requests ring sleeping agents; its reply reader sleeps when idle (dozing.py)
        bell = dozing.doorbell(Store(mesh.redis_url, cfg.mesh), cfg, gateway.address, (C.TOPIC_REPLIES,))
        bus = GatewayBus(cfg.kafka, gateway.address, gateway.signer, loop, bell,
                         dozing.policy(cfg, cfg.kafka.fetch_wait))
        gateway.state.on_new_epoch = bus.rewind
        return bus

    app = create_app(gateway, start_bus=start_bus)
    install_gateway_mcp(app, gateway, hosts=served_hosts(host), origins=mesh.config.services.cors_origins,
                        max_body_bytes=mesh.config.gateway.max_body_bytes)
    where = (f"{http_url(host, port, mesh.config.services.scheme)} (mesh {mesh.config.mesh}, "
             f"reply address {gateway.address})")

    async def on_started(stopping: Callable[[], bool]) -> None:
        log.info("serving on %s", where)
        failures = 0
        # a retry of the write, with no deadline (the gateway serves meanwhile): not a wait
        while not stopping():
            try:
                await gateway.state.refresh()
                await gateway.state.mark_ready(C.PROGRAM_GATEWAY, os.getpid())
            except StoreError as exc:
                if failures == 0:
                    log.warning("not ready yet, retrying every %.0f s: %s", READY_RETRY_S,
                                gateway.state.hidden(str(exc)))
                failures += 1
                await asyncio.sleep(READY_RETRY_S)
                continue
            return

    tls = mesh.config.services
    # uvloop: the gateway is the front door, so its loop does the most per request
    serve(app, host, port, on_started, certfile=tls.tls_cert, keyfile=tls.tls_key,
          loop_factory=uvloop.new_event_loop)



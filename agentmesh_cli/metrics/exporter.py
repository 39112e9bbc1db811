"""The `metrics` program: on each scrape of GET /metrics, read Redis and supervisord and
answer every role's counters and gauges in the Prometheus text format.

Nothing is kept between scrapes but connections and the offset into supervisord's main
log (restart counts, supervisor/restarts.py): every value comes from the sources at scrape
time, rendered by a custom collector on a registry of our own (no global state). A source
that does not answer leaves its families out and sets `agentmesh_up{source}` to 0; the
scrape itself still answers 200.
"""

from __future__ import annotations

import errno
import logging
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterable
from types import FrameType
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client.exposition import ThreadingWSGIServer, make_wsgi_app
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector, CollectorRegistry

from agentmesh_cli.errors import AgentMeshError, ConfigError, PortInUseError
from agentmesh_cli.mesh import Mesh
from agentmesh_cli.metrics.families import Reading, families
from agentmesh_cli.replica_view import groups_of
from agentmesh_cli.replicas import Groups, running_agents
from agentmesh_cli.store import Store
from agentmesh_cli.supervisor.control import Supervisor
from agentmesh_cli.supervisor.restarts import SpawnLog

READ_TIMEOUT_S = 2.0  # a scrape waits this long for Redis; Prometheus' default timeout is 10 s
STOP_POLL_S = 0.5

log = logging.getLogger("metrics")

StartResponse = Callable[..., Any]
WsgiApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


def metrics_url(mesh: Mesh) -> str:
    """Where this mesh's exporter answers, as a local client reaches it."""
    host, port = mesh.config.metrics.host, mesh.config.metrics.port
    host = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(host, host)
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}/metrics"


class MeshCollector(Collector):
    """Reads the mesh on each `collect()`; scrapes are served one at a time."""

    def __init__(self, mesh: Mesh) -> None:
        self.mesh = mesh
        self.store = Store(mesh.redis_url, mesh.config.mesh, timeout=READ_TIMEOUT_S)
        self.spawns = SpawnLog()
        self._lock = threading.Lock()
        self._up: dict[str, bool] = {}

    def collect(self) -> Iterable[Metric]:
        with self._lock:
            return families(self.read())

    def read(self) -> Reading:
        reading = Reading(ts=time.time(), agents=running_agents(self.mesh.config, {}))
        self._read_redis(reading)
        self._read_supervisord(reading)
        return reading

    def close(self) -> None:
        self.store.close()

    def _read_redis(self, reading: Reading) -> None:
        keys = self.mesh.keys
        try:
            reading.counters = self.store.all_counters()
            reading.registry = self.store.agents()
            reading.service_clients = self.store.service_clients()
            snapshot = self.store.load_snapshot()
            consensus = self.store.load_json(keys.consensus_snapshot)
            self._read_groups(reading)
        except AgentMeshError as exc:
            self._source("redis", False, str(exc))
            return
        if snapshot:
            reading.topology = {"ts": snapshot.get("ts", 0), "stats": snapshot.get("stats", {})}
        if consensus:
            reading.pending_proposals = len(consensus.get("proposals", []))
        reading.redis_up = self._source("redis", True)

    def _read_groups(self, reading: Reading) -> None:
        """A mesh with replica groups: the replicas it runs now, each replica's group, and
        the senders' routing state (nothing is read for a mesh without groups)."""
        config = self.mesh.config
        groups = config.groups()
        if not groups:
            return
        replicas = Groups(self.store)
        counts = replicas.counts()
        reading.routing = replicas.routing()
        reading.agents = running_agents(config, counts)
        reading.replicas = {name: (spec.declared_replicas, counts.get(name, spec.declared_replicas))
                            for name, spec in groups.items()}
        reading.group_of = groups_of(config, {*reading.agents, *reading.counters, *reading.registry})

    def _read_supervisord(self, reading: Reading) -> None:
        with Supervisor(self.mesh) as sup:
            if not sup.is_running():
                self._source("supervisord", False, f"not running (socket {self.mesh.socket})")
                return
            try:
                infos = sup.processes()
                self.spawns.update(sup.read_main_log)
            except AgentMeshError as exc:
                self._source("supervisord", False, str(exc))
                return
        reading.programs = {p["name"]: p["statename"] for p in infos}
        reading.restarts = {name: self.spawns.restarts(name) for name in reading.programs}
        reading.supervisord_up = self._source("supervisord", True)

    def _source(self, name: str, up: bool, why: str = "") -> bool:
        """Log a source's change between answering and not (one line, not one per scrape)."""
        if self._up.get(name, True) != up:
            if up:
                log.info("%s answers again", name)
            else:
                log.warning("%s unavailable, its metrics are left out: %s", name, why)
        self._up[name] = up
        return up


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """One line per scrape would drown the program's log."""


def routes(metrics_app: WsgiApp) -> WsgiApp:
    """/metrics answers the metrics, / points there, anything else is a 404."""

    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/metrics":
            return metrics_app(environ, start_response)
        status = "200 OK" if path == "/" else "404 Not Found"
        start_response(status, [("Content-Type", "text/plain; charset=utf-8")])
        return [b"agentmesh metrics: GET /metrics\n"]

    return app


def make_app(collector: Collector) -> WsgiApp:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return routes(make_wsgi_app(registry))


def _server(host: str, port: int, app: WsgiApp) -> ThreadingWSGIServer:
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    except OSError as exc:
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc

    class Server(ThreadingWSGIServer):
        address_family = family

    try:
        return make_server(host, port, app, server_class=Server, handler_class=_QuietHandler)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise PortInUseError(f"port {port} on {host} is already in use, so the metrics "
                                 "exporter cannot start; stop what holds it or set metrics.port") from exc
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc


def serve(mesh: Mesh, host: str, port: int) -> None:
    """Serve /metrics until SIGTERM or SIGINT (the `agentmesh metrics` process)."""
    collector = MeshCollector(mesh)
    server = _server(host, port, make_app(collector))
    stopping = threading.Event()

    def stop(signum: int, _frame: FrameType | None) -> None:
        log.info("signal %s: stopping", signal.Signals(signum).name)
        stopping.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    thread = threading.Thread(target=server.serve_forever, args=(STOP_POLL_S,), name="http", daemon=True)
    thread.start()
    shown = f"[{host}]" if ":" in host else host
    log.info("serving on http://%s:%d/metrics (mesh %s)", shown, port, mesh.config.mesh)
    try:
        while not stopping.wait(STOP_POLL_S):
            pass
    finally:
        server.shutdown()  # waits until serve_forever has returned: no new scrape starts
        server.server_close()
        collector.close()
    log.info("stopped")

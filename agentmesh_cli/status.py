"""Collect the mesh's state for `agentmesh status`: programs, agents, topology, proposals,
services and infra, as one versioned JSON-able dict (STATUS_VERSION, docs/status.schema.json).

Sources: supervisord's XML-RPC (program states, pids, its main log for restart counts: one
multicall), the CPU times and RSS of the pids supervisord reports (sampling.py), Redis
(registry, counters, snapshots, proposals: two round trips, status_reads.py), each
service's GET /health, and a metadata request to the broker. The probes, and supervisord
once the registry is read, are asked in threads while Redis is read: a frame waits for its
slowest source rather than for their sum. Status never joins a consumer group and never
reads the broker's watermarks (they are wrong, DESIGN 8): an agent's inbox backlog comes
from our own counters. `StatusCollector` keeps what spans frames (CPU samples, the main
log's offset, the broker probe's client) for the live dashboard; a one-shot status leaves
the samples and the log's offset in the state folder for the next one (a script polling
`status --json`).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import orjson

from agentmesh_cli import constants as C
from agentmesh_cli.agent_load import asks, llm, load
from agentmesh_cli.backlog import backlog, sent_totals
from agentmesh_cli.errors import AgentMeshError
from agentmesh_cli.mesh import Mesh
from agentmesh_cli.replica_view import nest_groups
from agentmesh_cli.sampling import ProcessSampler
from agentmesh_cli.services.probe import Prober, gateway_url, service_url, tls_verify
from agentmesh_cli.signing import refused_totals
from agentmesh_cli.status_reads import Stored, read_stored
from agentmesh_cli.store import Store
from agentmesh_cli.supervisor.control import Supervisor
from agentmesh_cli.supervisor.restarts import SpawnLog

if TYPE_CHECKING:  # confluent-kafka is imported with the first frame's probe
    from agentmesh_cli.broker import BrokerProbe

STATUS_VERSION = 2
RECENT_PROPOSALS = 20
HEALTH_TIMEOUT_S = 0.5
PROBE_TIMEOUT_S = 0.5  # the broker's metadata request
CPU_WINDOW_S = 0.3  # one-shot status: CPU% over at least this long
SAMPLES_KEPT_S = 60.0  # an earlier status's CPU samples serve for this long (then: the window)
HEALTH_WORDS = {200: "healthy"}  # else the service's own word (unhealthy, degraded)


class StatusCollector:
    """One status frame per `collect()`; keeps CPU samples and the log offset between frames."""

    def __init__(self, mesh: Mesh) -> None:
        self.mesh = mesh
        self.sampler = ProcessSampler()
        self.spawns = SpawnLog()
        self.store = Store(mesh.redis_url, mesh.config.mesh, timeout=1.0)
        self._redis_problem: str | None = None
        # every frame's /health requests (https with services.tls_*, trusting services.tls_ca)
        self.prober = Prober(HEALTH_TIMEOUT_S, verify=tls_verify(mesh))
        self._broker: BrokerProbe | None = None
        # the services' and the broker's probes, and supervisord's read, while Redis is read
        self._probes = ThreadPoolExecutor(max_workers=3, thread_name_prefix="status")

    def close(self) -> None:
        self._probes.shutdown(wait=False, cancel_futures=True)
        self.store.close()

    def __enter__(self) -> StatusCollector:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def collect(self, cpu_window: float = 0.0) -> dict[str, Any]:
        """A frame. With `cpu_window`, CPU% is sampled over at least that long (one-shot);
        without, over the time since the previous frame (the first frame has none)."""
        now = time.time()
        one_shot = bool(cpu_window)
        if one_shot:  # read supervisord's log on from where the previous one-shot status stopped
            self.spawns.resume(self._load_state(C.STATUS_LOG))
        # the probes wait on other processes: asked first, answered while this thread reads
        services = self._probes.submit(_services, self.mesh, self.prober)
        broker = self._probes.submit(self._broker_probe)
        redis = self._redis_probe()
        errors: list[str] = []
        supervisor: list[Future[tuple[bool, list[dict[str, Any]], str | None]]] = []

        def read_supervisor() -> None:  # while this thread reads every owner's counters
            supervisor.append(self._probes.submit(self._supervisor))

        # the registry before supervisord: a registered pid is then never newer than the pid
        # supervisord reports, so a re-joined agent is not taken for a stale one
        stored = self._read_redis(errors, read_supervisor) if redis["reachable"] else None
        if not supervisor:  # Redis did not answer
            read_supervisor()
        sup_running, infos, problem = supervisor[0].result()
        errors += [problem] if problem else []
        primed = time.monotonic()
        # no program to sample (supervisord down): no window to wait for, cpu_window_s is None
        pids = [p["pid"] for p in infos if p["pid"]]
        samples = self._load_state(C.STATUS_SAMPLES) if one_shot else None
        if isinstance(samples, dict) and self.sampler.resume(samples, pids, SAMPLES_KEPT_S):
            cpu_window = 0.0  # an earlier `status` sampled these processes: measure from there
        if cpu_window and pids:
            self.sampler.prime(pids)
        else:
            cpu_window = 0.0
        result: dict[str, Any] = {
            "v": STATUS_VERSION,
            "mesh": self.mesh.config.mesh,
            "ts": round(now, 3),
            "supervisord": {"running": sup_running, "pid": self._supervisord_pid,
                            "socket": str(self.mesh.socket)},
            "cpu_window_s": None,
            "programs": [],
            "agents": [],
            "topology": None,
            "proposals": [],
            "services": services.result(),
            "infra": {"broker": broker.result(), "redis": redis},
            "errors": errors,
        }
        if not redis["reachable"]:
            errors.append(f"redis at {redis['address']}: {self._redis_problem}")
        elif stored is not None:
            self._add_stored(result, stored, {p["name"]: p["pid"] for p in infos}, now)
        if cpu_window:
            time.sleep(max(0.0, cpu_window - (time.monotonic() - primed)))
        window = self.sampler.window()
        result["cpu_window_s"] = None if window is None else round(window, 2)
        result["programs"] = [self._program(p) for p in infos]
        self.sampler.keep_only(pids)
        if one_shot and pids:
            self._save_state(C.STATUS_SAMPLES, self.sampler.saved())
        if one_shot and infos:
            self._save_state(C.STATUS_LOG, self.spawns.saved())
        return result

    def _load_state(self, name: str) -> Any:
        """What the previous one-shot status left in the state folder (None: nothing)."""
        try:
            return orjson.loads((self.mesh.state_dir / name).read_bytes())
        except (OSError, orjson.JSONDecodeError):
            return None

    def _save_state(self, name: str, data: dict[str, Any]) -> None:
        """Leave this frame's state for the next one-shot `status` (a private file of the
        state folder, replaced whole; nothing is lost when it cannot be written)."""
        path = self.mesh.state_dir / name
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        try:
            tmp.write_bytes(orjson.dumps(data))
            tmp.replace(path)
        except OSError:
            tmp.unlink(missing_ok=True)

    def _supervisor(self) -> tuple[bool, list[dict[str, Any]], str | None]:
        """(supervisord running, its processes, the problem reading them)."""
        self._supervisord_pid: int | None = None
        with Supervisor(self.mesh) as sup:
            try:
                reading = sup.reading(self.spawns.read_from)
                if reading is None:
                    return False, [], None
                self._supervisord_pid = reading.pid
                first = [reading.main_log]  # what the spawn log reads first; more only when rotated
                self.spawns.update(lambda offset: first.pop() if first else sup.read_main_log(offset))
            except AgentMeshError as exc:
                return True, [], f"supervisord: {exc}"
        return True, reading.processes, None

    def _program(self, p: dict[str, Any]) -> dict[str, Any]:
        running = p["statename"] == "RUNNING"
        cpu, rss = self.sampler.sample(p["pid"]) if p["pid"] else (None, None)
        return {
            "name": p["name"],
            "state": p["statename"],
            "pid": p["pid"] or None,
            "uptime_s": max(0, p["now"] - p["start"]) if running else 0,
            "restarts": self.spawns.restarts(p["name"]),
            "cpu_percent": cpu,
            "rss_bytes": rss,
            "description": p["description"],
        }

    def _broker_probe(self) -> dict[str, Any]:
        if self._broker is None:
            from agentmesh_cli.broker import BrokerProbe

            self._broker = BrokerProbe(self.mesh.config.kafka)
        return _reachability(self.mesh.config.kafka.bootstrap, self._broker.latency(PROBE_TIMEOUT_S))

    def _redis_probe(self) -> dict[str, Any]:
        started = time.monotonic()
        self._redis_problem = self.store.problem()
        address = _redis_address(self.mesh.config.redis.resolved_url)
        return _reachability(address, None if self._redis_problem else time.monotonic() - started)

    def _read_redis(self, errors: list[str], registry_read: Callable[[], object]) -> Stored | None:
        try:
            # a mesh without replica groups reads none of their state
            stored = read_stored(self.store, C.TOPOLOGY_HISTORY_KEPT, RECENT_PROPOSALS,
                                 groups=bool(self.mesh.config.groups()), registry_read=registry_read)
        except AgentMeshError as exc:
            errors.append(f"redis: {exc}")
            return None
        if stored.snapshot_problem:  # not of the manager's making: the rest of the frame stands
            errors.append(stored.snapshot_problem)
        return stored

    def _add_stored(self, result: dict[str, Any], stored: Stored, supervised: dict[str, int],
                    now: float) -> None:
        registry, counters = stored.registry, stored.counters
        # a replica group as one logical agent, its replicas nested (replica_view.py)
        result["agents"] = nest_groups(
            _agents(self.mesh, registry, counters, supervised, now, stored.counts), self.mesh.config,
            stored.counts, stored.retiring, stored.routing, counters, now)
        # records refused for their signature or sender, per owner (security.sign_envelopes)
        result["signing"] = {"on": self.mesh.config.security.sign_envelopes,
                             "refused": refused_totals(counters)}
        if stored.snapshot:
            try:
                result["topology"] = _topology(self.mesh, stored.snapshot, stored.history, counters, now)
            except (KeyError, TypeError, ValueError, IndexError) as exc:
                # JSON of the wrong shape: reported, not a traceback (the manager itself
                # rebuilds from the topics when it cannot read a snapshot)
                result["errors"].append(f"malformed topology snapshot: {type(exc).__name__}: {exc}")
        result["proposals"] = [_proposal(p, now) for p in stored.proposals]
        for service in result["services"]:
            service["clients"] += [
                {"owner": owner, **state[service["name"]]}
                for owner, state in sorted(stored.clients.items())
                if owner in registry and isinstance(state.get(service["name"]), dict)
            ]


def collect(mesh: Mesh, cpu_window: float = CPU_WINDOW_S) -> dict[str, Any]:
    """One status frame (`status --once` and `--json`)."""
    with StatusCollector(mesh) as collector:
        return collector.collect(cpu_window)


def _reachability(address: str, took: float | None) -> dict[str, Any]:
    return {"address": address, "reachable": took is not None,
            "latency_ms": None if took is None else round(took * 1000, 1)}


def _redis_address(url: str) -> str:
    """host:port (or the socket path) of a Redis URL, without its credentials."""
    parts = urlsplit(url)
    if parts.scheme == "unix":
        return parts.path
    return f"{parts.hostname}:{parts.port or 6379}"


def _agents(mesh: Mesh, registry: dict[str, dict[str, Any]], counters: dict[str, dict[str, int]],
            supervised: dict[str, int], now: float, counts: dict[str, int]) -> list[dict[str, Any]]:
    """Every agent of mesh.yaml (a group's replicas as many as it runs now, `counts`) or
    the registry. Stale: its heartbeat is older than
    `interval * missed`, or supervisord runs another pid than the one it registered (it
    died and its replacement has not joined yet). Not running: not in the registry.
    Load and asks: agent_load.py."""
    cfg = mesh.config
    stale_after = cfg.heartbeat.interval * cfg.heartbeat.missed
    configured = dict(cfg.concrete_agents(counts))
    sent = sent_totals(counters)
    agents = []
    for name in sorted(set(configured) | set(registry)):
        rec = registry.get(name)
        own = counters.get(name, {})
        program = C.agent_program(name)
        age = None if rec is None else round(max(0.0, now - rec.get("last_heartbeat", 0) / 1000), 1)
        pid_gone = rec is not None and program in supervised and supervised[program] != rec.get("pid")
        state = ("not running" if age is None
                 else "stale" if age > stale_after or pid_gone else "alive")
        spec = configured.get(name)
        handled = own.get(C.COUNTER_IN, 0)
        agents.append({
            "name": name,
            "role": (rec or {}).get("role") or (spec.role if spec else None),
            "capabilities": (rec or {}).get("capabilities", list(spec.capabilities) if spec else []),
            "program": program,
            "pid": (rec or {}).get("pid"),
            "host": (rec or {}).get("host"),
            "state": state,
            "alive": state == "alive",
            "heartbeat_age_s": age,
            "messages_in": handled,
            "messages_out": own.get(C.COUNTER_OUT, 0),
            "dead_letters": own.get(C.COUNTER_DEAD, 0),
            "sent_to": sent.get(name, 0),
            "backlog": backlog(sent, counters, name),
            **load(rec),
            "asks": asks(own),
            "llm": llm(own),
            "counters": own,
        })
    return agents


def _topology(mesh: Mesh, snapshot: dict[str, Any], history: list[dict[str, Any]],
              counters: dict[str, dict[str, int]], now: float) -> dict[str, Any]:
    g = snapshot["graph"]
    edges = sorted(g["edges"], key=lambda e: (-e[2], -e[3], e[0], e[1]))
    return {
        "snapshot_age_s": round(max(0.0, now - snapshot["ts"] / 1000), 1),
        "agents": g["agents"],
        "stats": snapshot["stats"],
        "max_weight": mesh.config.topology.max_weight,
        "edges": [
            {"source": s, "target": t, "weight": w, "usage": u, "last_used": lu}
            for s, t, w, u, lu in edges
        ],
        "history": history,
        "counters": counters.get(C.PROGRAM_TOPOLOGY, {}),
        "departed": snapshot.get("departed", {}),
    }


def _services(mesh: Mesh, prober: Prober) -> list[dict[str, Any]]:
    """Each service's own answer to GET /health, and how long it took."""
    services: list[dict[str, Any]] = []
    callers: dict[str, list[dict[str, Any]]] = {}  # service -> other services' clients of it
    for name in C.SERVICE_PROGRAMS:
        code, took, body = prober.health(mesh, name)
        services.append({
            "name": name,
            "url": service_url(mesh, name),
            "health": "unreachable" if code is None
            else HEALTH_WORDS.get(code, str(body.get("status", f"http {code}"))),
            "latency_ms": None if code is None else round(took * 1000, 1),
            "clients": [],
        })
        for target, state in (body.get("clients") or {}).items():
            if isinstance(state, dict):
                callers.setdefault(str(target), []).append({"owner": name, **state})
    for service in services:  # other services' clients first; the agents' are added later
        service["clients"] = callers.get(service["name"], [])
    if mesh.config.gateway.enabled:  # the front door: its own /health (Redis and Kafka)
        url = gateway_url(mesh)
        started = time.monotonic()
        code, raw = prober.get(url + "/health")
        took = time.monotonic() - started
        try:
            word = str(orjson.loads(raw).get("status")) if code is not None else "unreachable"
        except (orjson.JSONDecodeError, AttributeError):
            word = f"http {code}"
        services.append({"name": C.PROGRAM_GATEWAY, "url": url,
                         "health": "unreachable" if code is None else HEALTH_WORDS.get(code, word),
                         "latency_ms": None if code is None else round(took * 1000, 1), "clients": []})
    return services


def _proposal(p: dict[str, Any], now: float) -> dict[str, Any]:
    t = p["tally"]
    decided = p.get("decided_at")
    pending = p["status"] == "pending"
    return {
        "id": p["id"],
        "proposer": p["proposer_id"],
        "type": p["type"],
        "intensity": p["waggle"]["intensity"],
        "for": t["for"],
        "against": t["against"],
        "needed": t["needed"],
        "electorate": t["electorate"],
        "status": p["status"],
        "age_s": round(max(0.0, now - p["created_at"] / 1000), 1),
        "decision_ms": None if decided is None else decided - p["created_at"],
        "expires_in_s": round(max(0.0, p["expires_at"] / 1000 - now), 1) if pending else None,
    }


def all_running(status: dict[str, Any]) -> bool:
    return bool(status["programs"]) and all(p["state"] == "RUNNING" for p in status["programs"])

"""Mesh scenario: agent -> agent messages per second and send -> handler latency through
real agent processes, next to the raw and floor baselines taken on the same broker.

The mesh: the topology manager (`agentmesh topology`) and N agents (`agentmesh agent`)
with the bench role `Relay` (bench/relay.py), each on an inbox partition of its own, or,
under the host's inbox reader, on mesh.yaml's 16 when they are more (`bench_partitions`). The
bench steers the relays through one Redis key and reads their figures (exact counts, a
latency histogram) from Redis; nothing is measured in the bench process but CPU and RSS.

Phases, each measured over a window that starts after a warm-up:

- peak, closed loop: `window` messages per agent are injected by an operator sender (the
  first hop, not counted); each relay forwards what it gets to the next agent, so the
  mesh keeps `agents x window` messages in flight. Messages delivered agent -> agent per
  second, their latency, and the topology manager's backlog (start, middle, end).
- paced at half the peak rate: the relays emit messages of one hop on a schedule.
- one hop at a low rate (IDLE_RATE across the mesh): the p50 compared with the raw
  one-hop latency.

Each phase starts once the relays have handled what the one before sent (`mesh_relays.settle`): a
backlog left by one phase is not measured as the next one's latency.

Then the traffic stops and the bench waits until the topology manager has read every
message, to compare its reinforcements with the messages the relays sent.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psutil
import redis

from agentmesh_cli import constants as C
from agentmesh_cli import events
from agentmesh_cli.bench import baselines, mesh_floor
from agentmesh_cli.bench.infra import (
    BenchMesh,
    bench_mesh,
    bench_mesh_on,
    free_port,
    listener_pid,
    ratio,
)
from agentmesh_cli.bench.mesh_relays import (
    WARMUP_S,
    Relays,
    bench_partitions,
    paced_window,
    relay_names,
    sent_and_handled,
    settle,
    window_figures,
)
from agentmesh_cli.bench.mesh_watch import Backlog, Sampler, topology_read
from agentmesh_cli.bench.relay import (
    BENCH_TYPE,
    bench_payload,
    sample_envelope,
)
from agentmesh_cli.broker import prepare_topics
from agentmesh_cli.bus import Bus
from agentmesh_cli.dozing import ringing, stop_ringing
from agentmesh_cli.embedded import BrokerKind
from agentmesh_cli.errors import BenchError, WaitTimeout
from agentmesh_cli.signing import mesh_signer
from agentmesh_cli.store import Store
from agentmesh_cli.waiting import wait_until

RELAY_ROLE = "agentmesh_cli.bench.relay:Relay"
DEFAULT_WINDOW = 100  # messages in flight per agent in the peak phase
HOPS = 10**9  # a peak message circulates until its run ends
IDLE_RATE = 200  # messages/s across the mesh in the one-hop phase
START_TIMEOUT_S = 60.0
INJECT_TIMEOUT_S = 180.0
DRAIN_TIMEOUT_S = 30.0
SNAPSHOT_INTERVAL = "1s"  # the topology manager's snapshots: its backlog is sampled from them
TARGETS = {"msgs_per_s": 50_000, "floor_ratio": 0.7, "p50_to_raw": 1.5, "paced_p99_ms": 10.0}


@contextmanager
def _mesh(names: list[str], partitions: int, config: str | None, linger_ms: float | None,
          sign: bool | None = None, broker: BrokerKind = "tansu", inbox_reader: str = "auto"
          ) -> Iterator[BenchMesh]:
    kafka: dict[str, Any] = {"partitions": partitions, "inbox_reader": inbox_reader}
    if linger_ms is not None:
        kafka["client"] = {"linger.ms": linger_ms}
    sections: dict[str, Any] = {
        "kafka": kafka,
        "topology": {"snapshot_interval": SNAPSHOT_INTERVAL},
        # no service is called by a relay; free ports keep their health checks off others'
        "services": {"memory": {"port": free_port()}, "cognition": {"port": free_port()}},
        "metrics": {"port": free_port()},
        "gateway": {"port": free_port()},
        "workload": {"order_rate": 0, "lead_rate": 0, "refund_rate": 0},
        "agents": [{"name": name, "role": RELAY_ROLE} for name in names],
        # signed as told, else as the running mesh signs (with a key of the bench mesh's own),
        # else as mesh.yaml's default
        "security": {"sign_envelopes": _signs(sign, config)},
    }
    if config is None:
        with bench_mesh(broker_kind=broker, **sections) as bm:
            yield bm
    else:
        if linger_ms is not None:
            sections["kafka"]["client"] = {**_base_client(config), "linger.ms": linger_ms}
        with bench_mesh_on(config, **sections) as bm:
            yield bm


def _signs(sign: bool | None, config: str | None) -> bool:
    from agentmesh_cli.config import SecurityConfig
    from agentmesh_cli.mesh import load_mesh

    if sign is not None:
        return sign
    if config is not None:
        return load_mesh(Path(config)).config.security.sign_envelopes
    return SecurityConfig().sign_envelopes


def _base_client(config: str) -> dict[str, Any]:
    from agentmesh_cli.mesh import load_mesh

    return dict(load_mesh(Path(config)).config.kafka.client)


def _start(bm: BenchMesh, store: Store, names: list[str]) -> dict[str, Any]:
    """Start the topology manager (and the host's inbox reader, kafka.inbox_reader: host)
    and the relays; wait until they are ready and the manager's graph holds every relay.
    Returns the processes by kind."""
    manager = bm.spawn("topology", name=C.PROGRAM_TOPOLOGY)
    host = [bm.spawn("inbox-reader", name=C.PROGRAM_INBOX)] if bm.mesh.config.kafka.inbox_reader == "host" \
        else []
    agents = [bm.spawn_agent(name, RELAY_ROLE) for name in names]
    programs = {C.PROGRAM_TOPOLOGY: manager, **({C.PROGRAM_INBOX: host[0]} if host else {}),
                **{C.agent_program(n): p for n, p in zip(names, agents, strict=True)}}
    waiting: list[str] = []

    def started() -> bool:
        nonlocal waiting
        waiting = [program for program, proc in programs.items() if store.ready_pid(program) != proc.pid]
        snapshot = store.load_snapshot() or {}
        if not waiting and set(snapshot.get("graph", {}).get("agents", [])) >= set(names):
            return True
        if dead := [program for program, proc in programs.items() if proc.poll() is not None]:
            raise BenchError(f"bench mesh did not start (exited: {', '.join(dead)}); logs in {bm.root}")
        return False

    wait_until(started, START_TIMEOUT_S,
               lambda: f"the bench mesh to start ({', '.join(waiting) or 'the graph'}); logs in {bm.root}")
    return {"manager": manager, "agents": agents, "host": host}


def _inject(bus: Bus, names: list[str], run: str, window: int) -> int:
    for _ in range(window):
        for name in names:
            bus.send_message(events.message(C.CLI_COUNTER_OWNER, name, BENCH_TYPE, bench_payload(run, HOPS)))
    # a broker near its limit (64 agents and more on two cores) takes a minute for these
    if bus.flush(INJECT_TIMEOUT_S):
        raise BenchError(f"injected messages not delivered to the broker within {INJECT_TIMEOUT_S:.0f} s")
    return window * len(names)


def _drain(store: Store, relays: Relays, runs: list[str], injected: int) -> dict[str, Any]:
    """Stop the traffic; wait until every relay has handled all that was sent and the
    topology manager has read all of it; its counters then."""
    relays.steer(None)
    sent = handled = consumed = 0

    def drained() -> dict[str, Any] | None:
        nonlocal sent, handled, consumed
        sent, handled = sent_and_handled(relays, runs)
        _, consumed = topology_read(store)
        counters = store.counters(C.PROGRAM_TOPOLOGY)
        if sent == handled and consumed == sent + injected and counters.get(
                C.records_counter(C.TOPIC_MESSAGES)) == consumed:
            return {"drained": True, "sent": sent, "handled": handled, "counters": counters}
        return None

    try:
        return wait_until(drained, DRAIN_TIMEOUT_S, "the relays and the topology to drain", interval=0.2)
    except WaitTimeout:
        return {"drained": False, "sent": sent, "handled": handled, "consumed": consumed,
                "counters": store.counters(C.PROGRAM_TOPOLOGY)}


def _rss_mb(pids: list[int]) -> dict[str, float]:
    sizes = [psutil.Process(pid).memory_info().rss / 2**20 for pid in pids]
    return {"max": round(max(sizes), 1), "mean": round(sum(sizes) / len(sizes), 1)}




def run(agents: int = 4, duration: float = 5.0, window: int = DEFAULT_WINDOW, partitions: int | None = None,
        config: str | None = None, linger_ms: float | None = None,
        sign: bool | None = None, broker: BrokerKind = "tansu", inbox_reader: str = "auto"
        ) -> dict[str, Any]:
    """Run the mesh scenario; one dict in the bench result shape (see cli/bench.py).

    `config`: the mesh.yaml of a running mesh whose broker and Redis are used, under a
    mesh name and topic prefix of the bench's own. `linger_ms`: the producers' linger
    (mesh.yaml `kafka.client` `linger.ms`) of the bench mesh, to measure its effect. `sign`:
    whether the bench mesh signs its records (security.sign_envelopes); None: as `config`'s
    mesh, else as mesh.yaml's default (on). True and False side by side show what signing
    costs. `broker`: the throwaway broker (embedded.BROKER_KINDS) when there is no `config`.
    `inbox_reader`: kafka.inbox_reader, `agent` (each relay fetches its inbox), `host` (one
    inbox reader fetches for them all) or `auto` (host from AUTO_HOST_AGENTS relays up)."""
    partitions = partitions or bench_partitions(agents, inbox_reader)
    names = relay_names(agents, partitions)
    notes: list[str] = []
    load_start = round(os.getloadavg()[0], 2)
    tag = uuid.uuid4().hex[:6]
    runs = {phase: f"{phase}-{tag}" for phase in ("peak", "paced", "idle")}
    with _mesh(names, partitions, config, linger_ms, sign, broker, inbox_reader) as bm:
        cfg = bm.mesh.config
        if config is not None:
            notes.append(f"on the broker and Redis of {config}, as mesh {cfg.mesh} with topic prefix "
                         f"{cfg.kafka.topic_prefix} (its agents and topics are not touched; removed after)")
        store = Store(bm.mesh.redis_url, cfg.mesh)
        client = redis.Redis.from_url(bm.mesh.redis_url)
        # a load generator batches; it signs when the bench mesh does
        bus = Bus(cfg.kafka, "bench-injector", linger_ms=5, signer=mesh_signer(bm.mesh))
        ringing(bus, store)  # a sleeping relay is rung (dozing.py)
        try:
            prepare_topics(cfg.kafka, store)
            procs = _start(bm, store, names)
            relays = Relays(client, cfg.mesh, names)
            envelope = sample_envelope(runs["peak"], names[0], names[1], HOPS)
            # baselines first, on the same broker with the agents idle
            baseline_s = min(2.0, duration)
            raw = {"throughput": baselines.raw_throughput(cfg.kafka, baseline_s, value=envelope),
                   "one_hop": baselines.raw_latency(cfg.kafka, 300 if duration >= 2 else 100, value=envelope)}
            # the floor of the mesh's architecture: with the host's inbox reader, one fetcher for
            # all, on the mesh's partitions
            host = cfg.kafka.inbox_reader == "host"
            floor = mesh_floor.floor(cfg.kafka, baseline_s, loops=agents, window=window, envelope=envelope,
                                    sign=cfg.security.sign_envelopes, host=host,
                                    partitions=partitions if host else None)
            port = int(cfg.kafka.bootstrap.split(",")[0].rsplit(":", 1)[1])
            broker_pid = bm.procs[0].pid if config is None else listener_pid(port)
            redis_port = urlsplit(bm.mesh.redis_url).port or 0
            valkey_pid = bm.procs[1].pid if config is None else listener_pid(redis_port)
            pids = {"agents": [p.pid for p in procs["agents"]], "topology": [procs["manager"].pid],
                    "inbox_reader": [p.pid for p in procs["host"]]}
            for kind, pid in (("broker", broker_pid), ("valkey", valkey_pid)):
                if pid is not None:
                    pids[kind] = [pid]
                else:
                    notes.append(f"{kind} CPU not measured: its process is not on this machine or not "
                                 "visible")
            sampler = Sampler(pids)

            # (a) peak, closed loop
            relays.steer(runs["peak"])
            relays.wait_following(runs["peak"])
            injected = _inject(bus, names, runs["peak"], window)
            backlog = Backlog(store, relays, injected)
            time.sleep(WARMUP_S)
            start = relays.flushed_after(runs["peak"], {n: time.time() for n in names})
            backlog.note(start)
            sampler.start()
            topology_backlog = [backlog.sample(runs["peak"])]
            mid = relays.flushed_after(runs["peak"], {n: d["ts"] + duration / 2 for n, d in start.items()})
            backlog.note(mid)
            topology_backlog.append(backlog.sample(runs["peak"]))
            end = relays.flushed_after(runs["peak"], {n: d["ts"] + duration for n, d in start.items()})
            backlog.note(end)
            shares = sampler.shares()
            topology_backlog.append(backlog.sample(runs["peak"]))
            rss = _rss_mb(pids["agents"])
            peak = window_figures(start, end)

            # (b) paced at half the peak rate, (c) one hop at a low rate; each phase starts
            # once the one before is handled
            paced_rate = max(1.0, peak["msgs_per_s"] / 2)
            settle(relays, [runs["peak"]], notes)
            paced = paced_window(relays, runs["paced"], duration, paced_rate / agents)
            settle(relays, [runs["peak"], runs["paced"]], notes)
            idle = paced_window(relays, runs["idle"], duration, IDLE_RATE / agents)

            drained = _drain(store, relays, list(runs.values()), injected)
            if not drained["drained"]:
                notes.append(f"traffic did not drain within {DRAIN_TIMEOUT_S:.0f}s: {drained}")
            time.sleep(2.5 if procs["host"] else 0)  # its counters are written every 2 s
            inbox_counts = store.counters(C.PROGRAM_INBOX) if procs["host"] else {}
        finally:
            bus.flush(5)
            stop_ringing(bus)
            del bus  # its producer goes before the broker does (no "connection refused" lines)
            client.close()
            store.close()
    rate = peak["msgs_per_s"]
    counters = drained["counters"]
    keeps_up = topology_backlog[-1] - topology_backlog[0] <= 0.25 * rate and topology_backlog[-1] <= rate
    figures = {
        "msgs_per_s": rate,
        "peak_latency": peak["latency"],
        "msgs_per_loop_turn": peak["msgs_per_loop_turn"],
        "paced": {"rate": round(paced_rate), "msgs_per_s": paced["msgs_per_s"], "latency": paced["latency"]},
        "one_hop": {"rate": IDLE_RATE, "msgs_per_s": idle["msgs_per_s"], **idle["latency"]},
        "topology_backlog": topology_backlog,
        "topology_keeps_up": keeps_up,
        "topology_reinforcements": counters.get("reinforcements", 0),
        "agent_messages_sent": drained["sent"],
        "agent_messages_handled": drained["handled"],
        "injected": injected,
        "topology_operator_messages": counters.get("operator_messages", 0),
        "topology_cpu_share": shares["topology"],
        "broker_cpu_share": shares.get("broker", 0.0),
        "valkey_cpu_share": shares.get("valkey", 0.0),
        "agents_cpu_share": shares["agents"],
        "inbox_reader_cpu_share": shares.get("inbox_reader", 0.0),
        "inbox_reader_counters": inbox_counts,
        "agent_rss_mb": rss,
    }
    one_hop_p50 = raw["one_hop"]["p50_ms"]
    paced_p99 = paced["latency"]["p99_ms"]
    floor_ratio = ratio(rate, floor["replies_per_s"])
    p50_ratio = ratio(idle["latency"]["p50_ms"], one_hop_p50)
    notes += [
        f"load average {load_start} at start, {round(os.getloadavg()[0], 2)} at end (2-core machine: "
        "figures move with what else runs)",
        f"floor: {floor['loops']} bare loops, each passing messages to the others in turn as the relays "
        f"do (fetching: {floor['fetching']}, as the mesh's inbox readers), window {window} each, "
        f"linger.ms {floor['linger_ms']:g} and a flush per batch, fetch wait "
        f"{floor['fetch_wait_ms']:g} ms (the agents' settings), " +
        ("signing and checking every record, as the mesh does" if floor["signed"]
         else "unsigned, as the mesh"),
        "topology_backlog: records on `messages` not yet read by the topology manager at its snapshots at "
        "the start, middle and end of the peak window (produced counts interpolated from the relays' flushes "
        "to the snapshot's time); it keeps up when the backlog grows by at most 0.25 s of traffic and ends "
        "under 1 s of it",
    ]
    return {
        "scenario": "mesh",
        "settings": {"agents": agents, "duration_s": duration, "window": window, "partitions": partitions,
                     "config": config, "broker": broker if config is None else "of --config",
                     "mesh": cfg.mesh, "envelope_bytes": len(envelope),
                     "fetch_wait_ms": cfg.kafka.fetch_wait * 1000,
                     "linger_ms": baselines.linger(cfg.kafka), "warmup_s": WARMUP_S,
                     "sign_envelopes": cfg.security.sign_envelopes, "inbox_reader": cfg.kafka.inbox_reader,
                     "idle_rate": IDLE_RATE, "relays": names},
        "figures": figures,
        "raw": raw,
        "floor": floor,
        "ratios": {
            "msgs_per_s_to_floor": floor_ratio,
            "msgs_per_s_to_raw": ratio(rate, raw["throughput"]["records_per_s"]),
            "one_hop_p50_to_raw": p50_ratio,
        },
        "targets": {
            "msgs_per_s": {"target": f">= {TARGETS['msgs_per_s']:,}/s", "value": rate,
                           "met": rate >= TARGETS["msgs_per_s"]},
            "topology_keeps_up": {"target": "no growing backlog at the peak rate", "value": keeps_up,
                                  "met": keeps_up},
            "msgs_per_s_to_floor": {"target": f">= {TARGETS['floor_ratio']}", "value": floor_ratio,
                                    "met": floor_ratio >= TARGETS["floor_ratio"]},
            "one_hop_p50_to_raw": {"target": f"<= {TARGETS['p50_to_raw']}", "value": p50_ratio,
                                   "met": 0 < p50_ratio <= TARGETS["p50_to_raw"]},
            "paced_p99_ms": {"target": f"< {TARGETS['paced_p99_ms']:g} ms at {round(paced_rate):,}/s",
                             "value": paced_p99, "met": paced_p99 < TARGETS["paced_p99_ms"]},
        },
        "notes": notes,
    }

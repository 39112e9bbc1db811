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

Each phase starts once the relays have handled what the one before sent (`_settle`): a
backlog left by one phase is not measured as the next one's latency.

Then the traffic stops and the bench waits until the topology manager has read every
message, to compare its reinforcements with the messages the relays sent.
"""

from __future__ import annotations

import os
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson
import psutil
import redis

from agentmesh_cli import constants as C
from agentmesh_cli import events
from agentmesh_cli.bench import baselines, mesh_floor
from agentmesh_cli.bench.infra import (
    BenchMesh,
    bench_mesh,
    bench_mesh_on,
    cpu_seconds,
    free_port,
    listener_pid,
    ratio,
)
from agentmesh_cli.bench.relay import (
    BENCH_TYPE,
    Histogram,
    bench_payload,
    sample_envelope,
    settings_key,
    stats_key,
)
from agentmesh_cli.broker import prepare_topics
from agentmesh_cli.bus import Bus
from agentmesh_cli.config_sections import AUTO_HOST_AGENTS, KafkaConfig
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
WARMUP_S = 1.0
START_TIMEOUT_S = 60.0
INJECT_TIMEOUT_S = 180.0
FOLLOW_TIMEOUT_S = 15.0  # relays read their settings about once a second
DRAIN_TIMEOUT_S = 30.0
SETTLE_TIMEOUT_S = 60.0  # between two phases, for what the first left queued
SETTLE_NOTED_S = 3.0  # a longer wait than this for it is noted
FLUSH_GRACE_S = 10.0  # how long past its time a relay's figures may come (RelayStats.flushed_after)
FLUSH_GRACE_PER_RELAY_S = 0.3  # ... or this per relay, when more
SNAPSHOT_INTERVAL = "1s"  # the topology manager's snapshots: its backlog is sampled from them
TARGETS = {"msgs_per_s": 50_000, "floor_ratio": 0.7, "p50_to_raw": 1.5, "paced_p99_ms": 10.0}


def bench_partitions(agents: int, inbox_reader: str) -> int:
    """The bench mesh's inbox partitions. Relays that fetch for themselves (`agent`) get one
    each: on a shared partition each would read the others' records too. Under the host's
    inbox reader (`host`, or `auto` from AUTO_HOST_AGENTS relays) a partition's records are
    handed to the agents they are keyed to, so the mesh keeps mesh.yaml's default count
    (16) for more relays, as a user's mesh of 64 or 128 agents does: the broker then takes
    a relay's sends in 16 batches a turn, not one per agent."""
    host = inbox_reader == "host" or (inbox_reader == "auto" and agents >= AUTO_HOST_AGENTS)
    return min(agents, KafkaConfig().partitions) if host else agents


def relay_names(agents: int, partitions: int) -> list[str]:
    """`agents` names spread evenly over the inbox partitions (crc32 % partitions): each
    agent reads a partition of its own when there are enough, else as few share one as
    can."""
    per_partition = -(-agents // partitions)
    names: list[str] = []
    taken: Counter[int] = Counter()
    i = 0
    while len(names) < agents:
        name, i = f"relay-{i}", i + 1
        partition = C.inbox_partition(name, partitions)
        if taken[partition] < per_partition:
            taken[partition] += 1
            names.append(name)
    return names


class Relays:
    """The bench's side of the relays: their settings key and their figures."""

    def __init__(self, client: redis.Redis, mesh: str, names: list[str]) -> None:
        self.client, self.mesh, self.names = client, mesh, names

    def steer(self, run: str | None, rate: float = 0.0) -> None:
        """Every relay follows this run (and emits `rate`/s each) from its next flush."""
        self.client.set(settings_key(self.mesh), orjson.dumps({"run": run, "rate": rate}))

    def read(self, run: str) -> dict[str, dict[str, Any]]:
        raw: dict[bytes, bytes] = self.client.hgetall(stats_key(self.mesh, run))  # type: ignore[assignment]
        return {k.decode(): orjson.loads(v) for k, v in raw.items()}

    def wait_following(self, run: str) -> dict[str, dict[str, Any]]:
        """Until every relay reports that it follows `run` and knows all its peers."""
        stats: dict[str, dict[str, Any]] = {}

        def following() -> dict[str, dict[str, Any]] | None:
            nonlocal stats
            stats = self.read(run)
            return stats if all(stats.get(n, {}).get("current") and stats[n]["peers"] == len(self.names) - 1
                                for n in self.names) else None

        return wait_until(following, FOLLOW_TIMEOUT_S, lambda: f"the relays to follow run {run} (peers: "
                          f"{ {n: stats.get(n, {}).get('peers') for n in self.names} })", interval=0.05)

    def flushed_after(self, run: str, after: dict[str, float]) -> dict[str, dict[str, Any]]:
        """Each relay's first figures flushed at or after its time in `after` (its own clock)."""
        got: dict[str, dict[str, Any]] = {}

        def flushed() -> bool:
            for name, data in self.read(run).items():
                if name not in got and name in after and data["ts"] >= after[name]:
                    got[name] = data
            return len(got) == len(self.names)

        # the relays' times are their wall clocks: wait until FLUSH_GRACE_S (more with many
        # relays: at 128 on two cores a relay's loop waits seconds for the broker's answers,
        # p99 16-21 s, and 10 s lost one run in two) past the latest
        grace = max(FLUSH_GRACE_S, FLUSH_GRACE_PER_RELAY_S * len(self.names))
        wait_until(flushed, max(after.values(), default=0) - time.time() + grace,
                   lambda: f"relays {sorted(set(self.names) - set(got))} to flush", interval=0.05)
        return got


def _window_figures(start: dict[str, dict[str, Any]], end: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Messages/s and latency between two flushes of every relay (each over its own span)."""
    rate, handled, turns, windows = 0.0, 0, 0, []
    for name, last in end.items():
        first = start[name]
        span = max(1e-6, last["ts"] - first["ts"])
        rate += (last["handled"] - first["handled"]) / span
        handled += last["handled"] - first["handled"]
        turns += last["ticks"] - first["ticks"]
        window_max = max((m for ts, m in last["maxes"] if first["ts"] < ts <= last["ts"]), default=0)
        windows.append(Histogram.from_dict(last["latency"]).minus(Histogram.from_dict(first["latency"]),
                                                                  window_max))
    return {"msgs_per_s": round(rate), "handled": handled,
            # messages an agent handles per turn of its loop (one poll, one flush, one
            # ledger write): the batch size that sets how many requests the broker serves
            "msgs_per_loop_turn": round(handled / max(1, turns), 1),
            "latency": Histogram.merged(windows).percentiles()}


class Sampler:
    """CPU shares of the processes, and the topology manager's backlog, over a window."""

    def __init__(self, pids: dict[str, list[int]]) -> None:
        self.pids = pids  # kind -> pids
        self._cpu: dict[str, float] = {}
        self._t = 0.0

    def _cpu_now(self) -> dict[str, float]:
        out = {}
        for kind, pids in self.pids.items():
            out[kind] = sum(cpu_seconds(pid) for pid in pids)
        return out

    def start(self) -> None:
        self._t, self._cpu = time.monotonic(), self._cpu_now()

    def shares(self) -> dict[str, float]:
        """Share of one core per kind since `start`."""
        elapsed = max(1e-6, time.monotonic() - self._t)
        now = self._cpu_now()
        return {kind: round((now[kind] - self._cpu[kind]) / elapsed, 3) for kind in now}


def _produced_at(series: dict[str, list[tuple[float, int]]], ts: float) -> float:
    """Messages the relays had sent at wall time `ts`, from each one's (flush time, sent
    so far) points: linear between the points around `ts`, the last slope beyond them."""
    total = 0.0
    for points in series.values():
        if not points:
            continue
        before = [p for p in points if p[0] <= ts]
        after = [p for p in points if p[0] > ts]
        if before and after:
            (t0, n0), (t1, n1) = before[-1], after[0]
        elif len(points) >= 2:
            (t0, n0), (t1, n1) = (points[-2], points[-1]) if not after else (points[0], points[1])
        else:
            total += points[0][1]
            continue
        total += n0 + (n1 - n0) * (ts - t0) / max(1e-6, t1 - t0)
    return total


def _topology_read(store: Store) -> tuple[float, int]:
    """(wall time of the manager's last snapshot, `messages` records it had read)."""
    snapshot = store.load_snapshot() or {}
    offsets = snapshot.get("offsets", {}).get(C.TOPIC_MESSAGES, {})
    return snapshot.get("ts", 0) / 1000, sum(int(o) for o in offsets.values())


class Backlog:
    """The topology manager's backlog on `messages`: records produced up to the time of its
    last snapshot (from the relays' counts, plus the injected ones) minus the records that
    snapshot covers (its offsets; the topic is fresh, so offsets count records). The
    embedded broker's high watermarks are wrong, so they are not used."""

    def __init__(self, store: Store, relays: Relays, injected: int) -> None:
        self.store, self.relays, self.injected = store, relays, injected
        self.series: dict[str, list[tuple[float, int]]] = {n: [] for n in relays.names}

    def note(self, stats: dict[str, dict[str, Any]]) -> None:
        for name, data in stats.items():
            points = self.series.setdefault(name, [])
            if not points or data["ts"] > points[-1][0]:
                points.append((data["ts"], data["sent_total"]))

    def sample(self, run: str) -> int:
        # the relays' next flush brackets the snapshot's time: wait for it
        snapshot_ts, consumed = _topology_read(self.store)
        self.note(self.relays.flushed_after(run, dict.fromkeys(self.relays.names, snapshot_ts)))
        return max(0, round(self.injected + _produced_at(self.series, snapshot_ts) - consumed))


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


def _paced(relays: Relays, run: str, seconds: float, rate: float) -> dict[str, Any]:
    """Steer the relays to `run` at `rate`/s each; after the warm-up, the figures of a
    window of `seconds`."""
    relays.steer(run, rate)
    following = relays.wait_following(run)
    start = relays.flushed_after(run, {n: d["ts"] + WARMUP_S for n, d in following.items()})
    end = relays.flushed_after(run, {n: d["ts"] + seconds for n, d in start.items()})
    return _window_figures(start, end)


def _settle(relays: Relays, runs: list[str], notes: list[str]) -> None:
    """Between two phases: stop the traffic and wait until the relays have handled all that
    was sent, so that what one phase left queued (the peak's window, a paced rate the mesh
    could not keep) is not measured as the next one's latency. A note when it did not."""
    relays.steer(None)
    counts = {"sent": 0, "handled": 0}

    def settled() -> bool:
        figures = [relays.read(run) for run in runs]
        counts["sent"] = sum(d["sent"] for f in figures for d in f.values())
        counts["handled"] = sum(d["handled"] for f in figures for d in f.values())
        return counts["handled"] >= counts["sent"]

    started = time.monotonic()
    try:
        wait_until(settled, SETTLE_TIMEOUT_S, "the relays to handle what was sent", interval=0.1)
    except WaitTimeout:
        notes.append(f"after run {runs[-1]}: {counts['sent'] - counts['handled']} messages still "
                     f"unhandled after {SETTLE_TIMEOUT_S:.0f}s; the next phase began on them")
        return
    if (waited := time.monotonic() - started) > SETTLE_NOTED_S:
        notes.append(f"after run {runs[-1]}: {waited:.1f}s until its {counts['sent']} messages "
                     "were handled (its backlog)")


def _drain(store: Store, relays: Relays, runs: list[str], injected: int) -> dict[str, Any]:
    """Stop the traffic; wait until every relay has handled all that was sent and the
    topology manager has read all of it; its counters then."""
    relays.steer(None)
    sent = handled = consumed = 0

    def drained() -> dict[str, Any] | None:
        nonlocal sent, handled, consumed
        figures = [relays.read(run) for run in runs]
        sent = sum(d["sent"] for f in figures for d in f.values())
        handled = sum(d["handled"] for f in figures for d in f.values())
        _, consumed = _topology_read(store)
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
            # the floor of the mesh's architecture: with the host's inbox reader, one fetcher for all
            floor = mesh_floor.floor(cfg.kafka, baseline_s, loops=agents, window=window, envelope=envelope,
                                    sign=cfg.security.sign_envelopes, host=cfg.kafka.inbox_reader == "host",
                                    partitions=partitions if cfg.kafka.inbox_reader == "host" else None)
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
            peak = _window_figures(start, end)

            # (b) paced at half the peak rate, (c) one hop at a low rate; each phase starts
            # once the one before is handled
            paced_rate = max(1.0, peak["msgs_per_s"] / 2)
            _settle(relays, [runs["peak"]], notes)
            paced = _paced(relays, runs["paced"], duration, paced_rate / agents)
            _settle(relays, [runs["peak"], runs["paced"]], notes)
            idle = _paced(relays, runs["idle"], duration, IDLE_RATE / agents)

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

"""Topology scenario: how fast the SlimeMold core and the topology manager absorb messages,
and what decay + prune of a 1,000-agent full mesh costs; plus `simulate`, the core alone
on a synthetic event stream of 1,000 or 10,000 agents.

Figures of `run`:
- bulk: `TopologyState.apply_batch` in this process over pre-encoded `messages` records
  of real envelopes, in batches of 2,000 (what the manager's loop hands it);
- manager: the real `agentmesh topology` process draining a backlog of `events` messages
  from the broker (bench/topology_load.py, where the load and that phase live);
- decay + prune of a full mesh of `full_mesh_agents` (half of its edges used once, so
  the ninth decay prunes the other half), the join that builds it, and its memory.
Baselines in the same run: raw, a plain confluent-kafka consumer reading the same backlog
from the same broker; floor, a bare loop over the same records doing orjson.loads and a
dict update per record.

`python -m agentmesh_cli.bench.topology simulate AGENTS EVENTS` runs `simulate` in a fresh
process (its peak RSS is then its own) and prints its JSON; `... run` prints `run()`'s.
"""

from __future__ import annotations

import os
import resource
import statistics
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import psutil

from agentmesh_cli import constants as C
from agentmesh_cli.bench.infra import ratio
from agentmesh_cli.bench.topology_load import (
    SNAPSHOT_INTERVAL_S,
    join_value,
    manager_drain,
    message_values,
    names_of,
)
from agentmesh_cli.envelope import now_ms
from agentmesh_cli.records import Record
from agentmesh_cli.topology.graph import SlimeMoldGraph, SlimeMoldRules
from agentmesh_cli.topology.state import TopologyState

BATCH = 2000  # records per apply_batch: the manager's poll_batch size
DECAY_RUNS = 3  # full meshes built, decayed 9 times each (the 9th prunes)
BYTES_PER_EDGE = 48  # arrays (4 + 4 + 8 + 8 + 8) + lookup index (8 + 8)


# -- in process: the state's batch path, and the floor ------------------------------

def bulk(events: int, agents: int, partitions: int, seed: int = 7) -> dict[str, Any]:
    """apply_batch over pre-encoded records (agents joined first), and the floor loop over
    the same records."""
    names = names_of(agents)
    state = TopologyState(SlimeMoldRules(), 3_600_000)
    state.partitions, state.max_record_bytes = partitions, 262_144
    state.apply_batch([Record(C.TOPIC_TOPOLOGY, 0, i, None, join_value(n))
                       for i, n in enumerate(names)], now_ms())
    records = [Record(C.TOPIC_MESSAGES, C.inbox_partition(to, partitions), i, to.encode(), value)
               for i, (to, value) in enumerate(message_values(names, events, seed))]
    now = now_ms()
    started = time.perf_counter()
    for at in range(0, len(records), BATCH):
        state.apply_batch(records[at:at + BATCH], now)
    took = time.perf_counter() - started
    assert state.counts["reinforcements"] == events, state.counts

    counts: Counter[tuple[str, str]] = Counter()
    loads = orjson.loads
    started = time.perf_counter()
    for record in records:
        data = loads(record.value)  # type: ignore[arg-type]
        counts[(data["from_agent_id"], data["to_agent_id"])] += 1
    floor_took = time.perf_counter() - started
    return {"reinforcements_per_s": round(events / took), "floor_records_per_s": round(events / floor_took),
            "record_bytes": len(records[0].value or b"")}


def full_mesh(agents: int, runs: int = DECAY_RUNS, seed: int = 7) -> dict[str, Any]:
    """Build a full mesh, use half its edges once, decay it 9 times: the first 8 decays
    only weaken (0.5 -> 0.1), the 9th also prunes the unused half. Run it in a process of
    its own (`full_mesh_in_child`) for a peak RSS that is the core's."""
    rng = np.random.default_rng(seed)
    rss_before = psutil.Process().memory_info().rss
    joins, decays, prunes, pruned, sizes = [], [], [], [], []
    core_mb = 0.0
    for _run in range(runs):
        graph = SlimeMoldGraph()
        started = time.perf_counter()
        for name in names_of(agents):
            graph.add_agent(name)
        joins.append(time.perf_counter() - started)
        edges = graph.stats().edges
        # every pair (i, j != i) by slot (join order), half of them used once
        src = np.repeat(np.arange(agents), agents - 1)
        dst = np.tile(np.arange(agents - 1), agents)
        dst += dst >= src
        used = rng.random(len(src)) < 0.5
        graph.reinforce_many(src[used], dst[used], np.arange(int(used.sum())))
        del src, dst, used
        for _ in range(8):
            started = time.perf_counter()
            assert graph.decay() == 0
            decays.append(time.perf_counter() - started)
        core_mb = graph.memory_bytes() / 2**20
        started = time.perf_counter()
        pruned.append(graph.decay())
        prunes.append(time.perf_counter() - started)
        sizes.append((edges, graph.stats().edges))
        del graph
    return {
        "agents": agents,
        "edges_before": sizes[0][0],
        "edges_after": sizes[0][1],
        "pruned": pruned[0],
        "join_full_mesh_ms": round(statistics.median(joins) * 1000, 2),
        "decay_ms": round(statistics.median(decays) * 1000, 2),
        "decay_prune_ms": round(statistics.median(prunes) * 1000, 2),
        "decay_prune_runs_ms": [round(p * 1000, 2) for p in prunes],
        "core_mb": round(core_mb, 1),  # edge arrays + lookup index, before the prune
        # the process's peak over what it held before the first mesh (working copies included)
        "rss_mb": round(_peak_rss_mb() - rss_before / 2**20, 1),
        "process_peak_rss_mb": round(_peak_rss_mb(), 1),
    }


def full_mesh_in_child(agents: int) -> dict[str, Any]:
    """`full_mesh` in a fresh Python process: this one's memory (the bulk records) would
    hide the core's in its RSS."""
    out = subprocess.run([sys.executable, "-m", "agentmesh_cli.bench.topology", "full-mesh",
                          str(agents)], capture_output=True, check=True, timeout=600)
    result: dict[str, Any] = orjson.loads(out.stdout)
    return result


def run(events: int = 200_000, agents: int = 16, full_mesh_agents: int = 1000,
        partitions: int = 16, **_kw: Any) -> dict[str, Any]:
    load_before = os.getloadavg()[0]
    in_process = bulk(events, agents, partitions)
    mesh = full_mesh_in_child(full_mesh_agents)
    manager = manager_drain(events, agents, partitions)
    raw = manager.pop("raw")
    figures = {
        "bulk_reinforcements_per_s": in_process["reinforcements_per_s"],
        "manager_reinforcements_per_s": manager["reinforcements_per_s"],
        "manager_steady_reinforcements_per_s": manager["steady_reinforcements_per_s"],
        "manager_drain_s": manager["drain_s"],
        "manager_cpu_share": manager["cpu_share"],
        "broker_cpu_share": manager["broker_cpu_share"],
        "manager_reinforcements_counted": manager["reinforcements"],
        "decay_prune_ms": mesh["decay_prune_ms"],
        "decay_ms": mesh["decay_ms"],
        "join_full_mesh_ms": mesh["join_full_mesh_ms"],
        "full_mesh_edges_before": mesh["edges_before"],
        "full_mesh_edges_after": mesh["edges_after"],
        "core_mb": mesh["core_mb"],
        "rss_mb": mesh["rss_mb"],
        "record_bytes": in_process["record_bytes"],
    }
    floor = {"records_per_s": in_process["floor_records_per_s"]}
    notes = [
        f"load average {load_before:.2f} at the start, {os.getloadavg()[0]:.2f} at the end "
        f"({os.cpu_count()} cores)",
        "bulk and floor run in this process over the same pre-encoded records; the manager "
        "and raw read the same backlog from the same broker",
        "raw is timed from its first batch (librdkafka takes about 0.5 s to connect and find "
        "the offsets first); the manager, connected before it was held, from SIGCONT "
        "(manager_reinforcements_per_s) and between its first and last busy snapshots "
        "(manager_steady_reinforcements_per_s)",
        f"manager: {manager['snapshots_while_busy']} snapshots while it was reading "
        f"(every {SNAPSHOT_INTERVAL_S * 1000:.0f} ms); manager_drain_s ends at the first "
        "snapshot after the last record, so it may be one interval long",
        f"decay_prune_ms: the decay that prunes {mesh['pruned']} of {mesh['edges_before']} edges, "
        f"median of {DECAY_RUNS} ({mesh['decay_prune_runs_ms']} ms); decay_ms: the decays before it",
        "keeping up with the mesh's peak message rate is measured by the mesh scenario "
        "(the manager's backlog during its peak phase)",
    ]
    if manager["reinforcements"] != events:
        notes.append(f"the manager counted {manager['reinforcements']} reinforcements of {events}")
    targets = {
        "bulk_reinforcements_per_s": {"target": ">= 200000/s", "value": figures["bulk_reinforcements_per_s"],
                                      "met": figures["bulk_reinforcements_per_s"] >= 200_000},
        "decay_prune_ms": {"target": f"<= 100 ms ({mesh['edges_before']} edges)",
                           "value": figures["decay_prune_ms"], "met": figures["decay_prune_ms"] <= 100},
    }
    return {
        "scenario": "topology",
        "settings": {"events": events, "agents": agents, "full_mesh_agents": full_mesh_agents,
                     "partitions": partitions, "batch": BATCH,
                     "snapshot_interval_ms": SNAPSHOT_INTERVAL_S * 1000},
        "figures": figures,
        "raw": raw,
        "floor": floor,
        "ratios": {
            "bulk_to_floor": ratio(figures["bulk_reinforcements_per_s"], floor["records_per_s"]),
            "manager_to_raw": ratio(figures["manager_reinforcements_per_s"], raw["records_per_s"]),
            "manager_steady_to_raw": ratio(figures["manager_steady_reinforcements_per_s"],
                                            raw["records_per_s"]),
            "manager_to_bulk": ratio(figures["manager_reinforcements_per_s"],
                                      figures["bulk_reinforcements_per_s"]),
        },
        "targets": targets,
        "notes": notes,
    }


# -- the core alone, at scale ---------------------------------------------------------

def _peak_rss_mb() -> float:
    """This process's peak RSS. VmHWM, not getrusage's ru_maxrss: Linux carries that one
    over fork and exec, so a child started by a big parent would report the parent's."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024  # kB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # not Linux: KiB


def simulate(agents: int, events: int, seed: int = 7, decay_every: int = 100_000,
             churn: int = 10, wave: int | None = None) -> dict[str, Any]:
    """The SlimeMold core alone (no Kafka, no Redis) on a synthetic stream: every agent
    joins (full mesh), then `events` messages in batches of 2,000 with a skewed choice of
    pairs (each agent sends 90% of its messages to 4 favourite peers), a decay every
    `decay_every` messages, and `churn` agents leaving and joining again halfway.

    `wave`: join the agents that many at a time with 9 decays (the unused edges' life)
    after each wave, for a mesh whose full mesh does not fit in memory. Figures: seconds
    per phase, events/s, decay times, edges, memory. Run in a fresh process for its own
    peak RSS (`python -m agentmesh_cli.bench.topology simulate ...`)."""
    rng = np.random.default_rng(seed)
    process = psutil.Process()
    rss0 = process.memory_info().rss
    graph = SlimeMoldGraph()
    names = names_of(agents)
    decays: list[float] = []
    prunes = 0
    phases: dict[str, float] = {}
    peak_edges = 0
    peak_core = 0

    def decay() -> None:
        nonlocal prunes, peak_edges, peak_core
        peak_edges = max(peak_edges, graph.edge_count)
        peak_core = max(peak_core, graph.memory_bytes())
        started = time.perf_counter()
        prunes += graph.decay()
        decays.append(time.perf_counter() - started)

    started = time.perf_counter()
    step = wave or agents
    for at in range(0, agents, step):
        for name in names[at:at + step]:
            graph.add_agent(name)
        if wave and at + step < agents:
            for _ in range(9):
                decay()
    phases["join_s"] = time.perf_counter() - started
    peak_edges = max(peak_edges, graph.edge_count)
    peak_core = max(peak_core, graph.memory_bytes())
    edges_after_join = graph.edge_count
    rss_after_join = process.memory_info().rss

    # messages: sources uniform, targets mostly one of the source's 4 favourites
    favourites = (np.arange(agents)[:, None] + rng.integers(1, agents, (agents, 4))) % agents
    sources = rng.integers(0, agents, events)
    pick = favourites[sources, rng.integers(0, 4, events)]
    anyone = (sources + rng.integers(1, agents, events)) % agents
    targets = np.where(rng.random(events) < 0.9, pick, anyone)
    ts = np.arange(events, dtype=np.int64)
    reinforcing = 0.0
    first_batch = None
    slot_of = np.array([graph.slots[n] for n in names])
    middle = (events // 2) // BATCH * BATCH
    started = time.perf_counter()
    for at in range(0, events, BATCH):
        if at and at % decay_every == 0:
            decay()
        if churn and at == middle:
            churned = time.perf_counter()
            for name in names[:churn]:  # leave and join again: its edges start fresh
                graph.remove_agent(name)
                graph.add_agent(name)
            phases["churn_s"] = time.perf_counter() - churned
            slot_of = np.array([graph.slots[n] for n in names])  # slots moved up
        batch_started = time.perf_counter()
        graph.reinforce_many(slot_of[sources[at:at + BATCH]], slot_of[targets[at:at + BATCH]],
                             ts[at:at + BATCH])
        took = time.perf_counter() - batch_started
        reinforcing += took
        if first_batch is None:
            first_batch = took  # includes sorting the lookup index of the fresh full mesh
    phases["messages_s"] = time.perf_counter() - started
    decay()
    stats = graph.stats()
    return {
        "agents": agents,
        "events": events,
        "wave": wave,
        "phases_s": {k: round(v, 3) for k, v in phases.items()},
        "events_per_s": round(events / reinforcing),
        "events_per_s_after_first_batch": round((events - BATCH) / (reinforcing - (first_batch or 0)))
        if events > BATCH else None,
        "first_batch_s": round(first_batch or 0, 3),
        "decays": len(decays),
        "decay_ms": {"median": round(statistics.median(decays) * 1000, 2),
                     "max": round(max(decays) * 1000, 2), "first": round(decays[0] * 1000, 2),
                     "each": [round(d * 1000, 1) for d in decays]},
        "edges_after_join": edges_after_join,
        "peak_edges": peak_edges,
        "edges_at_end": stats.edges,
        "pruned": prunes,
        "reduction_percent": round(stats.reduction_percent, 2),
        "core_peak_mb": round(peak_core / 2**20, 1),
        "rss_after_join_mb": round((rss_after_join - rss0) / 2**20, 1),
        "peak_rss_mb": round(_peak_rss_mb(), 1),
    }


def full_mesh_fits(agents: int, share: float = 0.5) -> bool:
    """Would a full mesh of `agents` (with working copies for a decay) fit in `share` of
    the memory available now?"""
    need = agents * (agents - 1) * BYTES_PER_EDGE * 1.6  # growth slack and decay temporaries
    return need < share * psutil.virtual_memory().available


def _main(argv: list[str]) -> None:
    if argv[:1] == ["simulate"]:
        agents, events = int(argv[1]), int(argv[2])
        wave = int(argv[3]) if len(argv) > 3 else None
        result = simulate(agents, events, wave=wave)
    elif argv[:1] == ["full-mesh"]:
        result = full_mesh(int(argv[1]))
    else:
        result = run()
    print(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())


if __name__ == "__main__":
    _main(sys.argv[1:])

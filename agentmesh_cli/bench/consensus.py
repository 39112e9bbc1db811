"""Consensus scenario: votes per second through the real consensus manager process, the
latency from the deciding vote's send to the decision's broadcast (one proposal at a time,
and paced at half the peak vote rate), next to two baselines measured on the same broker
in the same run:

- raw: a confluent-kafka producer -> consumer pair moving records of a vote's bytes
  (`baselines.raw_throughput`), and one such record produced and consumed at a time, with
  the fetch wait of the reader that watches the decisions (`baselines.raw_latency`);
- floor: a bare Python loop doing the job of the manager at the least
  (`consensus_floor`), measured exactly as the manager is.

`--voters N` registers N voters (default 5: quorum 0.6, the 3rd support decides); a
proposal gets the supporting votes it needs, so a larger electorate decides with more
votes each. `--voters 4,128` runs each electorate on a fresh broker and Valkey in turn and
shows them side by side, with the ratios to the first (`consensus_plan.side_by_side`).

The baselines run first, before the manager starts, so that nothing else polls the broker
while they are measured (the manager polls it every 2 ms even when idle).
"""

from __future__ import annotations

import os
import time
import uuid
from typing import Any

from agentmesh_cli import constants as C
from agentmesh_cli import events
from agentmesh_cli.bench import baselines
from agentmesh_cli.bench.consensus_floor import (
    LOAD_LINGER_MS,
    SETTLE_S,
    THROUGHPUT_TIMEOUT_S,
    WAIT_TIMEOUT_S,
    floor,
    vote,
    wait_for,
)
from agentmesh_cli.bench.consensus_paced import paced
from agentmesh_cli.bench.consensus_plan import (
    DEFAULT_VOTERS,
    parse_voters,
    side_by_side,
    throughput_proposals,
    voter_names,
)
from agentmesh_cli.bench.infra import BenchMesh, bench_mesh, cpu_seconds, percentiles, ratio
from agentmesh_cli.bench.procs import wait_while_alive
from agentmesh_cli.broker import prepare_topics
from agentmesh_cli.bus import Bus
from agentmesh_cli.consensus.core import needed_votes
from agentmesh_cli.dozing import ringing, stop_ringing
from agentmesh_cli.envelope import now_ms
from agentmesh_cli.reader import Reader, beginning
from agentmesh_cli.signing import mesh_signer
from agentmesh_cli.store import Store

READY_TIMEOUT_S = 30.0
SHORT_RUN_S = 0.5  # a throughput run shorter than this gives a rate, not a steady one
PACED_S = 5.0  # the paced phase's length (about: whole proposals)
REGISTER_EVERY_S = 10.0  # voters' heartbeats again this often (stale after heartbeat.interval x missed)


def _propose(bus: Bus, pid: str) -> None:
    # proposed as the operator's CLI: a proposer that never joined is a dead letter
    proposal = events.proposal(C.CLI_COUNTER_OWNER, pid, "decision", {"type": "approval"})
    bus.send(C.TOPIC_PROPOSALS, proposal, key=pid)


def _register(store: Store, names: list[str]) -> None:
    """(Again) the voters' registry records with a fresh heartbeat: the electorate of a
    proposal is the agents registered and fresh when it opens."""
    for name in names:
        store.register_agent(name, {"name": name, "role": "bench", "last_heartbeat": now_ms()})


def _manager_run(bm: BenchMesh, names: list[str], needed: int, proposals: int, samples: int,
                 paced_s: float) -> dict[str, Any]:
    """The consensus manager process on the bench mesh: throughput, latency one proposal at
    a time, then paced at half the throughput's vote rate. Each proposal gets the first
    `needed` of `names` as supporters."""
    cfg = bm.mesh.config
    supporters = names[:needed]
    store = Store(bm.mesh.redis_url, cfg.mesh)
    signer = mesh_signer(bm.mesh)  # signed as the mesh's own writers sign, else refused
    bus = Bus(cfg.kafka, "bench", signer=signer)
    load = Bus(cfg.kafka, "bench-load", linger_ms=LOAD_LINGER_MS, signer=signer)
    voting = Bus(cfg.kafka, "bench-paced", linger_ms=baselines.linger(cfg.kafka), signer=signer)  # as agents
    for sender in (bus, load, voting):  # a sleeping manager is rung, as by the mesh's writers
        ringing(sender, store)
    watcher = Reader(cfg.kafka, f"bench-watch-{uuid.uuid4().hex[:6]}", [(C.TOPIC_CONSENSUS, 0, beginning())])

    def fetch() -> list[bytes | None]:
        return [record.value for record in watcher.poll_batch(max_records=10_000, timeout=0.5)]

    try:
        _register(store, names)
        manager = bm.spawn("consensus", name=C.PROGRAM_CONSENSUS)

        wait_while_alive(lambda: store.ready_pid(C.PROGRAM_CONSENSUS) == manager.pid,
                         "the consensus manager's start", READY_TIMEOUT_S, manager,
                         f"{bm.root}/consensus-manager.log", interval=0.05)

        # warm-up: one proposal opened and decided, so that the throughput run does not time
        # the manager's first fetches (about 0.4 s at 128 voters)
        _propose(bus, "w0")
        bus.flush()
        wait_for(fetch, C.EVENT_OPENED, {"w0"}, WAIT_TIMEOUT_S)
        for voter in supporters:
            load.produce_raw(C.TOPIC_VOTES, vote("w0", voter), key="w0")
        load.flush()
        wait_for(fetch, C.EVENT_DECIDED, {"w0"}, WAIT_TIMEOUT_S)

        # throughput: open the proposals, then send their supporting votes as fast as we can
        ids = [f"t{i}" for i in range(proposals)]
        opens = [events.proposal(C.CLI_COUNTER_OWNER, pid, "decision", {"type": "approval"}).encode()
                 for pid in ids]
        votes = [(pid, vote(pid, voter)) for pid in ids for voter in supporters]
        broker = bm.procs[0]
        opening_cpu, opening_started = cpu_seconds(manager.pid), time.perf_counter()
        for pid, value in zip(ids, opens, strict=True):
            load.produce_raw(C.TOPIC_PROPOSALS, value, key=pid)
        load.flush()
        wait_for(fetch, C.EVENT_OPENED, set(ids), 120)
        opening = time.perf_counter() - opening_started
        cpu_before, broker_before = cpu_seconds(manager.pid), cpu_seconds(broker.pid)
        opening_cpu = cpu_before - opening_cpu
        started = time.perf_counter()
        for pid, value in votes:
            load.produce_raw(C.TOPIC_VOTES, value, key=pid)
        load.flush()
        produced = time.perf_counter() - started
        statuses = wait_for(fetch, C.EVENT_DECIDED, set(ids), THROUGHPUT_TIMEOUT_S)
        elapsed = time.perf_counter() - started
        manager_cpu = cpu_seconds(manager.pid) - cpu_before
        broker_cpu = cpu_seconds(broker.pid) - broker_before

        # latency: all supporting votes but one in, then time the deciding one to its broadcast
        _register(store, names)
        took: list[float] = []
        registered = time.monotonic()
        for i in range(samples):
            pid = f"l{i}"
            if time.monotonic() - registered > REGISTER_EVERY_S:  # a slow machine: stay fresh
                _register(store, names)
                registered = time.monotonic()
            _propose(bus, pid)
            bus.flush()
            wait_for(fetch, C.EVENT_OPENED, {pid}, WAIT_TIMEOUT_S)
            # batched: 76 requests of one vote each (128 voters), 300 times over, slowed the
            # embedded broker's fetches of the votes topic down to seconds
            for voter in supporters[:-1]:
                load.produce_raw(C.TOPIC_VOTES, vote(pid, voter), key=pid)
            load.flush()
            time.sleep(SETTLE_S)  # let the manager count them; not part of the measure
            deciding = vote(pid, supporters[-1])
            start = time.perf_counter()
            bus.produce_raw(C.TOPIC_VOTES, deciding, key=pid)
            bus.flush()
            statuses += wait_for(fetch, C.EVENT_DECIDED, {pid}, WAIT_TIMEOUT_S)
            took.append((time.perf_counter() - start) * 1000)

        _register(store, names)
        # paced at half the rate with the openings: the paced phase opens its proposals too
        peak = len(votes) / (opening + elapsed)
        steady = paced(voting, watcher, supporters, peak / 2, paced_s, manager.pid, broker.pid)
    finally:
        watcher.close()
        store.close()
        bus.flush(5)
        load.flush(5)
        voting.flush(5)
        for sender in (bus, load, voting):
            stop_ringing(sender)
        del bus, load, voting  # their producers close before the broker stops (flushed: nothing holds them)
    return {
        "votes": len(votes),
        "votes_per_s": round(len(votes) / elapsed),
        "votes_per_s_with_openings": round(peak),
        "opening_s": round(opening, 3),
        "seconds": round(elapsed, 3),
        "produce_s": round(produced, 3),
        "manager_cpu_share": round(manager_cpu / elapsed, 2),  # of one core, while voting
        "manager_cpu_us_per_vote": round(manager_cpu / len(votes) * 1e6, 1),
        "manager_cpu_us_per_vote_with_openings": round((manager_cpu + opening_cpu) / len(votes) * 1e6, 1),
        "broker_cpu_share": round(broker_cpu / elapsed, 2),
        "decision_latency": percentiles(took),
        "accepted": statuses["accepted"],
        "paced": steady,
    }


def _electorate_run(voters: int, proposals: int, samples: int, paced_s: float,
                    kafka: dict[str, Any]) -> dict[str, Any]:
    """The scenario and its baselines for one electorate, on a broker and Valkey of its own."""
    load_start = [round(x, 2) for x in os.getloadavg()]
    names = voter_names(voters)
    value = vote("t0", names[0])
    raw_seconds = min(2.0, max(0.5, proposals / 2000))  # about as long as the manager's run
    with bench_mesh(consensus={"proposal_timeout": "10m"}, kafka=kafka) as bm:
        cfg = bm.mesh.config
        needed = needed_votes(cfg.consensus.quorum, voters)
        proposals = throughput_proposals(proposals, needed)
        store = Store(bm.mesh.redis_url, cfg.mesh)
        try:
            prepare_topics(cfg.kafka, store)
        finally:
            store.close()
        raw = {"throughput": baselines.raw_throughput(cfg.kafka, raw_seconds, value=value),
               "one_hop": baselines.raw_latency(cfg.kafka, max(20, samples), value=value)}
        floor_figures = floor(cfg.kafka, proposals, samples, names[:needed])
        scenario = _manager_run(bm, names, needed, proposals, samples, paced_s)
    latency = scenario.pop("decision_latency")
    figures = {"votes_per_s": scenario.pop("votes_per_s"), "decision_latency": latency,
               "proposals": proposals, **scenario}
    notes = [
        f"load average {load_start} at start, {[round(x, 2) for x in os.getloadavg()]} at end "
        f"({os.cpu_count()} cores: figures move with what else runs)",
        "one electorate has no target: the issue's compares the paced decision p99 of 128 voters with "
        "that of 4 (--voters 4,128); the ratios to raw and floor are the yardstick",
        f"a decision takes two hops (vote -> manager, fetch wait {cfg.kafka.manager_fetch_wait * 1000:g} ms; "
        f"decision -> reader, fetch wait {cfg.kafka.fetch_wait * 1000:g} ms); raw one_hop is one hop "
        "with the reader's fetch wait, so decision_p50_to_raw cannot be below about 1",
        f"floor: one bare loop reading the votes from a topic of its own (fetch wait "
        f"{floor_figures['fetch_wait_ms']:g} ms, as the manager's), keeping supporters per proposal "
        f"and producing a {floor_figures['decision_bytes']}-byte decision at {needed} of "
        f"{voters}; no opening, no electorate, no Redis; measured as the manager is",
        "raw and floor ran before the manager started, so nothing else polled the broker meanwhile",
        f"paced: proposals opened and voted one after another for about {paced_s:g} s at half the peak "
        f"vote rate with the openings ({figures['paced']['rate']:,}/s: votes over the time from the first "
        "proposal sent to the last decision; votes_per_s leaves the openings out, as it always did); a "
        "decision's latency runs from its deciding vote's send to a reader seeing it; manager CPU per vote "
        "there includes its idle fetches",
    ]
    decided = proposals + samples + figures["paced"]["decisions"]
    accepted = figures["accepted"] + figures["paced"]["accepted"]
    if accepted != decided:
        notes.append(f"only {accepted} of {decided} proposals were decided accepted (all get "
                     f"{needed} supporting votes of {voters})")
    paced_figures = figures["paced"]
    if paced_figures["votes_per_s"] < 0.9 * paced_figures["rate"]:
        notes.append(f"paced: the bench sent {paced_figures['votes_per_s']:,} votes/s of the "
                     f"{paced_figures['rate']:,} asked (its one sending thread is the limit here)")
    if paced_figures["decision_latency"]["p50_ms"] > 10 * latency["p50_ms"]:
        notes.append("paced: the decision p50 is over 10x the one-at-a-time p50, so votes queued: half the "
                     "peak (a burst drained in large batches) is more than this machine sustains paced; "
                     "vote_hop shows where they waited (broker -> manager)")
    if figures["seconds"] < SHORT_RUN_S:
        notes.append(f"the throughput run took {figures['seconds'] * 1000:.0f} ms: too short for a "
                     "steady rate or CPU shares (ticks of 10 ms); use more --proposals for figures")
    return {
        "scenario": "consensus",
        "settings": {"proposals": proposals, "samples": samples, "voters": voters,
                     "quorum": cfg.consensus.quorum, "supports_needed": needed,
                     "vote_bytes": len(value), "load_linger_ms": LOAD_LINGER_MS,
                     "raw_seconds": raw_seconds, "paced_s": paced_s,
                     "fetch_wait_ms": {"agents": cfg.kafka.fetch_wait * 1000,
                                       "managers": cfg.kafka.manager_fetch_wait * 1000}},
        "figures": figures,
        "raw": raw,
        "floor": floor_figures,
        "ratios": {
            "votes_per_s_to_floor": ratio(figures["votes_per_s"], floor_figures["votes_per_s"]),
            "votes_per_s_to_raw": ratio(figures["votes_per_s"], raw["throughput"]["records_per_s"]),
            "decision_p50_to_raw": ratio(latency["p50_ms"], raw["one_hop"]["p50_ms"]),
            "decision_p50_to_floor": ratio(latency["p50_ms"], floor_figures["decision_latency"]["p50_ms"]),
        },
        "targets": {},
        "notes": notes,
    }


def run(proposals: int = 4000, samples: int = 300, voters: str | int = DEFAULT_VOTERS,
        duration: float = PACED_S, **kafka: Any) -> dict[str, Any]:
    """The consensus scenario and its baselines, in the bench result shape (cli/bench.py).
    `voters`: an electorate size, or several ("4,128"), each run in turn and shown side by
    side; `duration`: seconds of the paced phase."""
    sizes = parse_voters(voters)
    results = [_electorate_run(n, proposals, samples, duration, kafka) for n in sizes]
    if len(sizes) == 1:
        return results[0]
    notes = [f"{n} voters: {result['notes'][0]}" for n, result in zip(sizes, results, strict=True)]
    notes += [
        f"each electorate ran in turn on a fresh broker and Valkey ({', '.join(map(str, sizes))}), with "
        "its own raw and floor baselines; its full result is under runs",
        "each is paced at half its own peak vote rate; a proposal needs ceil(quorum x voters) supporting "
        "votes, so a larger electorate makes fewer, larger decisions per vote",
    ]
    return {
        "scenario": "consensus",
        "settings": {"voters": sizes, "proposals": proposals, "samples": samples, "paced_s": duration},
        **side_by_side(sizes, results),
        "runs": {str(n): result for n, result in zip(sizes, results, strict=True)},
        "notes": notes,
    }

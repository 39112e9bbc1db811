"""The consensus manager's CPU per vote, in this process, on a throwaway broker and Valkey.

For each electorate size: N voters registered, P proposals produced and opened, then the
votes (the supporters a proposal needs, each) produced at once while the manager's loop
runs here, in the main thread, logging as the manager process does (text, INFO, to a file).
The figure is the CPU time of that thread alone (its Kafka client's own threads are left
out) from the first vote produced to the last decision, over the votes. `--profile FILE`
saves a cProfile of the whole manager run.

    .venv/bin/python benchmarks/consensus_cpu.py --voters 4,128 --votes 24000
    .venv/bin/python benchmarks/consensus_cpu.py --voters 128 --profile /tmp/c.prof
"""

from __future__ import annotations

import argparse
import cProfile
import json
import math
import os
import sys
import threading
import time

from agentmesh_cli import constants as C
from agentmesh_cli import events
from agentmesh_cli.bench.infra import bench_mesh
from agentmesh_cli.broker import prepare_topics
from agentmesh_cli.bus import Bus
from agentmesh_cli.consensus.core import needed_votes
from agentmesh_cli.consensus.manager import ConsensusManager
from agentmesh_cli.envelope import now_ms
from agentmesh_cli.logformat import configure_role_logging
from agentmesh_cli.signing import mesh_signer
from agentmesh_cli.store import Store
from agentmesh_cli.waiting import wait_until


def measure(voters: int, votes: int, profile: str | None) -> dict[str, float]:
    with bench_mesh(consensus={"proposal_timeout": "10m"}) as bm:
        cfg = bm.mesh.config
        store = Store(bm.mesh.redis_url, cfg.mesh)
        prepare_topics(cfg.kafka, store)
        names = [f"V{i}" for i in range(voters)]
        for name in names:
            store.register_agent(name, {"name": name, "role": "bench", "last_heartbeat": now_ms()})
        needed = needed_votes(cfg.consensus.quorum, voters)
        proposals = max(1, math.ceil(votes / needed))
        bus = Bus(cfg.kafka, "cpu-bench", linger_ms=5, signer=mesh_signer(bm.mesh))
        for i in range(proposals):
            bus.send(C.TOPIC_PROPOSALS, events.proposal(C.CLI_COUNTER_OWNER, f"p{i}", "decision",
                                                        {"type": "approval"}), key=f"p{i}")
        bus.flush()
        stderr, sys.stderr = sys.stderr, (bm.root / "consensus-manager.log").open("w")
        configure_role_logging(C.PROGRAM_CONSENSUS, False, "INFO")  # its handler keeps that file
        sys.stderr = stderr
        manager = ConsensusManager(bm.mesh)
        figures: dict[str, float] = {}

        def drive() -> None:
            main = time.pthread_getcpuclockid(threading.main_thread().ident or 0)
            try:
                # the book's counts are emptied into Redis at every snapshot: count its proposals
                wait_until(lambda: len(manager.book.all()) >= proposals, 120, "proposals opened",
                           interval=0.05)
                cpu, wall = time.clock_gettime(main), time.perf_counter()
                for i in range(proposals):
                    for name in names[:needed]:
                        bus.produce_raw(C.TOPIC_VOTES, events.vote(name, f"p{i}", True, 0.8).encode(),
                                        key=f"p{i}")
                bus.flush()
                wait_until(lambda: all(p.status == "accepted" for p in manager.book.all()), 300,
                           "decisions", interval=0.01)
                cpu, wall = time.clock_gettime(main) - cpu, time.perf_counter() - wall
                sent = proposals * needed
                figures.update(voters=voters, votes=sent, proposals=proposals,
                               cpu_us_per_vote=round(cpu / sent * 1e6, 1), votes_per_s=round(sent / wall),
                               main_thread_cpu_share=round(cpu / wall, 2))
            finally:
                manager.stopping = True

        driver = threading.Thread(target=drive, daemon=True)
        driver.start()
        profiler = cProfile.Profile(time.thread_time) if profile else None  # CPU, not waits
        if profiler is not None:
            profiler.enable()
        manager.run()
        if profiler is not None and profile:
            profiler.disable()
            profiler.dump_stats(profile)
        driver.join(5)
        store.close()
        bus.flush(5)
        return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--voters", default="4,128", help="electorate sizes, comma-separated")
    parser.add_argument("--votes", type=int, default=24_000, help="votes per electorate (about)")
    parser.add_argument("--profile", help="save a cProfile here (one electorate size only)")
    args = parser.parse_args()
    for n in [int(v) for v in args.voters.split(",")]:
        figures = measure(n, args.votes, args.profile)
        print(json.dumps({**figures, "load_average": [round(x, 2) for x in os.getloadavg()]}), flush=True)


if __name__ == "__main__":
    main()

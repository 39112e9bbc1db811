"""An agent's RSS with a backlog of a million records: it must stay flat.

One agent (an async role whose handler awaits 1 s, at concurrency 1,000) gets a backlog of
`--records` messages in its inbox partition, each its own conversation, on a throwaway
embedded broker and Valkey. Its RSS is sampled by pid every 2 s for `--duration` seconds
while it works through the backlog (about 1,000 a second). What bounds it: the read-ahead
(at most 2,000 messages waiting beside the 1,000 running, agent/schedule.py) and
librdkafka's fetch queue (16 MB a partition, `queued.max.messages.kbytes`).

    .venv/bin/python benchmarks/backlog_rss.py                       # 1,000,000 records, 60 s
    .venv/bin/python benchmarks/backlog_rss.py --records 100000 --duration 20   # a quick check
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from agentmesh_cli.bench.infra import bench_mesh  # noqa: E402
from agentmesh_cli.bench.procs import memory_mb  # noqa: E402
from agentmesh_cli.bus import Bus, prepare_topics  # noqa: E402
from agentmesh_cli.envelope import Envelope  # noqa: E402
from agentmesh_cli.signing import mesh_signer  # noqa: E402
from agentmesh_cli.store import Store  # noqa: E402
from agentmesh_cli.waiting import wait_until  # noqa: E402

ROLE = "tests.helpers.waiting_roles:Worker"  # `work` {log, tag, sleep}: awaits `sleep` s


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--records", type=int, default=1_000_000)
    ap.add_argument("--duration", type=float, default=60.0)
    ap.add_argument("--concurrency", type=int, default=1000)
    # the embedded broker answers a fetch empty when gathering it takes longer than the
    # fetch wait, and that grows with the partition: at the agents' 10 ms a partition of
    # 100,000 records is never read, at 1 s one of 1,000,000 is read at ~17,000 records/s
    # (measured here), far more than this agent handles (1,000/s)
    ap.add_argument("--fetch-wait", default="1s", help="kafka.fetch_wait of the mesh.")
    args = ap.parse_args()
    os.environ["PYTHONPATH"] = str(REPO)  # the agent imports the role from tests/helpers
    agents = [{"name": "Slow", "role": ROLE, "concurrency": args.concurrency}]
    with bench_mesh(agents=agents, workload={"order_rate": 0, "lead_rate": 0, "refund_rate": 0},
                    kafka={"fetch_wait": args.fetch_wait}) as bench:
        mesh = bench.mesh
        store = Store(mesh.redis_url, mesh.config.mesh)
        prepare_topics(mesh.config.kafka, store)
        bus = Bus(mesh.config.kafka, "backlog", signer=mesh_signer(mesh))  # as the mesh's own
        started = time.monotonic()
        for i in range(args.records):
            bus.send_message(Envelope(type="work", from_agent_id="cli", to_agent_id="Slow",
                                      payload={"log": os.devnull, "tag": i, "sleep": 1.0},
                                      meta={"conversation": f"c{i}"}))
            if i % 10_000 == 0:
                bus.flush(60)  # the broker takes them in steps
        assert bus.flush(120) == 0
        print(f"{args.records:,} records in the inbox in {time.monotonic() - started:.1f} s", flush=True)
        agent = bench.spawn_agent("Slow", ROLE)
        wait_until(lambda: store.ready_pid("agent-Slow") == agent.pid, 60, "the agent ready")
        samples = []
        t0 = time.monotonic()
        while time.monotonic() - t0 < args.duration:
            time.sleep(2.0)
            handled = store.counters("Slow").get("messages_in", 0)
            record = store.agents().get("Slow", {})
            samples.append({"t_s": round(time.monotonic() - t0, 1), "rss_mb": memory_mb(agent.pid)["rss_mb"],
                            "handled": handled, "in_flight": record.get("in_flight"),
                            "loop_lag_p99_ms": (record.get("loop_lag_ms") or {}).get("p99")})
            print(json.dumps(samples[-1]), flush=True)
        warm = [s["rss_mb"] for s in samples if s["t_s"] >= 10] or [samples[-1]["rss_mb"]]
        print(json.dumps({"records": args.records, "concurrency": args.concurrency,
                          "rss_mb_at_10s": warm[0], "rss_mb_end": samples[-1]["rss_mb"],
                          "rss_mb_max": max(s["rss_mb"] for s in samples),
                          "growth_after_10s_mb": round(max(warm) - warm[0], 1),
                          "handled": samples[-1]["handled"]}))
        store.close()
        if samples[-1]["handled"] < args.records:
            log = (bench.root / "agent-Slow.log").read_text().splitlines()
            print("\n".join(line for line in log if "WARNING" in line or "ERROR" in line)[-3000:])
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The consensus scenario's paced phase: proposals opened and voted on a schedule
(`consensus_plan.paced_schedule`, at half the peak vote rate) while a reader of the
`consensus` topic, in a thread of its own, stamps each decision as it sees it. A
decision's latency runs from its deciding vote's send to that stamp, so it holds the
queueing a manager under steady load adds, which the one-at-a-time samples leave out."""

from __future__ import annotations

import threading
import time
from collections import Counter
from typing import Any

import orjson

from agentmesh_cli import constants as C
from agentmesh_cli import events
from agentmesh_cli.bench.consensus_floor import WAIT_TIMEOUT_S, vote
from agentmesh_cli.bench.consensus_plan import paced_schedule
from agentmesh_cli.bench.infra import cpu_seconds, percentiles
from agentmesh_cli.bus import Bus
from agentmesh_cli.reader import Reader
from agentmesh_cli.waiting import wait_until

OPEN_LEAD_S = 0.2  # a proposal is opened this long before its first vote (agents vote once they saw it)
WATCH_POLL_S = 0.05


class DecisionWatch:
    """A thread reading the `consensus` topic: when each wanted proposal's decision was
    seen (wall clock, s), when the manager decided it (its `decided_at`, s), and the
    decisions' statuses."""

    def __init__(self, reader: Reader, wanted: set[str]) -> None:
        self.reader = reader
        self.wanted = wanted
        self.seen: dict[str, float] = {}
        self.decided_at: dict[str, float] = {}
        self.statuses: Counter[str] = Counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="bench-decisions", daemon=True)

    def __enter__(self) -> DecisionWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _watch(self) -> None:
        while not self._stop.is_set():
            records = self.reader.poll_batch(max_records=10_000, timeout=WATCH_POLL_S)
            seen_at = time.time()
            for record in records:
                if not record.value:
                    continue
                event = orjson.loads(record.value)
                payload = event["payload"]
                pid = payload.get("id")
                if event.get("type") == C.EVENT_DECIDED and pid in self.wanted and pid not in self.seen:
                    self.seen[pid] = seen_at
                    self.decided_at[pid] = (payload.get("decided_at") or 0) / 1000
                    self.statuses[str(payload.get("status"))] += 1


def paced(bus: Bus, watcher: Reader, voters: list[str], rate: float, seconds: float,
          manager_pid: int, broker_pid: int) -> dict[str, Any]:
    """Proposals voted by `voters` (the supporters each needs, the last one decides) at
    `rate` votes/s for about `seconds`, sent by `bus` (the agents' linger, as agents send);
    `watcher` reads the consensus topic from where the earlier phases left it. A decision's
    latency is split at the manager's `decided_at` (the same host's wall clock): the vote's
    hop (send -> counted) and the decision's (decided -> seen)."""
    schedule = paced_schedule(rate, seconds, len(voters), OPEN_LEAD_S)
    ids = [f"c{i}" for i in range(schedule[-1].proposal + 1)]
    # encoded before the clock starts: the sender loop only produces
    opens = [events.proposal(C.CLI_COUNTER_OWNER, pid, "decision", {"type": "approval"}).encode()
             for pid in ids]
    ballots = [[vote(pid, voter) for voter in voters] for pid in ids]
    sent: dict[str, float] = {}
    with DecisionWatch(watcher, set(ids)) as watch:
        cpu_before, broker_before = cpu_seconds(manager_pid), cpu_seconds(broker_pid)
        start = time.perf_counter()
        for send in schedule:
            if (delay := start + send.at - time.perf_counter()) > 0:
                time.sleep(delay)
            pid = ids[send.proposal]
            if send.voter < 0:
                bus.produce_raw(C.TOPIC_PROPOSALS, opens[send.proposal], key=pid)
                continue
            if send.deciding:
                sent[pid] = time.time()
            bus.produce_raw(C.TOPIC_VOTES, ballots[send.proposal][send.voter], key=pid)
        sending = time.perf_counter() - start
        wait_until(lambda: len(watch.seen) >= len(ids), WAIT_TIMEOUT_S,
                   lambda: f"{len(ids) - len(watch.seen)} paced decisions", interval=0.01)
        elapsed = time.perf_counter() - start
        manager_cpu = cpu_seconds(manager_pid) - cpu_before
        broker_cpu = cpu_seconds(broker_pid) - broker_before
    votes = len(ids) * len(voters)

    def ms(intervals: list[float]) -> dict[str, float]:
        return percentiles([interval * 1000 for interval in intervals])

    return {
        "rate": round(rate),
        "votes": votes,
        "votes_per_s": round(votes / sending) if sending else 0,  # as sent (behind schedule when lower)
        "decisions": len(ids),
        "decision_latency": ms([watch.seen[pid] - sent[pid] for pid in ids]),
        "vote_hop": ms([watch.decided_at[pid] - sent[pid] for pid in ids]),
        "decision_hop": ms([watch.seen[pid] - watch.decided_at[pid] for pid in ids]),
        "manager_cpu_us_per_vote": round(manager_cpu / votes * 1e6, 1),
        "manager_cpu_share": round(manager_cpu / elapsed, 2),
        "broker_cpu_share": round(broker_cpu / elapsed, 2),
        "accepted": watch.statuses["accepted"],
    }

"""The relays of `bench mesh` as the bench sees them: their names and inbox partitions,
their steering through one Redis key (which run they follow, at what rate), their
figures read back from Redis, and the phases built on that: a paced window, and the wait
between two phases until what the first sent is handled."""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

import orjson
import redis

from agentmesh_cli import constants as C
from agentmesh_cli.bench.relay import Histogram, settings_key, stats_key
from agentmesh_cli.config_sections import AUTO_HOST_AGENTS, KafkaConfig
from agentmesh_cli.errors import WaitTimeout
from agentmesh_cli.waiting import wait_until

WARMUP_S = 1.0
FOLLOW_TIMEOUT_S = 15.0  # relays read their settings about once a second
SETTLE_TIMEOUT_S = 60.0  # between two phases, for what the first left queued
SETTLE_NOTED_S = 3.0  # a longer wait than this for it is noted
FLUSH_GRACE_S = 10.0  # how long past its time a relay's figures may come (Relays.flushed_after)
FLUSH_GRACE_PER_RELAY_S = 0.3  # ... or this per relay, when more


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


def window_figures(start: dict[str, dict[str, Any]], end: dict[str, dict[str, Any]]) -> dict[str, Any]:
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


def sent_and_handled(relays: Relays, runs: list[str]) -> tuple[int, int]:
    """Messages the relays sent and handled in `runs`, all together (injected ones aside)."""
    figures = [relays.read(run) for run in runs]
    return (sum(d["sent"] for f in figures for d in f.values()),
            sum(d["handled"] for f in figures for d in f.values()))


def paced_window(relays: Relays, run: str, seconds: float, rate: float) -> dict[str, Any]:
    """Steer the relays to `run` at `rate`/s each; after the warm-up, the figures of a
    window of `seconds`."""
    relays.steer(run, rate)
    following = relays.wait_following(run)
    start = relays.flushed_after(run, {n: d["ts"] + WARMUP_S for n, d in following.items()})
    end = relays.flushed_after(run, {n: d["ts"] + seconds for n, d in start.items()})
    return window_figures(start, end)


def settle(relays: Relays, runs: list[str], notes: list[str]) -> None:
    """Between two phases: stop the traffic and wait until the relays have handled all that
    was sent, so that what one phase left queued (the peak's window, a paced rate the mesh
    could not keep) is not measured as the next one's latency. A note when it did not."""
    relays.steer(None)
    counts = {"sent": 0, "handled": 0}

    def settled() -> bool:
        counts["sent"], counts["handled"] = sent_and_handled(relays, runs)
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

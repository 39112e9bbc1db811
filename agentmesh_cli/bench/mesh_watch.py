"""What `bench mesh` samples beside the relays' own figures: the CPU of its programs by pid
(`Sampler`), and the topology manager's backlog on `messages` from its snapshots
(`Backlog`)."""

from __future__ import annotations

import time
from typing import Any

from agentmesh_cli import constants as C
from agentmesh_cli.bench.infra import cpu_seconds
from agentmesh_cli.bench.mesh_relays import Relays
from agentmesh_cli.store import Store


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


def produced_at(series: dict[str, list[tuple[float, int]]], ts: float) -> float:
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


def topology_read(store: Store) -> tuple[float, int]:
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
        snapshot_ts, consumed = topology_read(self.store)
        self.note(self.relays.flushed_after(run, dict.fromkeys(self.relays.names, snapshot_ts)))
        return max(0, round(self.injected + produced_at(self.series, snapshot_ts) - consumed))

"""A seeded discrete-event model of one sender routing new conversations to single-server
replicas (pure: its clock is the event queue, its randomness seeded), to choose physarum's
defaults and compare it with p2c_ewma and round_robin before the real bench exists.

Each message is a new conversation: Poisson arrivals at `rate`; the router chooses on
arrival; the replica serves its inbox in order (exponential or fixed service times) and the
reply reaches the router the moment service ends. The sender forgets an ask after
`ask_timeout_s`, and a replica skips a request older than that (its deadline passed). A kill
stops a replica: what it was serving goes back to the head of its inbox (Kafka redelivers an
uncommitted message), new requests still queue there, and at the restart it serves the
backlog. Arrivals stop at `duration_s`; the queues then drain.

    python -m agentmesh_cli.routing.simulate            # the tables of docs/routing.md
    python -m agentmesh_cli.routing.simulate --service-ms 20 20 20 --set mu=1.25
"""

from __future__ import annotations

import argparse
import bisect
import heapq
import itertools
import math
import random
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from agentmesh_cli.routing.models import MODELS, PhysarumParams, make_router

ARRIVE, DONE, TIMEOUT, TICK, KILL, RESTART = range(6)


@dataclass(frozen=True)
class Scenario:
    rate: float  # new conversations per second
    duration_s: float = 60.0  # arrivals stop here
    warmup_s: float = 10.0  # latencies of earlier arrivals are not counted
    service_ms: tuple[float, ...] = (10.0, 20.0, 40.0)  # each replica's mean service time
    service: str = "exp"  # "exp" (exponential) or "fixed"
    ask_timeout_s: float = 10.0  # the runtime's default ask timeout
    kill: int | None = None  # the index of the replica killed, if any
    kill_at_s: float = 30.0
    restart_at_s: float | None = None  # None: it stays dead
    tick_s: float = 0.2  # how often the router's tick runs
    seed: int = 1

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(f"R{i + 1}" for i in range(len(self.service_ms)))

    @property
    def fair_shares(self) -> tuple[float, ...]:
        """Each replica's share of the total capacity (1 / service time)."""
        total = sum(1 / s for s in self.service_ms)
        return tuple((1 / s) / total for s in self.service_ms)


@dataclass
class Result:
    model: str
    scenario: Scenario
    arrivals: list[tuple[float, int]] = field(default_factory=list)  # (time, replica index)
    latencies_ms: list[float] = field(default_factory=list)  # answered asks after the warm-up
    served: int = 0  # requests a replica finished (each counted once)
    served_twice: int = 0
    timed_out: int = 0
    skipped: int = 0  # expired in an inbox, skipped by the replica

    def quantile_ms(self, q: float) -> float:
        ranked = sorted(self.latencies_ms)
        return ranked[min(len(ranked) - 1, max(math.ceil(q * len(ranked)) - 1, 0))] if ranked else math.nan

    def shares(self, start: float, end: float) -> list[float]:
        """Each replica's share of the arrivals in [start, end) (all 0.0 when none came)."""
        counts = [0] * len(self.scenario.service_ms)
        first = bisect.bisect_left(self.arrivals, start, key=_time)  # arrivals are in time order
        for _, k in itertools.islice(self.arrivals, first, bisect.bisect_left(self.arrivals, end, key=_time)):
            counts[k] += 1
        total = sum(counts)
        return [c / total if total else 0.0 for c in counts]

    def share_series(self, bin_s: float = 1.0) -> list[list[float]]:
        """Shares per bin of `bin_s` over the run: each bin's shares sum to 1."""
        bins = math.ceil(self.scenario.duration_s / bin_s)
        counts = [[0] * len(self.scenario.service_ms) for _ in range(bins)]
        for t, k in self.arrivals:
            counts[min(int(t / bin_s), bins - 1)][k] += 1
        return [[c / sum(row) for c in row] if sum(row) else [0.0] * len(row) for row in counts]

    def dead_share(self, window_s: float = 2.0) -> float | None:
        """The share of new conversations sent to the killed replica in the `window_s` after the kill."""
        s = self.scenario
        return None if s.kill is None else self.shares(s.kill_at_s, s.kill_at_s + window_s)[s.kill]

    def share_before_kill(self, span_s: float = 30.0) -> float | None:
        """The killed replica's share in the `span_s` before the kill (what it grows back to)."""
        s = self.scenario
        return None if s.kill is None else self.shares(s.kill_at_s - span_s, s.kill_at_s)[s.kill]

    def recovery_s(self, target: float, window_s: float = 3.0, step_s: float = 0.5) -> float | None:
        """Seconds from the restart to the end of the first `window_s` window (sliding by
        `step_s`) in which the restarted replica's share is at least 0.9 * `target`; None: never."""
        s = self.scenario
        if s.kill is None or s.restart_at_s is None:
            return None
        start = s.restart_at_s
        while start + window_s <= s.duration_s:
            if self.shares(start, start + window_s)[s.kill] >= 0.9 * target:
                return start + window_s - s.restart_at_s
            start += step_s
        return None


def _time(arrival: tuple[float, int]) -> float:
    return arrival[0]


@dataclass
class _Replica:
    mean_ms: float
    inbox: deque[tuple[str, float, float]] = field(default_factory=deque)  # (id, sent, work)
    busy: tuple[str, float, float] | None = None
    alive: bool = True
    life: int = 0  # bumped by a kill, so a service that was cut short never completes


def simulate(model: str, scenario: Scenario, **options: Any) -> Result:
    """Run `scenario` with a router of `model` (and its options); the same seed gives the
    same arrivals and work to every model (common random numbers)."""
    return _Run(model, scenario, options).run()


class _Run:
    """One simulation: the event queue, the replicas, and the sender's asks."""

    def __init__(self, model: str, scenario: Scenario, options: dict[str, Any]) -> None:
        self.s = scenario
        self.router = make_router(model, random.Random(f"{scenario.seed}:router"), **options)
        self.router.set_replicas(scenario.names, 0.0)
        self.draws = random.Random(f"{scenario.seed}:arrivals")
        self.replicas = [_Replica(ms) for ms in scenario.service_ms]
        self.result = Result(model, scenario)
        self.waiting: dict[str, float] = {}  # asks still waiting for their reply -> sent at
        self.finished: set[str] = set()
        # (time, order, kind, replica index, the replica's life, request id)
        self.events: list[tuple[float, int, int, int, int, str]] = []
        self.order = itertools.count()  # events at the same time keep the order they were pushed in

    def push(self, t: float, kind: int, k: int = -1, life: int = 0, rid: str = "") -> None:
        heapq.heappush(self.events, (t, next(self.order), kind, k, life, rid))

    def run(self) -> Result:
        s = self.s
        self.push(self.draws.expovariate(s.rate), ARRIVE)
        self.push(s.tick_s, TICK)
        if s.kill is not None:
            self.push(s.kill_at_s, KILL, s.kill)
            if s.restart_at_s is not None:
                self.push(s.restart_at_s, RESTART, s.kill)
        while self.events:
            now, _, kind, k, life, rid = heapq.heappop(self.events)
            if kind == ARRIVE:
                self.arrive(now)
            elif kind == DONE:
                self.done(now, k, life)
            elif kind == TIMEOUT and self.waiting.pop(rid, None) is not None:
                self.result.timed_out += 1
                self.router.forget(rid)
            elif kind == TICK:
                self.router.tick(now)
                if now + s.tick_s < s.duration_s:
                    self.push(now + s.tick_s, TICK)
            elif kind == KILL:
                self.kill(k)
            elif kind == RESTART:
                self.replicas[k].alive = True
                self.serve(k, now)
        return self.result

    def arrive(self, now: float) -> None:
        rid = f"m{len(self.result.arrivals)}"
        name = self.router.choose(now)
        self.router.sent(name, rid, now)
        k = self.s.names.index(name)
        self.result.arrivals.append((now, k))
        self.waiting[rid] = now
        self.replicas[k].inbox.append((rid, now, self.draws.expovariate(1.0)))
        self.push(now + self.s.ask_timeout_s, TIMEOUT, rid=rid)
        self.serve(k, now)
        gap = self.draws.expovariate(self.s.rate)
        if now + gap < self.s.duration_s:
            self.push(now + gap, ARRIVE)

    def serve(self, k: int, now: float) -> None:
        """Start the next request in replica k's inbox, skipping those past their deadline."""
        r = self.replicas[k]
        while r.alive and r.busy is None and r.inbox:
            rid, sent, work = r.inbox.popleft()
            if now - sent > self.s.ask_timeout_s:
                self.result.skipped += 1
                continue
            r.busy = (rid, sent, work)
            time_ms = r.mean_ms * (work if self.s.service == "exp" else 1.0)
            self.push(now + time_ms / 1000.0, DONE, k, r.life)

    def done(self, now: float, k: int, life: int) -> None:
        r = self.replicas[k]
        if life != r.life or r.busy is None:
            return  # the replica was killed while serving it
        rid, sent, _ = r.busy
        r.busy = None
        self.result.served_twice += rid in self.finished
        self.result.served += rid not in self.finished
        self.finished.add(rid)
        if self.waiting.pop(rid, None) is not None and sent >= self.s.warmup_s:
            self.result.latencies_ms.append((now - sent) * 1000.0)
        self.router.replied(rid, now)  # a reply after the ask timed out is ignored
        self.serve(k, now)

    def kill(self, k: int) -> None:
        """kill -9: what it was serving goes back to the head of its inbox (not committed)."""
        r = self.replicas[k]
        r.alive, r.life = False, r.life + 1
        if r.busy is not None:
            r.inbox.appendleft(r.busy)
            r.busy = None


def _runs(model: str, base: Scenario, seeds: int, options: dict[str, Any]) -> list[Result]:
    return [simulate(model, replace(base, seed=base.seed + i), **options) for i in range(seeds)]


def _mean(values: Sequence[float | None], digits: int = 3) -> str:
    known = [v for v in values if v is not None]
    if len(known) < len(values):
        return f"never in {len(values) - len(known)} of {len(values)}"
    return f"{sum(known) / len(known):.{digits}g}"


def main(argv: Sequence[str] | None = None) -> None:
    """Print the tables of docs/routing.md (markdown): latency per load, then kill and restart."""
    ap = argparse.ArgumentParser(prog="python -m agentmesh_cli.routing.simulate", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    ap.add_argument("--service-ms", nargs="+", type=float, default=[10.0, 20.0, 40.0])
    ap.add_argument("--service", choices=("exp", "fixed"), default="exp")
    ap.add_argument("--loads", nargs="*", type=float, default=[0.5, 0.8, 0.95],
                    help="shares of the capacity; none: no latency table")
    ap.add_argument("--duration", type=float, default=300.0, help="simulated seconds per latency run")
    ap.add_argument("--seeds", type=int, default=5, help="runs per figure (seeds 1..N), averaged")
    ap.add_argument("--kill-load", type=float, default=0.8)
    ap.add_argument("--dead-for", type=float, nargs="*", default=[3.0, 15.0],
                    help="seconds from the kill (at 60 s) to the restart; none: no kill table")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                    help="a physarum parameter (e.g. gamma=0.5)")
    ap.add_argument("--plain-round-robin", action="store_true", help="no weights (default: capacities)")
    args = ap.parse_args(argv)
    physarum = {k: float(v) for k, v in (item.split("=", 1) for item in args.set)}
    if unknown := sorted(set(physarum) - set(PhysarumParams.names())):
        ap.error(f"physarum has no parameter {', '.join(unknown)}")
    base = Scenario(rate=1.0, service_ms=tuple(args.service_ms), service=args.service)
    weights = dict(zip(base.names, (1000 / ms for ms in base.service_ms), strict=True))
    opts: dict[str, dict[str, Any]] = {
        "physarum": physarum, "p2c_ewma": {},
        "round_robin": {} if args.plain_round_robin else {"weights": weights},
    }
    print(f"simulation: service times {'/'.join(f'{ms:g}' for ms in base.service_ms)} ms "
          f"({args.service}), capacity {sum(weights.values()):.0f} msg/s, {args.seeds} seeds; "
          f"physarum {PhysarumParams(**physarum)}; round robin weights "
          f"{opts['round_robin'].get('weights', 'none')}")
    if args.loads:
        _latency_table(base, args.models, opts, args.loads, args.duration, args.seeds)
    if args.dead_for:
        _kill_table(base, args.models, opts, args.kill_load, args.dead_for, args.seeds)


def _latency_table(base: Scenario, models: list[str], opts: dict[str, dict[str, Any]],
                   loads: list[float], duration: float, seeds: int) -> None:
    capacity = sum(1000 / ms for ms in base.service_ms)
    print(f"\nlatency, {duration:g} s per run (the first {base.warmup_s:g} s not counted)\n")
    print("| load | model | p50 ms | p99 ms | p99 / p2c_ewma's | shares " + "/".join(base.names) + " |")
    print("|---|---|---|---|---|---|")
    for load in loads:
        scenario = replace(base, rate=load * capacity, duration_s=duration)
        runs = {m: _runs(m, scenario, seeds, opts[m]) for m in models}
        p99 = {m: sum(r.quantile_ms(0.99) for r in rs) / len(rs) for m, rs in runs.items()}
        for m, rs in runs.items():
            shares = [sum(r.shares(scenario.warmup_s, duration)[k] for r in rs) / len(rs)
                      for k in range(len(base.names))]
            ratio = f"{p99[m] / p99['p2c_ewma']:.2f}" if "p2c_ewma" in p99 else "-"
            print(f"| {load:.0%} | {m} | {_mean([r.quantile_ms(0.5) for r in rs])} | {p99[m]:.3g} | "
                  f"{ratio} | {' / '.join(f'{x:.3f}' for x in shares)} |")


def _kill_table(base: Scenario, models: list[str], opts: dict[str, dict[str, Any]], load: float,
                dead_for: list[float], seeds: int) -> None:
    capacity = sum(1000 / ms for ms in base.service_ms)
    print(f"\nkill -9 of one replica at 60 s under {load:.0%} load, restart after `dead for` s, "
          "60 s more after it: the share of new conversations sent to it in the 2 s after the "
          "kill; seconds from the restart to the end of the first 3 s window in which its share "
          "is at least 90% of its fair (capacity) share, and of its own share before the kill\n")
    print("| killed | dead for s | model | dead share in 2 s | back to fair share s "
          "| share before kill | back to it s | asks timed out |\n|---|---|---|---|---|---|---|---|")
    for kill, name in enumerate(base.names):
        fair = base.fair_shares[kill]
        for dead in dead_for:
            scenario = replace(base, rate=load * capacity, duration_s=120.0 + dead,
                               kill=kill, kill_at_s=60.0, restart_at_s=60.0 + dead)
            for m in models:
                rs = _runs(m, scenario, seeds, opts[m])
                before = [r.share_before_kill() or 0.0 for r in rs]
                back = [r.recovery_s(b) for r, b in zip(rs, before, strict=True)]
                print(f"| {name} (fair {fair:.3f}) | {dead:g} | {m} | {_mean([r.dead_share() for r in rs])} "
                      f"| {_mean([r.recovery_s(fair) for r in rs])} | {_mean(before)} | {_mean(back)} "
                      f"| {_mean([r.timed_out for r in rs])} |")


if __name__ == "__main__":
    main()

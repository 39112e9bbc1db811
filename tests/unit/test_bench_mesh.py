"""`agentmesh bench mesh`, pure parts: the relay's latency histogram by exact tables,
the relays' inbox partitions, and the Redis URL a relay connects with."""

from __future__ import annotations

import json
import re
from collections import Counter

import pytest

from agentmesh_cli import constants as C
from agentmesh_cli.bench import mesh_relays
from agentmesh_cli.bench.relay import BOUNDS_NS, Histogram, relay_redis_url
from agentmesh_cli.config import parse_config
from agentmesh_cli.errors import ConfigError
from tests.helpers.tables import GOOD

MS = 1_000_000  # ns


def _histogram(latencies_ns: list[int]) -> Histogram:
    h = Histogram()
    for ns in latencies_ns:
        h.observe(ns)
    return h


# a percentile is the upper bound of the bucket holding the sample of rank int(q * n)
# (bench.infra.percentiles' rule), at most the exact maximum
@pytest.mark.parametrize(("latencies_ns", "p50_ns", "p99_ns", "max_ns"), [
    ([i * MS for i in range(1, 101)], 53_088_444, 100 * MS, 100 * MS),  # rank 50 = 51 ms -> its bound
    ([1000] * 99 + [2000 * MS], 1000, 2000 * MS, 2000 * MS),  # a bound is in its own bucket
    ([0, -5, 1000, 1001], 1000, 1001, 1001),  # negative counts as 0; 1001 ns capped by the max
    ([5000, 20_000 * MS], 20_000 * MS, 20_000 * MS, 20_000 * MS),  # past 10 s: the overflow bucket
    ([7 * MS] * 10, 7 * MS, 7 * MS, 7 * MS),  # its bucket's bound (7.079 ms) is past the max
])
def test_histogram_percentiles_are_exact(latencies_ns: list[int], p50_ns: int, p99_ns: int,
                                         max_ns: int) -> None:
    h = _histogram(latencies_ns)
    assert (h.quantile_ns(0.5), h.quantile_ns(0.99), h.max_ns) == (p50_ns, p99_ns, max_ns)
    assert h.count == len(latencies_ns)
    assert h.sum_ns == sum(max(0, ns) for ns in latencies_ns)


def test_histogram_buckets_and_arithmetic() -> None:
    assert (BOUNDS_NS[0], BOUNDS_NS[40], BOUNDS_NS[-1]) == (1000, 10_000, 10_000_000_000)
    early, late = [i * MS for i in range(1, 51)], [i * MS for i in range(51, 101)]
    first = _histogram(early)
    both = _histogram(early + late)
    window = both.minus(first, max_ns=100 * MS)
    assert window.percentiles() == _histogram(late).percentiles()
    merged = Histogram.merged([_histogram(early), _histogram(late)])
    assert merged == both
    assert Histogram.from_dict(json.loads(json.dumps(both.to_dict()))) == both
    assert both.percentiles() == {"p50_ms": 53.088, "p99_ms": 100.0, "max_ms": 100.0, "mean_ms": 50.5,
                                  "count": 100}
    assert Histogram().percentiles()["count"] == 0


def test_relay_names_read_distinct_partitions_or_share_them_evenly() -> None:
    # (agents, partitions) -> relays per partition, from the most shared to the least
    table = {(2, 2): [1, 1], (4, 4): [1] * 4, (16, 16): [1] * 16, (4, 16): [1] * 4,
             (4, 2): [2, 2], (5, 2): [3, 2], (64, 16): [4] * 16, (128, 16): [8] * 16}
    for (agents, partitions), shares in table.items():
        names = mesh_relays.relay_names(agents, partitions)
        assert len(set(names)) == agents
        counts = Counter(C.inbox_partition(n, partitions) for n in names)
        assert sorted(counts.values(), reverse=True) == shares, (agents, partitions)


def test_bench_partitions_share_only_under_the_hosts_inbox_reader() -> None:
    table = {("agent", 4): 4, ("agent", 64): 64, ("auto", 4): 4, ("auto", 15): 15, ("auto", 16): 16,
             ("auto", 64): 16, ("auto", 128): 16, ("host", 4): 4, ("host", 16): 16, ("host", 64): 16}
    assert {key: mesh_relays.bench_partitions(key[1], key[0]) for key in table} == table


# a bench mesh names its Redis by URL; a supervised mesh's relays (benchmarks/scale_curve.py's
# status step) run on the embedded Valkey, whose password `up` hands them in the environment
@pytest.mark.parametrize(("redis", "environ", "url"), [
    ({"url": "redis://127.0.0.1:7001/0"}, {}, "redis://127.0.0.1:7001/0"),
    ({"url": "redis://:${RPW}@r1:6379/2"}, {}, "redis://:from-env@r1:6379/2"),  # expanded from os.environ
    ({}, {"AGENTMESH_REDIS_PASSWORD": "pw"}, "redis://:pw@127.0.0.1:26379/0"),
    ({"port": 7002}, {"AGENTMESH_REDIS_PASSWORD": "pw"}, "redis://:pw@127.0.0.1:7002/0"),
])
def test_relay_redis_url(redis: dict[str, object], environ: dict[str, str], url: str,
                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RPW", "from-env")
    cfg = parse_config({**GOOD, "redis": redis})
    assert relay_redis_url(cfg, environ) == url


def test_relay_redis_url_needs_the_embedded_password() -> None:
    cfg = parse_config(GOOD)
    with pytest.raises(ConfigError, match=r"\$AGENTMESH_REDIS_PASSWORD"):
        relay_redis_url(cfg, {})


class _Relays:
    """The bench's view of the relays: each read gives the next of `reads` (the last one
    again once they run out), as (sent, handled) of one relay per run."""

    def __init__(self, reads: list[dict[str, tuple[int, int]]]) -> None:
        self.reads = reads
        self.steered: list[str | None] = []
        self.at = -1

    def steer(self, run: str | None, rate: float = 0.0) -> None:
        self.steered.append(run)

    def read(self, run: str) -> dict[str, dict[str, int]]:
        if run == next(iter(self.reads[0])):  # a new look starts with the first run
            self.at = min(self.at + 1, len(self.reads) - 1)
        sent, handled = self.reads[self.at].get(run, (0, 0))
        return {"relay-0": {"sent": sent, "handled": handled}}


@pytest.mark.parametrize(("reads", "noted_s", "note"), [
    # handled at the first look: the traffic is stopped, nothing is noted
    ([{"peak": (10, 10)}], 3.0, None),
    # the paced run's backlog is handled on the third look; a wait past SETTLE_NOTED_S is noted
    ([{"peak": (10, 10), "paced": (50, 20)}, {"peak": (10, 10), "paced": (50, 40)},
      {"peak": (10, 10), "paced": (50, 50)}], 0.0,
     "after run paced: Ns until its 60 messages were handled (its backlog)"),
    # ... and not when it was shorter
    ([{"peak": (10, 10), "paced": (50, 20)}, {"peak": (10, 10), "paced": (50, 50)}], 3.0, None),
    # never handled within SETTLE_TIMEOUT_S: the next phase begins, with a note
    ([{"peak": (10, 10), "paced": (50, 20)}], 3.0,
     "after run paced: 30 messages still unhandled after 0s; the next phase began on them"),
])
def test_a_phase_starts_once_the_one_before_is_handled(
        reads: list[dict[str, tuple[int, int]]], noted_s: float, note: str | None,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mesh_relays, "SETTLE_TIMEOUT_S", 0.25)
    monkeypatch.setattr(mesh_relays, "SETTLE_NOTED_S", noted_s)
    relays = _Relays(reads)
    notes: list[str] = []
    mesh_relays.settle(relays, list(reads[0]), notes)  # type: ignore[arg-type]
    assert relays.steered == [None]
    # the seconds waited vary: shown as N
    assert [re.sub(r"\d+\.\ds until", "Ns until", n) for n in notes] == ([] if note is None else [note])

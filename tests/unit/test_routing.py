"""The replica routers (agentmesh_cli/routing) on scripted round trips: the peak-EWMA, the
in-flight bookkeeping, smooth weighted round robin, p2c's costs and picks, physarum's
conductance step, lengths and probabilities, in exact numbers; and the simulator's
invariants on short runs."""

from __future__ import annotations

import math
import random

import pytest

from agentmesh_cli.errors import ConfigError, RoutingError
from agentmesh_cli.routing.ewma import Bookkeeping, PeakEwma
from agentmesh_cli.routing.models import (
    P2cEwma,
    Physarum,
    PhysarumParams,
    RoundRobin,
    Router,
    make_router,
)
from agentmesh_cli.routing.simulate import Scenario, simulate

ABC = ["A", "B", "C"]


class Draws(random.Random):
    """A random.Random whose randrange and random answer from a script: the routers' only
    draws, so a table can say which candidates were drawn."""

    def __init__(self, ranges: list[int] | None = None, uniforms: list[float] | None = None) -> None:
        super().__init__(0)
        self.ranges, self.uniforms = list(ranges or []), list(uniforms or [])

    def randrange(self, start: int, stop: int | None = None, step: int = 1) -> int:
        value = self.ranges.pop(0)
        assert stop is None and 0 <= value < start, (value, start)
        return value

    def random(self) -> float:
        return self.uniforms.pop(0)


# ---- the peak-EWMA ---------------------------------------------------------------------------
# (sample ms, at s) -> the estimate after it; tau 10 s, default 30 ms, created at 0
PEAK_EWMA = [
    (20.0, 1.0, 20.0),  # the first sample replaces the default, even a lower one
    (50.0, 2.0, 50.0),  # higher: jumps at once
    (10.0, 12.0, 24.715177646857693),  # lower: 50 e^-1 + 10 (1 - e^-1), dt = 10 s = tau
    (10.0, 12.0, 24.715177646857693),  # dt = 0: a second sample at the same instant weighs nothing
    (40.0, 13.0, 40.0),
    (0.0, 33.0, 5.413411329464508),  # 40 e^-2: a 0 ms sample after 2 tau
]


def test_peak_ewma_jumps_up_and_decays_toward_lower_samples() -> None:
    ewma = PeakEwma(10.0, 30.0, 0.0)
    assert (ewma.value_ms, ewma.sampled) == (30.0, False)
    got = []
    for sample, at, _ in PEAK_EWMA:
        ewma.observe(sample, at)
        got.append(ewma.value_ms)
    assert got == pytest.approx([want for _, _, want in PEAK_EWMA], rel=1e-15)


def test_reading_decays_toward_zero_and_the_first_sample_still_replaces_the_default() -> None:
    ewma = PeakEwma(10.0, 30.0, 0.0)
    assert ewma.decay(5.0) == pytest.approx(30 * math.exp(-0.5), rel=1e-15)  # 18.1959...
    assert ewma.decay(10.0) == pytest.approx(30 * math.exp(-1.0), rel=1e-15)  # reads compose
    ewma.observe(12.0, 11.0)
    assert (ewma.value_ms, ewma.sampled) == (12.0, True)


# ---- in flight -------------------------------------------------------------------------------
def test_in_flight_counts_samples_and_forget() -> None:
    book = Bookkeeping(tau_s=10.0, default_ms=30.0)
    book.set_replicas(["R1", "R2"], 0.0)
    book.sent("R1", "a", 1.0)
    book.sent("R1", "b", 1.5)
    book.sent("R2", "c", 2.0)
    rows = []

    def row(event: object) -> None:
        rows.append((event, book.outstanding("R1"), book.outstanding("R2"),
                     round(book.books["R1"].oldest_age(3.0), 9), book.books["R1"].ewma.value_ms))

    row("sent a, b to R1 and c to R2")
    row(book.replied("a", 1.25))  # 250 ms: R1's first sample
    row(book.forget("b"))  # timed out: no sample
    row(book.replied("b", 4.0))  # its late reply: ignored
    row(book.replied("nobody", 4.0))
    row(book.replied("c", 2.02))
    assert rows == [
        ("sent a, b to R1 and c to R2", 2, 1, 2.0, 30.0),
        (("R1", 250.0), 1, 1, 1.5, 250.0),
        ("R1", 0, 1, 0.0, 250.0),
        (None, 0, 1, 0.0, 250.0),
        (None, 0, 1, 0.0, 250.0),
        (("R2", pytest.approx(20.0, rel=1e-12)), 0, 0, 0.0, 250.0),
    ]


def test_a_resend_moves_the_request_and_a_send_to_a_stranger_is_refused() -> None:
    book = Bookkeeping()
    book.set_replicas(["R1", "R2"], 0.0)
    book.sent("R1", "a", 1.0)
    book.sent("R2", "a", 2.0)
    assert (book.outstanding("R1"), book.outstanding("R2")) == (0, 1)
    with pytest.raises(RoutingError, match=r"^a send to 'R9', which is not a replica of this router "
                                           r"\(replicas: R1, R2\)$"):
        book.sent("R9", "b", 3.0)
    with pytest.raises(RoutingError, match="^replica 'R1' is listed twice$"):
        book.set_replicas(["R1", "R1"], 3.0)


def test_set_replicas_keeps_the_known_forgets_the_removed_and_starts_the_new() -> None:
    router = P2cEwma(rng=Draws())
    router.set_replicas(["A", "B"], 0.0)
    router.sent("A", "a", 0.0)
    router.replied("a", 0.1)
    router.sent("B", "b", 0.0)
    router.set_replicas(["C", "A"], 1.0)
    router.replied("b", 1.1)  # B was removed: its reply is ignored
    assert router.replicas == ("C", "A")
    assert router.snapshot() == {"C": {"outstanding": 0, "ewma_ms": 30.0},
                                 "A": {"outstanding": 0, "ewma_ms": pytest.approx(100.0)}}


@pytest.mark.parametrize("router", [RoundRobin(), P2cEwma(rng=Draws()), Physarum(rng=Draws())],
                         ids=["round_robin", "p2c_ewma", "physarum"])
def test_no_replica_no_choice(router: Router) -> None:
    with pytest.raises(RoutingError, match=r"^no replica to route to \(the router was given none\)$"):
        router.choose(0.0)
    router.set_replicas(["only"], 0.0)
    assert router.choose(0.0) == "only"


# ---- round robin -----------------------------------------------------------------------------
@pytest.mark.parametrize(("weights", "picks"), [
    (None, "ABCABCA"),
    ({"A": 4, "B": 2, "C": 1}, "ABACABA" * 2),  # nginx's smooth order, period 7
    ({"A": 5, "B": 1, "C": 1}, "AABACAA"),  # the example in nginx's source
    ({"A": 100, "B": 50, "C": 25}, "ABACABA"),  # the capacities: the same proportions
    ({"A": 1, "B": 1, "C": 2}, "CABC"),
])
def test_smooth_weighted_round_robin(weights: dict[str, float] | None, picks: str) -> None:
    router = RoundRobin(weights)
    router.set_replicas(ABC, 0.0)
    assert "".join(router.choose(0.0) for _ in picks) == picks


def test_round_robin_follows_replicas_that_come_and_go() -> None:
    router = RoundRobin({"A": 2, "B": 1, "C": 1})
    router.set_replicas(["A", "B"], 0.0)
    first = "".join(router.choose(0.0) for _ in range(3))
    router.set_replicas(["A", "B", "C"], 1.0)  # C starts at score 0, the others keep theirs
    later = "".join(router.choose(1.0) for _ in range(4))
    assert (first, later) == ("ABA", "ABCA")  # B before C on their tie (2, 2)
    with pytest.raises(ConfigError,
                       match=r"^routing.weights: no weight for replica 'D' \(weights name A, B, C\)$"):
        router.set_replicas(["A", "D"], 2.0)
    with pytest.raises(ConfigError, match=r"^routing.weights.B: must be > 0 \(got 0\)$"):
        RoundRobin({"A": 1, "B": 0})


# ---- p2c over peak-EWMA ----------------------------------------------------------------------
def p2c_with_history(draws: Draws) -> P2cEwma:
    """A: 10 ms and 3 in flight; B: 400 ms; C: 50 ms and 1 in flight (tau 10 s, at 0.4 s)."""
    router = P2cEwma(rng=draws)
    router.set_replicas(ABC, 0.0)
    for rid, replica, answered in [("a1", "A", 0.010), ("b1", "B", 0.400), ("c1", "C", 0.050)]:
        router.sent(replica, rid, 0.0)
        router.replied(rid, answered)
    for rid, replica in [("a2", "A"), ("a3", "A"), ("a4", "A"), ("c2", "C")]:
        router.sent(replica, rid, 0.4)
    return router


def test_p2c_cost_is_the_decayed_estimate_times_in_flight_plus_one() -> None:
    router = p2c_with_history(Draws())
    assert [router.cost(name, 0.4) for name in ABC] == pytest.approx([
        10 * math.exp(-0.39 / 10) * 4,  # 38.4698...
        400.0,  # sampled at 0.4: no decay yet
        50 * math.exp(-0.35 / 10) * 2,  # 96.5605...
    ], rel=1e-12)
    # read again 20 s later: e^-2 more, whatever the read in between
    assert router.cost("B", 20.4) == pytest.approx(400 * math.exp(-2), rel=1e-12)


@pytest.mark.parametrize(("ranges", "pick"), [
    ([0, 0], "A"),  # A (38.5) against B (400)
    ([1, 1], "C"),  # B against C (96.6): j = 1 skips B's own index
    ([2, 0], "A"),  # C against A
    ([1, 0], "A"),  # B against A
])
def test_p2c_takes_the_cheaper_of_two_drawn(ranges: list[int], pick: str) -> None:
    assert p2c_with_history(Draws(ranges)).choose(0.4) == pick


def test_p2c_spreads_new_conversations_by_their_cost() -> None:
    router = P2cEwma(rng=random.Random(1))
    router.set_replicas(ABC, 0.0)
    picks = []
    for n in range(9):  # nothing answers: the cost is 30 ms * (in flight + 1), ties to the first drawn
        picks.append(router.choose(0.0))
        router.sent(picks[-1], f"m{n}", 0.0)
    assert "".join(picks) == "ABCBABCCC"


# ---- physarum --------------------------------------------------------------------------------
def physarum_with_flux(draws: random.Random, **params: float) -> Physarum:
    """Replies at 0.2 s, each of a 100 ms round trip: 3 from A, 1 from B, none from C."""
    router = Physarum(PhysarumParams(**params), rng=draws)
    router.set_replicas(ABC, 0.0)
    for rid, replica in [("a1", "A"), ("a2", "A"), ("a3", "A"), ("b1", "B")]:
        router.sent(replica, rid, 0.1)
    for rid in ["a1", "a2", "a3", "b1"]:
        router.replied(rid, 0.2)
    return router


# mu -> the conductances after one step of dt = 0.2 s on shares A 3/4, B 1/4, C 0, from
# D0 = f(1/3) / gamma (gamma 0.5): D + 0.2 * (f(Q) - 0.5 * D)
CONDUCTANCE_STEP = [
    (1.0, [0.5357142857142857,  # D0 = 0.25 / 0.5; 0.5 + 0.2 * (0.75 / 1.75 - 0.25)
           0.49,  # 0.5 + 0.2 * (0.2 - 0.25): f(1/4) = 0.25 / 1.25
           0.45]),  # 0.5 + 0.2 * (0 - 0.25): no flux, the tube shrinks
    (2.0, [0.2 + 0.2 * (0.36 - 0.1),  # D0 = (1/9 / (10/9)) / 0.5 = 0.2; f(3/4) = 0.5625 / 1.5625
           0.2 + 0.2 * (1 / 17 - 0.1),  # f(1/4) = 0.0625 / 1.0625
           0.2 + 0.2 * (0 - 0.1)]),
]


@pytest.mark.parametrize(("mu", "after"), CONDUCTANCE_STEP)
def test_physarum_conductance_step(mu: float, after: list[float]) -> None:
    router = physarum_with_flux(Draws(), mu=mu)
    assert router.shares(0.2) == {"A": 0.75, "B": 0.25, "C": 0.0}
    router.tick(0.2)
    assert [router.conductance[name] for name in ABC] == pytest.approx(after, rel=1e-15)


def test_physarum_steps_only_on_flux_and_at_most_two_intervals() -> None:
    router = Physarum(rng=Draws())
    router.set_replicas(ABC, 0.0)
    router.tick(5.0)  # no reply yet: nothing to learn from
    assert router.conductance == {"A": 0.5, "B": 0.5, "C": 0.5}
    router.sent("A", "a", 5.0)
    router.replied("a", 5.1)
    router.tick(105.1)  # a stalled timer: one step of two intervals (0.4 s), not 100 s
    assert [router.conductance[name] for name in ABC] == pytest.approx(
        [0.5 + 0.4 * (0.5 - 0.25), 0.5 - 0.4 * 0.25, 0.5 - 0.4 * 0.25], rel=1e-15)


def test_physarum_probability_is_conductance_over_length_with_exploration() -> None:
    router = physarum_with_flux(Draws())
    router.tick(0.2)
    # A and B: 100 ms; C unsampled: 30 ms. p = 0.98 * (D / L) / sum + 0.02 / 3
    weights = {"A": 0.5357142857142857 / 100, "B": 0.49 / 100, "C": 0.45 / 30}
    total = sum(weights.values())
    want = {name: 0.98 * w / total + 0.02 / 3 for name, w in weights.items()}
    assert router.probabilities(0.2) == pytest.approx(want, rel=1e-12)
    assert want == pytest.approx({"A": 0.2145286576, "B": 0.1967911011, "C": 0.5886802413})


# a request sent to A at 0.2 s is never answered; A's estimate is 100 ms, so its stretch
# starts at an age of 50 ms (grace 0.5) and grows with the cube: (age / 50 ms) ** 3
SILENT_REPLICA = [
    (0.20, 200.0, 0.12292734366761573),  # in flight 1: (1 + 1) * 100 ms
    (0.25, 200.0, 0.12292734366761573),  # age 50 ms: no stretch yet
    (0.30, 1600.0, 0.02288252511435675),  # age 100 ms: * 8
    (0.40, 12800.0, 0.008723427673835948),  # age 200 ms: * 64, near the floor of 0.02 / 3
    (0.60, 102400.0, 0.0069242347890546285),
]


def test_a_silent_replica_stretches_at_once() -> None:
    router = physarum_with_flux(Draws())
    router.tick(0.2)
    router.sent("A", "a4", 0.2)
    for now, length, chance in SILENT_REPLICA:
        assert (router.length("A", now), router.probabilities(now)["A"]) == pytest.approx(
            (length, chance), rel=1e-12), now


def test_physarum_chooses_along_the_probabilities() -> None:
    # p = A 0.2145, B 0.1968, C 0.5887: the draw falls in A's, B's, C's stretch of [0, 1)
    router = physarum_with_flux(Draws(uniforms=[0.0, 0.2145, 0.2146, 0.4113, 0.4114, 0.999999]))
    router.tick(0.2)
    assert [router.choose(0.2) for _ in range(6)] == ["A", "A", "B", "B", "C", "C"]


def test_physarum_snapshot() -> None:
    router = physarum_with_flux(Draws())
    router.tick(0.2)
    router.sent("C", "c1", 0.2)  # C: (1 + 1) * 30 ms
    # p = 0.98 * (D / L) / sum + 0.02 / 3, D / L = 0.5357 / 100, 0.49 / 100, 0.45 / 60
    assert router.snapshot() == {
        "A": {"outstanding": 0, "ewma_ms": 100.0, "conductance": 0.5357142857142857, "length": 100.0,
              "probability": pytest.approx(0.3023223384285331, rel=1e-12)},
        "B": {"outstanding": 0, "ewma_ms": 100.0, "conductance": 0.49, "length": 100.0,
              "probability": pytest.approx(0.27709305443818716, rel=1e-12)},
        "C": {"outstanding": 1, "ewma_ms": 30.0, "conductance": 0.45, "length": 60.0,
              "probability": pytest.approx(0.4205846071332797, rel=1e-12)},
    }


def test_a_new_replica_starts_at_the_equal_share_conductance() -> None:
    router = Physarum(PhysarumParams(gamma=0.25), rng=Draws())
    router.set_replicas(["A"], 0.0)
    router.set_replicas(["A", "B"], 1.0)  # f(1/2) / gamma = (0.5 / 1.5) / 0.25
    assert router.conductance == pytest.approx({"A": 2.0, "B": 4 / 3}, rel=1e-15)
    router.set_replicas(["B"], 2.0)
    assert list(router.conductance) == ["B"]


# ---- the factory and the parameters ----------------------------------------------------------
def test_make_router() -> None:
    assert type(make_router("round_robin", Draws(), weights={"A": 1})) is RoundRobin
    assert type(make_router("p2c_ewma", Draws(), tau_s=5.0)) is P2cEwma
    physarum = make_router("physarum", Draws(), gamma=1.0)
    assert isinstance(physarum, Physarum) and physarum.params == PhysarumParams(gamma=1.0)


@pytest.mark.parametrize(("model", "options", "message"), [
    ("random", {}, "routing.model: unknown model 'random' (use one of physarum, p2c_ewma, round_robin)"),
    ("p2c_ewma", {"gamma": 1},
     "routing: p2c_ewma has no option gamma (its options: tau_s, default_ms, floor_ms)"),
    ("round_robin", {"tau_s": 1}, "routing: round_robin has no option tau_s (its options: weights)"),
    ("p2c_ewma", {"tau_s": 0}, "routing.tau_s: must be > 0 (got 0)"),
    ("physarum", {"gamma": -1}, "routing.gamma: must be > 0 (got -1)"),
    ("physarum", {"exploration": 1}, "routing.exploration: must be in [0, 1) (got 1)"),
    ("physarum", {"penalty_power": -1}, "routing.penalty_power: must be >= 0 (got -1)"),
    ("physarum", {"initial_conductance": 0}, "routing.initial_conductance: must be > 0 or unset (got 0)"),
    ("physarum", {"gamma": 5}, "routing: need 2 * gamma * interval_s <= 1 (got gamma=5, interval_s=0.2)"),
])
def test_make_router_refuses(model: str, options: dict[str, float], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        make_router(model, Draws(), **options)
    assert str(caught.value) == message


# ---- the simulator ---------------------------------------------------------------------------
CAPACITIES = {"R1": 100.0, "R2": 50.0, "R3": 25.0}


@pytest.mark.parametrize(("model", "options"), [
    ("physarum", {}), ("p2c_ewma", {}), ("round_robin", {"weights": CAPACITIES}),
])
def test_simulation_serves_every_message_once(model: str, options: dict[str, object]) -> None:
    scenario = Scenario(rate=140.0, duration_s=20.0, warmup_s=2.0, seed=7)
    result = simulate(model, scenario, **options)
    sent = len(result.arrivals)
    late = sum(1 for t, _ in result.arrivals if t >= scenario.warmup_s)
    assert 2500 < sent < 3100  # Poisson, 140/s for 20 s
    assert (result.served, result.served_twice, result.timed_out, result.skipped) == (sent, 0, 0, 0)
    assert len(result.latencies_ms) == late
    for row in result.share_series():
        assert sum(row) == pytest.approx(1.0)
    assert result.quantile_ms(0.5) <= result.quantile_ms(0.99)
    again = simulate(model, scenario, **options)  # seeded: the same run
    assert (again.arrivals, again.latencies_ms) == (result.arrivals, result.latencies_ms)


def test_plain_round_robin_overloads_the_slow_replica() -> None:
    # a third of 140 msg/s to R3, which serves 25: its inbox grows, its asks time out and
    # expire there; still nothing is served twice and nothing vanishes
    scenario = Scenario(rate=140.0, duration_s=20.0, warmup_s=2.0, seed=7)
    result = simulate("round_robin", scenario)
    assert result.shares(0.0, 20.0) == pytest.approx([1 / 3, 1 / 3, 1 / 3], abs=1e-3)
    assert result.timed_out > 0 and result.skipped > 0 and result.served_twice == 0
    assert result.served + result.skipped == len(result.arrivals)


def test_simulation_kill_and_restart() -> None:
    # R3 is dead from 10 s to 13 s: what it held and what came meanwhile is served after the
    # restart (the asks wait 10 s), nothing twice
    scenario = Scenario(rate=140.0, duration_s=25.0, warmup_s=2.0, kill=2, kill_at_s=10.0,
                        restart_at_s=13.0, seed=3)
    result = simulate("physarum", scenario)
    assert (result.served, result.served_twice, result.timed_out) == (len(result.arrivals), 0, 0)
    dead = result.dead_share()
    assert dead is not None and dead == result.shares(10.0, 12.0)[2] < 0.05
    before = result.share_before_kill(span_s=8.0)
    assert before is not None and 0.05 < before < 0.25
    recovered = result.recovery_s(before)
    assert recovered is not None and 3.0 <= recovered <= 12.0


def test_simulation_a_replica_dead_past_the_ask_timeout() -> None:
    # dead from 5 s to 13 s with 2 s asks: its backlog expires, is skipped, and timed out
    scenario = Scenario(rate=100.0, duration_s=20.0, warmup_s=1.0, ask_timeout_s=2.0, kill=0,
                        kill_at_s=5.0, restart_at_s=13.0, seed=5)
    result = simulate("p2c_ewma", scenario)
    assert result.skipped > 0 and result.timed_out >= result.skipped
    assert result.served + result.skipped == len(result.arrivals)
    assert result.served_twice == 0

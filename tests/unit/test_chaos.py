"""`agentmesh chaos`, pure parts: the fault plan, the judge of status frames, the table."""

from __future__ import annotations

import io
from collections import Counter
from typing import Any

import pytest
from rich.console import Console

from agentmesh_cli.chaos.faults import DOZE, GARBAGE, GATEWAY, KILL, RESTART, STALL, Fault, plan_faults
from agentmesh_cli.chaos.figures import gateway_figures
from agentmesh_cli.chaos.figures import judge as judge_result
from agentmesh_cli.chaos.gateway import asks_note, judge_asks
from agentmesh_cli.chaos.http_asks import HttpAsk, ask_figures
from agentmesh_cli.chaos.observe import judge
from agentmesh_cli.chaos.report import chaos_table
from agentmesh_cli.errors import ConfigError
from tests.helpers.tables import CHAOS_AGENTS, quiet_chaos_result

PROGRAMS = sorted(["kafka", "redis", "memory", "cognition", "metrics", "topology-manager",
                   "consensus-manager", *(f"agent-{a}" for a in CHAOS_AGENTS)])


@pytest.mark.parametrize(("spec", "expected"), [
    ("agent-Sales,topology-manager", [Fault(KILL, "agent-Sales"), Fault(KILL, "topology-manager")]),
    ("managers,stall:Sales", [Fault(KILL, "topology-manager"), Fault(KILL, "consensus-manager"),
                              Fault(STALL, "Sales")]),
    ("infra, garbage, stall", [Fault(KILL, "redis"), Fault(KILL, "kafka"), Fault(GARBAGE),
                               Fault(STALL, "Fraud")]),
    ("all", [*(Fault(KILL, f"agent-{a}") for a in CHAOS_AGENTS),
             *(Fault(KILL, p) for p in ("topology-manager", "consensus-manager", "memory",
                                        "cognition", "metrics", "redis", "kafka")),
             Fault(DOZE, "agent-Sales"), Fault(DOZE, "redis"),
             Fault(STALL, "Fraud"), Fault(GARBAGE), Fault(RESTART)]),
    ("restart,agent-Sales", [Fault(RESTART), Fault(KILL, "agent-Sales")]),
])
def test_fault_plan(spec: str, expected: list[Fault]) -> None:
    assert plan_faults(spec, PROGRAMS, CHAOS_AGENTS) == expected


def test_fault_plan_with_a_gateway() -> None:
    programs = sorted([*PROGRAMS, "gateway"])
    everything = plan_faults("all", programs, CHAOS_AGENTS)
    # after the services, before Redis and the broker; a fault of its own, never a bare kill
    assert everything[8:11] == [Fault(KILL, "metrics"), Fault(GATEWAY, "gateway"), Fault(KILL, "redis")]
    assert Fault(KILL, "gateway") not in everything
    assert plan_faults("gateway,agent-Sales", programs, CHAOS_AGENTS) == [
        Fault(GATEWAY, "gateway"), Fault(KILL, "agent-Sales")]
    assert Fault(GATEWAY, "gateway").label == "kill -9 gateway (asks over HTTP)"
    with pytest.raises(ConfigError, match="the mesh runs no gateway"):
        plan_faults("gateway", PROGRAMS, CHAOS_AGENTS)


def test_fault_plan_without_embedded_infra_and_bad_names() -> None:
    external = [p for p in PROGRAMS if p not in ("kafka", "redis")]
    assert plan_faults("infra,services", external, CHAOS_AGENTS) == [
        Fault(KILL, "memory"), Fault(KILL, "cognition"), Fault(KILL, "metrics")]
    with pytest.raises(ConfigError, match="unknown fault 'agent-Nobody'"):
        plan_faults("agent-Nobody", PROGRAMS, CHAOS_AGENTS)
    with pytest.raises(ConfigError, match="no agent 'Nobody'"):
        plan_faults("stall:Nobody", PROGRAMS, CHAOS_AGENTS)


def frame(programs: dict[str, tuple[str, int]], agents: dict[str, tuple[bool, int]]) -> dict[str, Any]:
    return {"programs": [{"name": n, "state": s, "pid": p} for n, (s, p) in programs.items()],
            "agents": [{"name": n, "program": f"agent-{n}", "alive": a, "pid": p}
                       for n, (a, p) in agents.items()]}


@pytest.mark.parametrize(("shown", "before", "after", "frozen", "problems"), [
    # agrees
    (frame({"agent-Sales": ("RUNNING", 7)}, {"Sales": (True, 7)}),
     {"agent-Sales": ("RUNNING", 7)}, {"agent-Sales": ("RUNNING", 7)}, {}, 0),
    # a new process that joined before supervisord calls it RUNNING
    (frame({"agent-Sales": ("STARTING", 8)}, {"Sales": (True, 8)}),
     {"agent-Sales": ("STARTING", 8)}, {"agent-Sales": ("STARTING", 8)}, {}, 0),
    # changed while the frame was taken: either answer is right
    (frame({"agent-Sales": ("RUNNING", 7)}, {"Sales": (True, 7)}),
     {"agent-Sales": ("RUNNING", 7)}, {"agent-Sales": ("BACKOFF", 0)}, {}, 0),
    # a dead agent shown alive, and a program shown with the wrong state
    (frame({"agent-Sales": ("RUNNING", 7)}, {"Sales": (True, 7)}),
     {"agent-Sales": ("BACKOFF", 0)}, {"agent-Sales": ("BACKOFF", 0)}, {}, 2),
    # alive with the old pid while another runs
    (frame({"agent-Sales": ("RUNNING", 9)}, {"Sales": (True, 7)}),
     {"agent-Sales": ("RUNNING", 9)}, {"agent-Sales": ("RUNNING", 9)}, {}, 1),
    # stopped for 10 s (timeout 3 s), still shown alive
    (frame({"agent-Sales": ("RUNNING", 7)}, {"Sales": (True, 7)}),
     {"agent-Sales": ("RUNNING", 7)}, {"agent-Sales": ("RUNNING", 7)}, {"Sales": 90.0}, 1),
])
def test_status_judge(shown: dict[str, Any], before: dict[str, tuple[str, int]],
                      after: dict[str, tuple[str, int]], frozen: dict[str, float], problems: int) -> None:
    assert len(judge(shown, before, after, frozen, 3.0, now=100.0)) == problems


def test_table_shows_faults_and_verdicts() -> None:
    fault = {"fault": "kill -9 agent-Sales", "phase": "sequence", "detect_s": 0.2, "recover_s": 3.5,
             "lost": 0, "note": "", "recovered_by": "new pid ready"}
    randoms = [{**fault, "phase": "random", "recover_s": r, "lost": 1} for r in (2.0, 4.0, None)]
    result = {
        "embedded": True, "mesh": "chaos", "agents": CHAOS_AGENTS, "duration_s": 61.0,
        "settings": {"rate": 200}, "faults": [fault, *randoms],
        "probes": {"sent": 1000, "produced": 1002, "refused": 2, "unconfirmed": 0,
                   "handled": 998, "lost": 2},
        "duplicates_handled": 0, "duplicates_recognised": 5, "dead_letters": 0, "demo_messages_in": 40,
        "proposals": {"opened": 3, "decided": 3, "opened_more_than_once": 0,
                      "decided_more_than_once": 0, "overdue": 0, "pending": 0},
        "status": {"samples": 60, "disagreements": 0, "failed": 0, "slowest_s": 0.4}, "ok": False,
        "asks": {"agents": ["Fraud", "Inventory"], "produced": 100, "refused": 0, "sent": 100,
                 "answered": 99, "lost": 1, "answered_twice": 0, "error_replies": 0,
                 "p50_ms": 12.0, "p99_ms": 80.0},
    }
    out = io.StringIO()
    Console(file=out, width=200, color_system=None).print(chaos_table(result))
    text = out.getvalue()
    assert "kill -9 agent-Sales" in text and "3.50" in text
    assert "random: kill -9 agent-Sales x3" in text and "3.00 / 4.00" in text and "1 not recovered" in text
    assert "probes lost" in text and "must be 0: FAILED" in text
    assert "duplicates handled" in text and "must be 0: ok" in text
    assert "asks sent" in text and "to Fraud, Inventory, round trip p50 12 ms, p99 80 ms" in text
    assert "asks lost" in text and "asks answered twice" in text


def http_ask(seq: int, attempts: int, answered: bool = True, error: str = "", done: bool = True) -> HttpAsk:
    ask = HttpAsk(seq, f"k{seq}", "Sales", started=10.0, attempts=attempts, done=done, error=error)
    if answered:
        ask.reply, ask.answered_at = {"in_reply_to": f"r{seq}", "from": "Sales"}, 10.0 + 0.1 * (seq + 1)
    return ask


def test_http_ask_figures() -> None:
    asks = [http_ask(0, 1), http_ask(1, 4), http_ask(2, 2), http_ask(3, 9, False, "no answer within 60 s"),
            http_ask(4, 1, False, "HTTP 502: handler raised"), http_ask(5, 3, False, "", done=False)]
    figures = ask_figures(asks, Counter({"HTTP 504": 2, "connection: ConnectError": 13}))
    assert figures == {
        "sent": 6, "answered": 3, "retried": 4, "retries": 3 + 1 + 8 + 2,
        "retry_causes": {"HTTP 504": 2, "connection: ConnectError": 13},
        "lost": 2, "failed": 1, "unfinished": 1,
        "examples": ["ask 3 to Sales: no answer within 60 s", "ask 4 to Sales: HTTP 502: handler raised",
                     "ask 5 to Sales: "],
        "p50_ms": 200.0, "max_ms": 300.0,
    }


CLIENT = {"sent": 10, "answered": 10, "retried": 3, "retries": 7, "retry_causes": {"HTTP 503": 7},
          "lost": 0, "failed": 0, "in_flight_at_kill": 2}


@pytest.mark.parametrize(("client", "handled", "twice", "unrecorded", "ok"), [
    ({}, 10, 0, 0, True),
    ({}, 10, 1, 0, False),  # an id the ledger already held
    ({}, 11, 0, 0, False),  # more requests handled than asked
    ({}, 9, 0, 0, False),  # answered, never recorded as handled
    ({}, 10, 0, 1, False),  # answered, its id not in its answerer's ledger
    ({"answered": 9, "lost": 1}, 9, 0, 0, False),
    ({"answered": 9, "failed": 1}, 9, 0, 0, False),
])
def test_gateway_asks_verdict(client: dict[str, Any], handled: int, twice: int, unrecorded: int,
                              ok: bool) -> None:
    figures = judge_asks({**CLIENT, **client}, handled, twice, unrecorded, answered_again=4)
    assert figures["ok"] is ok
    assert [figures[k] for k in ("handled", "handled_twice", "unrecorded", "answered_again")] == \
        [handled, twice, unrecorded, 4]


def test_gateway_note_and_sums() -> None:
    row = judge_asks(CLIENT, 10, 0, 0, answered_again=4)
    assert asks_note(row) == ("10 asks over HTTP: 10 answered, 3 retried (7 retries: 7 HTTP 503), 0 lost, "
                              "0 failed; 10 handled by the agents, 0 twice, 4 answered again from the "
                              "reply cache; 2 in flight at the kill")
    bad = judge_asks({**CLIENT, "answered": 9, "lost": 1}, 9, 0, 0)
    assert gateway_figures([]) is None
    assert gateway_figures([row, bad]) == {
        "sent": 20, "answered": 19, "retried": 6, "retries": 14, "lost": 1, "failed": 0, "handled": 19,
        "handled_twice": 0, "unrecorded": 0, "ok": False}


def test_gateway_row_and_lines_in_the_table_and_the_verdict() -> None:
    row = judge_asks(CLIENT, 10, 0, 0, answered_again=4)
    fault = {"fault": "kill -9 gateway (asks over HTTP)", "phase": "sequence", "detect_s": 0.2,
             "recover_s": 2.5, "lost": 0, "note": asks_note(row), "recovered_by": "new pid ready",
             "asks": row}
    result = quiet_chaos_result(fault, CHAOS_AGENTS, 20.0, gateway=gateway_figures([row]))
    result["ok"] = judge_result(result)
    assert result["ok"]
    text = rendered(result)
    assert "kill -9 gateway (asks over HTTP)" in text and "ok: 10 asks over HTTP: 10 answered" in text
    assert "gateway asks sent (HTTP)" in text and "3 retried with their Idempotency-Key (7 retries)" in text
    assert "gateway asks lost" in text and "gateway asks handled twice" in text
    bad = judge_asks(CLIENT, 10, 1, 0)
    result = {**result, "faults": [{**fault, "asks": bad}], "gateway": gateway_figures([bad])}
    result["ok"] = judge_result(result)
    assert not result["ok"]
    assert "FAILED: 10 asks over HTTP" in rendered(result)


def rendered(result: dict[str, Any]) -> str:
    out = io.StringIO()
    Console(file=out, width=300, color_system=None).print(chaos_table(result))
    return out.getvalue()


def test_status_judge_reads_a_groups_replicas() -> None:
    """A replica group is one entry of status's agents: the judge checks each replica."""
    shown = frame({"agent-Pool-1": ("RUNNING", 7), "agent-Pool-2": ("RUNNING", 8)},
                  {"Pool-1": (True, 7), "Pool-2": (True, 5)})
    shown["agents"] = [{"name": "Pool", "alive": True, "members": shown["agents"]}]
    truth = {"agent-Pool-1": ("RUNNING", 7), "agent-Pool-2": ("RUNNING", 8)}
    assert judge(shown, truth, truth, {}, 3.0, now=100.0) == [
        "agent Pool-2 shown alive with pid 5, supervisord: RUNNING pid 8"]

"""`agentmesh chaos`, the inbox fault's pure parts: which inbox reader the embedded mesh runs,
the plan, the asks of a window, the restarts between two readings of supervisord's log, the
row (judged), its note, the figures summed over its rows, the summary lines and the verdict."""

from __future__ import annotations

import io
from typing import Any

import pytest
from rich.console import Console

from agentmesh_cli.chaos.faults import INBOX, KILL, Fault, inbox_reader_for, plan_faults
from agentmesh_cli.chaos.figures import inbox_figures
from agentmesh_cli.chaos.figures import judge as judge_result
from agentmesh_cli.chaos.inbox_tally import asks_in, inbox_note, inbox_row, restarts_between
from agentmesh_cli.chaos.mesh import mesh_data
from agentmesh_cli.chaos.report import chaos_table
from agentmesh_cli.config import parse_config
from agentmesh_cli.errors import ConfigError
from agentmesh_cli.hosts import program_names
from tests.helpers.tables import CHAOS_AGENTS, quiet_chaos_result

PROGRAMS = sorted(["kafka", "redis", "memory", "cognition", "metrics", "topology-manager",
                   "consensus-manager", *(f"agent-{a}" for a in CHAOS_AGENTS)])
HOST = sorted([*PROGRAMS, "inbox-reader"])  # kafka.inbox_reader: host


@pytest.mark.parametrize(("choice", "spec", "expected"), [
    (None, "all", "auto"),  # mesh.yaml's default: `all` runs the inbox fault only over a host reader
    (None, "agents", "auto"),  # (host from 16 agents up)
    (None, "inbox", "host"),  # the inbox fault needs one
    (None, "agents, inbox ", "host"),
    (None, "inbox-reader", "auto"),  # a program name, not the fault
    ("auto", "inbox", "auto"),  # the plan finds out whether the mesh it made runs a reader
    ("host", "agents", "host"),  # every fault over the host's reader
    ("host", "all", "host"),
    ("agent", "agents", "agent"),
    ("host", "inbox", "host"),
])
def test_the_embedded_meshs_inbox_reader(choice: str | None, spec: str, expected: str) -> None:
    assert inbox_reader_for(choice, spec) == expected


def test_an_inbox_reader_that_cannot_be() -> None:
    with pytest.raises(ConfigError, match="--inbox-reader agent runs none"):
        inbox_reader_for("agent", "agents,inbox")
    with pytest.raises(ConfigError, match="--inbox-reader: 'hub': use agent, host or auto"):
        inbox_reader_for("hub", "all")


@pytest.mark.parametrize("reader", ["agent", "host"])
def test_the_chaos_mesh_runs_its_inbox_reader(reader: str) -> None:
    config = parse_config(mesh_data(4, inbox_reader=reader), "chaos mesh")
    assert config.kafka.inbox_reader == reader
    assert ("inbox-reader" in program_names(config)) is (reader == "host")
    assert parse_config(mesh_data(4), "chaos mesh").kafka.inbox_reader == "agent"
    assert parse_config(mesh_data(64), "chaos mesh").kafka.inbox_reader == "host"  # auto, 64 agents


@pytest.mark.parametrize(("spec", "expected"), [
    ("inbox", [Fault(INBOX, "inbox-reader")]),
    ("inbox,agent-Sales", [Fault(INBOX, "inbox-reader"), Fault(KILL, "agent-Sales")]),
    ("inbox-reader", [Fault(KILL, "inbox-reader")]),  # the bare program: a plain kill
    # after the plain kills (agents, managers, services), before Redis and the broker
    ("all", [*(Fault(KILL, f"agent-{a}") for a in CHAOS_AGENTS),
             *(Fault(KILL, p) for p in ("topology-manager", "consensus-manager", "memory", "cognition",
                                        "metrics")),
             Fault(INBOX, "inbox-reader"), Fault(KILL, "redis"), Fault(KILL, "kafka"),
             Fault("doze", "agent-Sales"), Fault("doze", "redis"),
             Fault("stall", "Fraud"), Fault("garbage"), Fault("restart")]),
])
def test_inbox_plan(spec: str, expected: list[Fault]) -> None:
    assert plan_faults(spec, HOST, CHAOS_AGENTS) == expected


def test_inbox_plan_without_a_host_reader_and_the_label() -> None:
    assert Fault(INBOX, "inbox-reader") not in plan_faults("all", PROGRAMS, CHAOS_AGENTS)
    with pytest.raises(ConfigError, match=r"inbox: the mesh runs no inbox reader \(kafka.inbox_reader: host"):
        plan_faults("agents,inbox", PROGRAMS, CHAOS_AGENTS)
    assert Fault(INBOX, "inbox-reader").label == "kill -9 inbox-reader (every agent's inbox) under load"


SENT_AT = {0: 9.0, 1: 10.0, 2: 10.5, 3: 11.0, 4: 12.5}  # seq -> when the request was produced


@pytest.mark.parametrize(("replies", "since", "until", "expected"), [
    ({}, 10.0, 11.0, (3, 0, 0)),  # the window's ends included
    ({1: {"r1"}, 2: {"r2"}, 3: {"r3"}}, 10.0, 11.0, (3, 3, 0)),
    ({1: {"r1"}, 2: {"r2", "r2b"}, 3: set()}, 10.0, 11.0, (3, 2, 1)),  # two replies; none (read, empty)
    ({0: {"r0", "r0b"}, 4: {"r4"}}, 10.0, 11.0, (3, 0, 0)),  # outside it: not counted
    ({}, 13.0, 14.0, (0, 0, 0)),
])
def test_asks_in_a_window(replies: dict[int, set[str]], since: float, until: float,
                          expected: tuple[int, int, int]) -> None:
    got = asks_in(SENT_AT, replies, since, until)
    assert (got["sent"], got["answered"], got["answered_twice"]) == expected


@pytest.mark.parametrize(("before", "after", "expected"), [
    ({"inbox-reader": 1, "agent-Sales": 1}, {"inbox-reader": 2, "agent-Sales": 1}, (1, [])),
    # a new program (never spawned before) and a crash after the kill's restart
    ({"inbox-reader": 1}, {"inbox-reader": 3, "agent-Fraud": 1}, (2, ["agent-Fraud"])),
    ({"inbox-reader": 1, "agent-Sales": 1, "agent-Fraud": 2},
     {"inbox-reader": 2, "agent-Sales": 2, "agent-Fraud": 3, "kafka": 4},
     (1, ["agent-Sales", "agent-Fraud"])),
    (None, {"inbox-reader": 2}, (None, None)),  # supervisord's log not read
    ({"inbox-reader": 1}, None, (None, None)),
])
def test_restarts_between_two_readings(before: dict[str, int] | None, after: dict[str, int] | None,
                                       expected: tuple[int | None, list[str] | None]) -> None:
    assert restarts_between(before, after, "inbox-reader", CHAOS_AGENTS) == expected


SERVED = {"Sales": 610.0, "Support": 700.0, "Inventory": 650.0, "Fraud": 720.5}
ASKS = {"sent": 30, "answered": 30, "answered_twice": 0}


def row(served: dict[str, float] | None = None, back_s: float | None = 0.55, subscribed: int | None = 4,
        asks: dict[str, int] | None = None, twice: int | None = 0, duplicates: int | None = 3,
        restarts: int | None = 1, again: tuple[str, ...] | None = ()) -> dict[str, Any]:
    return inbox_row(CHAOS_AGENTS, SERVED if served is None else served, back_s, subscribed, 4,
                     ASKS if asks is None else asks, twice, duplicates, restarts,
                     None if again is None else list(again))


@pytest.mark.parametrize(("kwargs", "ok"), [
    ({}, True),
    ({"twice": None, "duplicates": None}, True),  # Redis could not be read: the run's own figures judge
    ({"restarts": None}, True),  # supervisord's log not read: unknown, not failed
    ({"subscribed": None}, True),
    ({"subscribed": 6}, True),  # an agent subscribed again (a new broker epoch)
    ({"twice": 1}, False),
    ({"back_s": None}, False),  # no new inbox reader ready
    ({"served": {a: 600.0 for a in CHAOS_AGENTS if a != "Fraud"}}, False),  # Fraud never served again
    ({"subscribed": 3}, False),  # an agent never said where it was
    ({"asks": {"sent": 30, "answered": 29, "answered_twice": 0}}, False),
    ({"asks": {"sent": 30, "answered": 30, "answered_twice": 1}}, False),
    ({"restarts": 2}, False),  # it crashed after the kill's restart
    ({"again": ("agent-Sales",)}, False),  # an agent went down with its reader
])
def test_inbox_row_verdict(kwargs: dict[str, Any], ok: bool) -> None:
    assert row(**kwargs)["ok"] is ok


def test_inbox_row_and_note() -> None:
    good = row()
    assert (good["served_p50_ms"], good["served_max_ms"], good["not_served"], good["agents"],
            good["local_agents"]) == (675.0, 720.5, [], 4, 4)
    assert inbox_note(good) == (
        "4 of 4 agents served again, kill to a later probe handled p50 675 ms, max 720 ms; new reader "
        "ready after 0.55 s; 4 subscriptions of 4 agents; asks around the outage 30 of 30 answered, "
        "0 twice; handled twice 0 (3 redeliveries skipped); restarts: inbox-reader 1, agents 0")
    bad = row({"Sales": 900.0}, back_s=None, subscribed=1,
              asks={"sent": 0, "answered": 0, "answered_twice": 0}, twice=None, duplicates=None,
              restarts=3, again=("agent-Fraud",))
    assert bad["not_served"] == ["Support", "Inventory", "Fraud"]
    assert inbox_note(bad) == (
        "1 of 4 agents served again, kill to a later probe handled p50 900 ms, max 900 ms; "
        "[red]not served: Support, Inventory, Fraud[/]; [red]no new inbox reader ready[/]; "
        "[red]1 subscriptions of 4 agents[/]; handled twice unknown; "
        "restarts: inbox-reader [red]3[/], agents 1 [red](agent-Fraud)[/]")
    assert inbox_note(row({}, restarts=None, subscribed=None)) == (
        "none of 4 agents served again; [red]not served: Sales, Support, Inventory, Fraud[/]; new reader "
        "ready after 0.55 s; asks around the outage 30 of 30 answered, 0 twice; handled twice 0 "
        "(3 redeliveries skipped); restarts unknown")


def test_inbox_figures_lines_and_verdict() -> None:
    assert inbox_figures([]) is None
    later = row({a: 400.0 + i for i, a in enumerate(CHAOS_AGENTS)}, back_s=0.7, duplicates=1)
    figures = inbox_figures([row(), later])
    assert figures == {"kills": 2, "served": 8, "not_served": 0, "served_p50_ms": 506.5,
                       "served_max_ms": 720.5, "back_max_s": 0.7, "asks_sent": 60, "asks_answered": 60,
                       "asks_answered_twice": 0, "handled_twice": 0, "duplicates": 4, "restarts": 2,
                       "agents_restarted": 0, "ok": True}
    fault = {"fault": "kill -9 inbox-reader (every agent's inbox) under load", "phase": "sequence",
             "detect_s": 0.21, "recover_s": 0.74, "lost": 0, "note": inbox_note(row()),
             "recovered_by": "new pid ready", "inbox": row()}
    result = quiet_chaos_result(fault, CHAOS_AGENTS, 21.0, inbox=figures)
    result["settings"]["inbox_reader"] = "host"
    result["ok"] = judge_result(result)
    assert result["ok"]
    out = io.StringIO()
    Console(file=out, width=320, color_system=None).print(chaos_table(result))
    text = out.getvalue()
    assert "embedded mesh (one inbox reader per host), 4 agents" in text
    assert "kill -9 inbox-reader (every agent's inbox) under load" in text
    assert "ok: 4 of 4 agents served again" in text
    assert "agents served again (inbox reader killed)" in text
    assert ("2 kills, 2 restarts of it per supervisord's log; kill to a later probe handled: p50 506 ms, "
            "max 720 ms") in text
    assert "agents not served again" in text
    assert "asks around an inbox reader's kill" in text
    assert "each answered once (60 answered, 0 twice): ok" in text
    assert "agents down with their inbox reader" in text
    # an agent never served again, or one down with its reader, fails the run
    for failed in (inbox_figures([row({"Sales": 1.0})]), inbox_figures([row(again=("agent-Sales",))])):
        assert failed is not None and not failed["ok"]
        assert not judge_result({**result, "inbox": failed})
    # supervisord's log unread: unknown restarts, no line for the agents
    unknown = inbox_figures([row(restarts=None, again=None)])
    assert unknown is not None and unknown["ok"] and unknown["restarts"] is None
    out = io.StringIO()
    Console(file=out, width=320, color_system=None).print(chaos_table({**result, "inbox": unknown}))
    assert "1 kills, unknown restarts" in out.getvalue()
    assert "agents down with their inbox reader" not in out.getvalue()

"""Dashboard views: every panel rendered from a fixed status frame at a fixed width, compared
as exact text (trailing spaces stripped), including the "not running" / "no data" variants."""

from __future__ import annotations

import copy
import io
from typing import Any

import pytest
from rich.console import Console, RenderableType

from agentmesh_cli.dashboard import views

TS = 1_700_000_100.0
MS = int(TS * 1000)

FRAME: dict[str, Any] = {
    "v": 2,
    "mesh": "demo",
    "ts": TS,
    "supervisord": {"running": True, "socket": "/m/.agentmesh/supervisor.sock"},
    "cpu_window_s": 0.31,
    "programs": [
        {"name": "agent-Sales", "state": "RUNNING", "pid": 4101, "uptime_s": 3725, "restarts": 2,
         "cpu_percent": 12.34, "rss_bytes": 70_254_592, "description": "pid 4101, uptime 1:02:05"},
        {"name": "agent-Fraud", "state": "BACKOFF", "pid": None, "uptime_s": 0, "restarts": 5,
         "cpu_percent": None, "rss_bytes": None, "description": "Exited too quickly"},
        {"name": "kafka", "state": "RUNNING", "pid": 4001, "uptime_s": 59, "restarts": 0,
         "cpu_percent": None, "rss_bytes": 900, "description": "pid 4001, uptime 0:00:59"},
    ],
    "agents": [
        {"name": "Fraud", "role": "fraud", "capabilities": [], "program": "agent-Fraud", "pid": 4102,
         "host": "h", "state": "stale", "alive": False, "heartbeat_age_s": 75.0, "messages_in": 10,
         "messages_out": 9, "dead_letters": 1, "sent_to": 14, "backlog": 4,
         "concurrency": 8, "in_flight": 11, "running": 8, "asks_pending": 8,
         "loop_lag_ms": {"p50": 40.0, "p99": 350.5, "max": 900.0},
         "asks": {"sent": 30, "timeouts": 12, "error_replies": 3, "late_replies": 2, "expired_requests": 0,
                  "cached_replies": 0, "p50_ms": 950.0, "p99_ms": 29_700.0},
         "counters": {}},
        {"name": "Sales", "role": "sales", "capabilities": [], "program": "agent-Sales", "pid": 4101,
         "host": "h", "state": "alive", "alive": True, "heartbeat_age_s": 0.4, "messages_in": 120,
         "messages_out": 240, "dead_letters": 0, "sent_to": 120, "backlog": 0,
         "concurrency": 1, "in_flight": 1, "running": 1, "asks_pending": 0,
         "loop_lag_ms": {"p50": 0.1, "p99": 2.46, "max": 4.0},
         "asks": {"sent": 40, "timeouts": 0, "error_replies": 1, "late_replies": 0, "expired_requests": 0,
                  "cached_replies": 1, "p50_ms": 1.75, "p99_ms": 48.6},
         "counters": {}},
        {"name": "Support", "role": "shop.desk:Support", "capabilities": [], "program": "agent-Support",
         "pid": None, "host": None, "state": "not running", "alive": False, "heartbeat_age_s": None,
         "messages_in": 0, "messages_out": 0, "dead_letters": 0, "sent_to": 3, "backlog": 3,
         "concurrency": None, "in_flight": None, "running": None, "asks_pending": None, "loop_lag_ms": None,
         "asks": {"sent": 0, "timeouts": 0, "error_replies": 0, "late_replies": 0, "expired_requests": 0,
                  "cached_replies": 0, "p50_ms": None, "p99_ms": None},
         "counters": {}},
    ],
    "topology": {
        "snapshot_age_s": 1.2,
        "agents": ["Fraud", "Sales", "Support"],
        "stats": {"agents": 3, "edges": 3, "possible": 6, "reduction_percent": 50.0, "min_weight": 0.15,
                  "avg_weight": 0.55, "max_weight": 1.0, "density": 0.5},
        "max_weight": 1.0,
        "edges": [
            {"source": "Sales", "target": "Fraud", "weight": 1.0, "usage": 42, "last_used": MS - 2500},
            {"source": "Fraud", "target": "Sales", "weight": 0.5, "usage": 7, "last_used": MS - 95_000},
            {"source": "Support", "target": "Sales", "weight": 0.15, "usage": 0, "last_used": None},
        ],
        "history": [
            {"ts": MS - 300_000, "agents": 3, "edges": 6, "possible": 6, "reduction_percent": 0.0},
            {"ts": MS - 200_000, "agents": 3, "edges": 5, "possible": 6, "reduction_percent": 16.7},
            {"ts": MS - 100_000, "agents": 3, "edges": 4, "possible": 6, "reduction_percent": 33.3},
            {"ts": MS, "agents": 3, "edges": 3, "possible": 6, "reduction_percent": 50.0},
        ],
        "counters": {},
    },
    "proposals": [
        {"id": "Sales-0a1b2c3d4e5f", "proposer": "Sales", "type": "discount", "intensity": 0.9, "for": 1,
         "against": 0, "needed": 2, "electorate": 3, "status": "pending", "age_s": 1.0,
         "decision_ms": None, "expires_in_s": 29.0},
        {"id": "Support-99aa", "proposer": "Support", "type": "refund", "intensity": 0.3, "for": 0,
         "against": 2, "needed": 2, "electorate": 3, "status": "rejected", "age_s": 60.0,
         "decision_ms": 12, "expires_in_s": None},
        {"id": "Sales-77", "proposer": "Sales", "type": "approval", "intensity": 0.55, "for": 2,
         "against": 1, "needed": 2, "electorate": 3, "status": "accepted", "age_s": 90.0,
         "decision_ms": 8, "expires_in_s": None},
    ],
    "services": [
        {"name": "memory", "url": "http://127.0.0.1:9000", "health": "healthy", "latency_ms": 3.25,
         "clients": [{"owner": "cognition", "breaker": "closed"},
                     {"owner": "Fraud", "breaker": "open", "health": "unreachable", "pending": 12},
                     {"owner": "Sales", "breaker": "closed", "health": "healthy", "pending": 0}]},
        {"name": "cognition", "url": "http://127.0.0.1:9100", "health": "degraded", "latency_ms": 10.0,
         "clients": [{"owner": "Sales", "breaker": "half_open", "health": "degraded"}]},
    ],
    "infra": {"broker": {"address": "127.0.0.1:29092", "reachable": True, "latency_ms": 1.5},
              "redis": {"address": "127.0.0.1:26379", "reachable": True, "latency_ms": 0.4}},
    "errors": [],
}


DOWN = {"broker": {"address": "127.0.0.1:29092", "reachable": False, "latency_ms": None},
        "redis": {"address": "127.0.0.1:26379", "reachable": False, "latency_ms": None}}


def frame(**changes: Any) -> dict[str, Any]:
    data = copy.deepcopy(FRAME)
    data.update(changes)
    return data


def text(renderable: RenderableType, width: int = 100) -> str:
    console = Console(file=io.StringIO(), width=width, force_terminal=False, color_system=None,
                      record=True, legacy_windows=False)
    console.print(renderable)
    return "\n".join(line.rstrip() for line in console.export_text().splitlines()) + "\n"


PROCESSES = """\
processes (cpu over 0.3s)
program      state                        pid  uptime  restarts  cpu%       rss
───────────────────────────────────────────────────────────────────────────────
agent-Sales  RUNNING                     4101   1h02m         2  12.3  67.0 MiB
agent-Fraud  BACKOFF Exited too quickly     -       -         5     -         -
kafka        RUNNING                     4001     59s         0     -     900 B
"""

NO_SUPERVISORD = """\
processes
supervisord is not running (start the mesh with `agentmesh up`)

"""

# in flight/concurrency; asks waiting (timeouts, error replies so far); the asks' p99;
# the event loop's lag p99. A plug-in role by its class.
AGENTS = """\
agents
agent    role     state         pid  heartbeat   in  out  backlog  dead  in flight               asks  ask p99  lag p99
───────────────────────────────────────────────────────────────────────────────────────────────────────────────────────
Fraud    fraud    stale        4102  1m15s ago   10    9        4     1       11/8  8 (12 t/o, 3 err)   29.7 s   350 ms
Sales    sales    alive        4101     0s ago  120  240        0     0        1/1          0 (1 err)    49 ms   2.5 ms
Support  Support  not running     -          -    0    0        3     0          -                  -        -        -
"""  # noqa: E501 (the table as wide as it is at 120 columns)

AGENTS_NO_REDIS = """\
agents
no data (Redis unreachable)

"""

TOPOLOGY = """\
topology
3 agents, 3/6 edges, reduction 50.0% ▁▂▃▅ +50.0 over 5m00s (snapshot 1s old)
strongest edges   weight              usage   last use
──────────────────────────────────────────────────────
Sales -> Fraud      1.00  ██████████     42     2s ago
Fraud -> Sales      0.50  █████·····      7  1m35s ago
Support -> Sales    0.15  ██········      0      never

"""

TOPOLOGY_NO_MANAGER = """\
topology
no snapshot yet (topology-manager not running?)

"""

TOPOLOGY_NO_REDIS = """\
topology
no data (Redis unreachable)

"""

PROPOSALS = """\
proposals (newest first)
id                  type      waggle  for/against  quorum  status    decision
─────────────────────────────────────────────────────────────────────────────
Sales-0a1b2c3d4e5f  discount  ▇ 0.90          1/0  2 of 3  pending     in 29s
Support-99aa        refund    ▃ 0.30          0/2  2 of 3  rejected     12 ms
Sales-77            approval  ▅ 0.55          2/1  2 of 3  accepted      8 ms
"""

NO_PROPOSALS = """\
proposals
none yet

"""

SERVICES = """\
services
service    url                    health    latency  client breakers
──────────────────────────────────────────────────────────────────────────────────────────────
memory     http://127.0.0.1:9000  healthy    3.2 ms  open: Fraud, closed 2 (pending: Fraud 12)
cognition  http://127.0.0.1:9100  degraded  10.0 ms  half_open: Sales
"""

SERVICES_DOWN = """\
services
service    url                    health       latency  client breakers
───────────────────────────────────────────────────────────────────────
memory     http://127.0.0.1:9000  unreachable        -
cognition  http://127.0.0.1:9100  unreachable        -
"""

INFRA = """\
infra
        address          reachable  latency
───────────────────────────────────────────
broker  127.0.0.1:29092  yes         1.5 ms
redis   127.0.0.1:26379  yes         0.4 ms
"""

INFRA_DOWN = """\
infra
        address          reachable  latency
───────────────────────────────────────────
broker  127.0.0.1:29092  no answer        -
redis   127.0.0.1:26379  no answer        -
"""

UNREACHABLE: list[dict[str, Any]] = [
    {"name": n, "url": u, "health": "unreachable", "latency_ms": None, "clients": []}
    for n, u in (("memory", "http://127.0.0.1:9000"), ("cognition", "http://127.0.0.1:9100"))]


@pytest.mark.parametrize(("panel", "data", "expected"), [
    (views.processes_panel, frame(), PROCESSES),
    (views.processes_panel, frame(supervisord={"running": False, "socket": "s"}, programs=[]),
     NO_SUPERVISORD),
    (views.agents_panel, frame(), AGENTS),
    (views.agents_panel, frame(agents=[], infra=DOWN), AGENTS_NO_REDIS),
    (views.topology_panel, frame(), TOPOLOGY),
    (views.topology_panel, frame(topology=None), TOPOLOGY_NO_MANAGER),
    (views.topology_panel, frame(topology=None, infra=DOWN), TOPOLOGY_NO_REDIS),
    (views.proposals_panel, frame(), PROPOSALS),
    (views.proposals_panel, frame(proposals=[]), NO_PROPOSALS),
    (views.services_panel, frame(), SERVICES),
    (views.services_panel, frame(services=UNREACHABLE), SERVICES_DOWN),
    (views.infra_panel, frame(), INFRA),
    (views.infra_panel, frame(infra=DOWN), INFRA_DOWN),
], ids=["processes", "processes-no-supervisord", "agents", "agents-no-redis", "topology",
        "topology-no-manager", "topology-no-redis", "proposals", "proposals-none", "services",
        "services-down", "infra", "infra-down"])
def test_panel(panel: Any, data: dict[str, Any], expected: str) -> None:
    assert text(panel(data), width=120) == expected


def test_no_trend_from_one_point() -> None:
    data = frame()
    data["topology"]["history"] = data["topology"]["history"][-1:]
    assert "3 agents, 3/6 edges, reduction 50.0% (snapshot 1s old)\n" in text(views.topology_panel(data))


@pytest.mark.parametrize(("fraction", "cells", "expected"), [
    (0.0, 4, "····"), (0.5, 4, "██··"), (1.0, 4, "████"), (1.7, 4, "████"), (-1.0, 2, "··"),
])
def test_bar(fraction: float, cells: int, expected: str) -> None:
    assert views.bar(fraction, cells) == expected


@pytest.mark.parametrize(("values", "top", "expected"), [
    ([0.0, 50.0, 100.0], 100.0, "▁▅█"), ([0.3], 1.0, "▃"), ([120.0, -5.0], 100.0, "█▁"), ([], 100.0, ""),
])
def test_sparkline(values: list[float], top: float, expected: str) -> None:
    assert views.sparkline(values, top) == expected


def test_dashboard_has_every_panel_in_one_or_two_columns() -> None:
    narrow = text(views.render_status(frame(errors=["redis: boom"])), width=100).splitlines()
    wide = text(views.render_status(frame(), "every 1s"), width=160).splitlines()
    titles = ["processes (cpu over 0.3s)", "agents", "infra", "topology", "proposals (newest first)",
              "services"]
    assert narrow[0] == "mesh demo" and narrow[-1] == "error: redis: boom"
    assert [line for line in narrow if line in titles] == titles  # stacked, in this order
    assert wide[0] == "mesh demo  every 1s"
    # the agents across the top, as on their own; the other panels in two columns below them
    agents = AGENTS.splitlines()
    assert wide[1:1 + len(agents)] == agents
    row = wide[len(agents) + 2]
    assert row.startswith("processes (cpu over 0.3s)") and row.rstrip().endswith("topology")
    assert max(len(line) for line in wide) <= 160


def test_the_agents_table_is_whole_at_120_columns() -> None:
    one_column = text(views.render_status(frame()), width=120)
    assert AGENTS in one_column  # one line per agent, nothing wrapped or cut
    assert max(len(line) for line in one_column.splitlines()) <= 120


def test_removed_agents_show_why_and_when() -> None:
    data = frame()
    data["topology"]["departed"] = {"Fraud": {"reason": "timeout", "ts": MS - 12_000},
                                    "Dave": {"reason": "left", "ts": MS - 125_000}}
    assert text(views.topology_panel(data)).splitlines()[-2] == (
        "removed: Dave (left, 2m05s ago), Fraud (timeout, 12s ago)")


def test_the_models_panel_shows_llm_agents_only() -> None:
    data = frame()
    assert views.models_panel(data) is None  # no agent called a model: no panel
    data["agents"][1]["llm"] = {"calls": 42, "tokens_in": 12_000, "tokens_out": 3_400, "tool_calls": 17,
                                "errors": 2, "p50_ms": 640.0, "p99_ms": 4_100.0, "mean_ms": 800.0}
    data["agents"][0]["llm"] = None
    assert text(views.models_panel(data), width=120) == """\
models
agent  calls  tokens in  tokens out     p50    p99  tool calls  errors
──────────────────────────────────────────────────────────────────────
Sales     42      12000        3400  640 ms  4.1 s          17       2
"""


"""Dashboard views of replica groups: a group's row with its replicas beneath, the line
when it runs another count than mesh.yaml declares, and the routing panel, rendered from a
fixed status frame (as status nests it) and compared as exact text."""

from __future__ import annotations

from typing import Any

import pytest

from agentmesh_cli.config import parse_config
from agentmesh_cli.dashboard import views
from agentmesh_cli.dashboard.agents import scaled_note
from agentmesh_cli.replica_view import nest_groups
from tests.helpers.tables import agent_entry
from tests.unit.test_dashboard import FRAME, MS, TS, frame, text

GROUP_CONFIG = parse_config({"mesh": "demo", "routing": {"model": "physarum"}, "agents": [
    {"name": "Sales", "role": "sales"}, {"name": "Support", "role": "support", "replicas": 2}]})
def routed(outstanding: int, ewma_ms: float, conductance: float, probability: float) -> dict[str, float]:
    return {"outstanding": outstanding, "ewma_ms": ewma_ms, "conductance": conductance, "length": 20.0,
            "probability": probability}


ROUTED = {"Sales": {"ts": MS - 500, "model": "physarum", "groups": {"Support": {
    "Support-1": routed(2, 12.5, 0.8, 0.6), "Support-2": routed(1, 20.0, 0.5, 0.4)}}},
    "gateway": {"ts": MS - 2_000, "model": "physarum", "groups": {"Support": {
        "Support-1": routed(0, 10.0, 0.6, 0.5), "Support-2": routed(1, 30.0, 0.4, 0.3),
        "Support-3": routed(0, 30.0, 0.3, 0.2)}}}}


def group_frame(counts: dict[str, int], retiring: set[str],
                routing: dict[str, Any] | None = None) -> dict[str, Any]:
    """FRAME with Support a group of three replicas (mesh.yaml: 2), as status nests it."""
    replicas = [agent_entry("Support-1", mi=50, in_flight=2, lag=(0.1, 3.0, 5.0)),
                agent_entry("Support-2", mi=30, in_flight=1, lag=(0.2, 25.0, 30.0)),
                agent_entry("Support-3", mi=20)]
    flat = [a for a in FRAME["agents"] if a["name"] == "Sales"] + replicas
    counters = {"Sales": {"sent_to:Support-1": 30, "sent_to:Support-2": 30},
                "gateway": {"sent_to:Support-1": 20}}
    return frame(agents=nest_groups(flat, GROUP_CONFIG, counts, retiring, routing or {}, counters, TS))


# a group's row sums its replicas (its state: the replicas alive), its replicas beneath it,
# and a line when it runs another count than mesh.yaml declares
GROUP_AGENTS = """\
agents
agent        role     state       pid  heartbeat   in  out  backlog  dead  in flight       asks  ask p99  lag p99
─────────────────────────────────────────────────────────────────────────────────────────────────────────────────
Sales        sales    alive      4101     0s ago  120  240        0     0        1/1  0 (1 err)    49 ms   2.5 ms
Support      support  3/3 alive     -          -  100    0        0     0       3/12          0        -    25 ms
├ Support-1           alive      4209     1s ago   50    0        0     0        2/4          0        -   3.0 ms
├ Support-2           alive      4209     1s ago   30    0        0     0        1/4          0        -    25 ms
└ Support-3           retiring   4209     1s ago   20    0        0     0        0/4          0        -        -
Support  2 replicas, 1 retiring
"""  # noqa: E501 (the table as wide as it is)

# per replica its share of the handled messages, then the senders' state combined:
# weighted by what each sent to the group (Sales 60, gateway 20)
ROUTING = """\
routing (physarum)
group    replica    share  p(new)  conductance  peak-EWMA  outstanding
──────────────────────────────────────────────────────────────────────
Support  Support-1    50%     57%        0.750      12 ms            2
         Support-2    30%     38%        0.475      22 ms            2
         Support-3    20%      5%        0.300      30 ms            0
Support: routed by Sales (60 sent), gateway (20 sent); newest state 0s old

"""

ROUTING_NONE = """\
routing
group    replica    share  peak-EWMA  outstanding
─────────────────────────────────────────────────
Support  Support-1    50%          -            -
         Support-2    30%          -            -
         Support-3    20%          -            -
Support: no sender routed to it in the last 1m00s

"""


def test_a_group_is_one_row_with_its_replicas_beneath() -> None:
    data = group_frame({"Support": 2}, {"Support-3"}, ROUTED)
    assert text(views.agents_panel(data), width=120) == GROUP_AGENTS
    assert GROUP_AGENTS in text(views.render_status(data), width=120)  # whole at 120 columns


def test_the_routing_panel_combines_the_senders() -> None:
    assert text(views.routing_panel(group_frame({"Support": 2}, {"Support-3"}, ROUTED)), width=120) == ROUTING
    assert text(views.routing_panel(group_frame({}, set())), width=120) == ROUTING_NONE
    assert views.routing_panel(frame()) is None  # no group: no panel
    wide = text(views.render_status(group_frame({}, set(), ROUTED)), width=160)
    assert "routing (physarum)" in wide and wide.index("topology") < wide.index("routing (")


@pytest.mark.parametrize(("replicas", "note"), [
    ({"declared": 2, "running": 2, "retiring": 0, "max": 2, "autoscaled": False}, None),
    ({"declared": 2, "running": 3, "retiring": 0, "max": 2, "autoscaled": False},
     "Support  3 replicas (mesh.yaml: 2; scaled)"),
    ({"declared": 3, "running": 1, "retiring": 2, "max": 3, "autoscaled": False},
     "Support  1 replica (mesh.yaml: 3; scaled), 2 retiring"),
    ({"declared": 1, "running": 4, "retiring": 0, "max": 8, "autoscaled": True},
     "Support  4 replicas (mesh.yaml: 1 to 8; autoscaled)"),
    ({"declared": 1, "running": 1, "retiring": 0, "max": 8, "autoscaled": True}, None),
])
def test_a_group_says_when_it_runs_another_count_than_declared(replicas: dict[str, Any],
                                                               note: str | None) -> None:
    assert scaled_note({"name": "Support", "replicas": replicas}) == note

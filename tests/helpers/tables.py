"""Tables and small readers that a unit test and an integration test of the same feature
both use: one copy, here."""

from __future__ import annotations

import uuid
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.metrics_core import Metric

from agentmesh_cli import constants as C
from agentmesh_cli.config import parse_config
from agentmesh_cli.embedded import free_port
from agentmesh_cli.envelope import Envelope
from agentmesh_cli.mesh import Mesh
from agentmesh_cli.signing import signing_key

GOOD = {"mesh": "shop", "agents": [{"name": "Sales", "role": "sales"}]}


BAD_CASES = [
    ({**GOOD, "kafak": {}}, "mesh.yaml: kafak: unknown key"),
    ({**GOOD, "topology": {"decay_interval": "5 parsecs"}},
     "mesh.yaml: topology.decay_interval: '5 parsecs' is not a duration"),
    ({**GOOD, "kafka": {"partitions": "many"}},
     "mesh.yaml: kafka.partitions: Input should be a valid integer"),
    ({**GOOD, "agents": [{"name": "A", "role": "sales"}, {"name": "A", "role": "fraud"}]},
     "mesh.yaml: agents[1].name: duplicate agent name 'A' (also agents[0])"),
    ({**GOOD, "agents": [{"name": "A", "role": "wizard"}]},
     "mesh.yaml: agents[0].role: unknown role 'wizard'"),
    ({**GOOD, "agents": [{"name": "A", "role": "sales", "colour": "red"}]},
     "mesh.yaml: agents[0].colour: unknown key"),
    ({"agents": []}, "mesh.yaml: mesh: required key is missing"),
    ({**GOOD, "heartbeat": {"missed": 0}},
     "mesh.yaml: heartbeat.missed: Input should be greater than or equal to 1"),
    ({**GOOD, "redis": {"url": "http://x"}}, "mesh.yaml: redis.url: use 'embedded' or a URL"),
    ({**GOOD, "agents": [{"name": "bad name", "role": "sales"}]},
     "mesh.yaml: agents[0].name: String should match pattern"),
    ({**GOOD, "topology": {"prune_threshold": 0.6}},
     "mesh.yaml: topology: need prune_threshold < initial_weight"),
    ({**GOOD, "services": {"cognition": {"port": 9000}}},
     "mesh.yaml: (top level): services.memory.port and services.cognition.port must differ (both are 9000)"),
    ({**GOOD, "services": {"memory": {"port": 26379}}},
     "mesh.yaml: (top level): services.memory.port and redis.port must differ (both are 26379)"),
    ({**GOOD, "metrics": {"port": 9100}},
     "mesh.yaml: (top level): services.cognition.port and metrics.port must differ (both are 9100)"),
    ({**GOOD, "metrics": {"port": 70000}},
     "mesh.yaml: metrics.port: Input should be less than or equal to 65535"),
]


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def samples(metrics: list[Metric], family: str | None = None) -> Samples:
    """(sample name, sorted labels) -> value, of every family or of one."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for m in metrics if family is None or m.name == family for s in m.samples}


def value(found: Samples, name: str, **labels: str) -> float:
    return found[(name, tuple(sorted(labels.items())))]


FAMILIES = [
    ("agentmesh_up", "gauge"),
    ("agentmesh_program_up", "gauge"),
    ("agentmesh_program_restarts", "counter"),
    ("agentmesh_messages_sent", "counter"),
    ("agentmesh_messages_received", "counter"),
    ("agentmesh_inbox_backlog", "gauge"),
    ("agentmesh_dead_letters", "counter"),
    ("agentmesh_refused_records", "counter"),
    ("agentmesh_agent_in_flight", "gauge"),
    ("agentmesh_agent_running", "gauge"),
    ("agentmesh_agent_asks_pending", "gauge"),
    ("agentmesh_agent_loop_lag_p99_seconds", "gauge"),
    ("agentmesh_agent_asks", "counter"),
    ("agentmesh_agent_ask_timeouts", "counter"),
    ("agentmesh_agent_error_replies", "counter"),
    ("agentmesh_agent_late_replies", "counter"),
    ("agentmesh_agent_expired_requests", "counter"),
    ("agentmesh_agent_cached_replies", "counter"),
    ("agentmesh_agent_ask_seconds", "histogram"),
    ("agentmesh_agent_loop_lag_seconds", "histogram"),
    ("agentmesh_topology_reinforcements", "counter"),
    ("agentmesh_topology_prunes", "counter"),
    ("agentmesh_topology_agents", "gauge"),
    ("agentmesh_topology_edges", "gauge"),
    ("agentmesh_topology_possible_edges", "gauge"),
    ("agentmesh_topology_reduction_ratio", "gauge"),
    ("agentmesh_topology_snapshot_age_seconds", "gauge"),
    ("agentmesh_proposals_opened", "counter"),
    ("agentmesh_proposals_decided", "counter"),
    ("agentmesh_proposals_pending", "gauge"),
    ("agentmesh_votes", "counter"),
    ("agentmesh_proposal_decision_seconds", "histogram"),
    ("agentmesh_service_requests", "counter"),
    ("agentmesh_service_request_duration_seconds", "histogram"),
    ("agentmesh_service_breaker_state", "gauge"),
    ("agentmesh_service_pending_writes", "gauge"),
]


ALPHA = ["memory", "cognition", "metrics", "topology-manager", "consensus-manager",
         "agent-Sales", "agent-Support"]


BETA = ["agent-Inventory", "agent-Fraud"]


AGENTS = {"Sales": "sales", "Support": "support", "Inventory": "inventory", "Fraud": "fraud"}


def external(broker: str, valkey: str, **extra: Any) -> dict[str, Any]:
    """A mesh.yaml on the session broker and Valkey, its own mesh name and topics."""
    tag = uuid.uuid4().hex[:8]
    return {
        "mesh": f"mh{tag}",
        "kafka": {"bootstrap_servers": broker, "topic_prefix": f"mh{tag}", "partitions": 4},
        "redis": {"url": valkey},
        "services": {"memory": {"port": free_port()}, "cognition": {"port": free_port()}},
        "metrics": {"port": free_port()},
        "gateway": {"port": free_port()},
        "topology": {"snapshot_interval": "250ms", "decay_interval": "1h"},
        "heartbeat": {"interval": "1s", "missed": 3},
        "workload": {"order_rate": 0, "lead_rate": 0, "refund_rate": 0},
        **extra,
    }


SVG = "{http://www.w3.org/2000/svg}"


# the default mesh after adaptation: the order edges strong, Support's lead edge fading
SNAPSHOT: dict[str, Any] = {
    "v": 1,
    "ts": 1_700_000_000_000,
    "graph": {
        "agents": ["Fraud", "Inventory", "Sales", "Support"],
        "edges": [
            ["Fraud", "Sales", 1.0, 40, 1_699_999_999_000],
            ["Inventory", "Sales", 0.9, 35, 1_699_999_999_500],
            ["Sales", "Fraud", 1.0, 41, 1_699_999_999_100],
            ["Sales", "Inventory", 0.75, 36, 1_699_999_999_200],
            ["Support", "Sales", 0.3, 4, None],
        ],
    },
    "roles": {"Fraud": "fraud", "Inventory": "inventory", "Sales": "sales"},
}


EDGES = {(s, t): w for s, t, w, _, _ in SNAPSHOT["graph"]["edges"]}


def svg_lines(text: str) -> list[ET.Element]:
    return list(ET.fromstring(text).iter(f"{SVG}line"))


NO_ID = "proposal_id missing, empty or longer than 200 characters"


def deep(levels: int) -> dict[str, Any]:
    content: dict[str, Any] = {}
    for _ in range(levels - 1):
        content = {"k": content}
    return content


ENV = ("MEMORY_SERVICE_URL", "MEMORY_SERVICE_PORT", "COGNITION_SERVICE_URL", "COGNITION_SERVICE_PORT")


def discovery_mesh(folder: Path, monkeypatch: pytest.MonkeyPatch) -> Mesh:
    """A mesh whose memory service is at 127.0.0.1:9001, with no service variable set."""
    for name in ENV:
        monkeypatch.delenv(name, raising=False)
    config = parse_config({"mesh": "t", "services": {"memory": {"host": "127.0.0.1", "port": 9001}}})
    return Mesh(config, folder / "mesh.yaml")


VALUE = b'{"v":1}'


OTHER_KEY = signing_key("another mesh key")


def joined(name: str) -> bytes:
    return Envelope(type=C.EVENT_JOINED, from_agent_id=name).encode()


def append(path: Path, *lines: str) -> None:
    with path.open("a", encoding="utf-8") as file:
        file.writelines(line + "\n" for line in lines)


CHAOS_AGENTS = ["Sales", "Support", "Inventory", "Fraud"]


def quiet_chaos_result(fault: dict[str, Any], agents: list[str], duration_s: float,
                       **extra: Any) -> dict[str, Any]:
    """A chaos run's result around one fault row, where nothing else happened: every probe
    handled, no ask, no proposal, status agreeing (`extra`: the rows' own sections)."""
    return {
        "embedded": True, "mesh": "chaos", "agents": agents, "duration_s": duration_s,
        "settings": {"rate": 200}, "faults": [fault],
        "probes": {"sent": 10, "produced": 10, "refused": 0, "unconfirmed": 0, "handled": 10, "lost": 0},
        "duplicates_handled": 0, "duplicates_recognised": 0, "dead_letters": 0, "demo_messages_in": 4,
        "proposals": {"opened": 0, "decided": 0, "opened_more_than_once": 0,
                      "decided_more_than_once": 0, "overdue": 0, "pending": 0},
        "status": {"samples": 5, "disagreements": 0, "failed": 0, "slowest_s": 0.1},
        "asks": {"agents": ["Sales"], "produced": 0, "refused": 0, "sent": 0, "answered": 0, "lost": 0,
                 "answered_twice": 0, "error_replies": 0, "p50_ms": None, "p99_ms": None},
        **extra,
    }


def agent_entry(name: str, state: str = "alive", mi: int = 0, role: str = "support",
                concurrency: int | None = 4, in_flight: int | None = 0,
                counters: dict[str, int] | None = None,
                lag: tuple[float, float, float] | None = None) -> dict[str, Any]:
    """One agent of a status frame (status.py `_agents`), as a replica of a group shows."""
    listed = state != "not running"
    return {"name": name, "role": role, "capabilities": [], "program": f"agent-{name}",
            "pid": 4200 + len(name) if listed else None, "host": "h" if listed else None,
            "state": state, "alive": state == "alive", "heartbeat_age_s": 1.0 if listed else None,
            "messages_in": mi, "messages_out": 0, "dead_letters": 0, "sent_to": mi, "backlog": 0,
            "concurrency": concurrency, "in_flight": in_flight, "running": in_flight, "asks_pending": 0,
            "loop_lag_ms": None if lag is None else dict(zip(("p50", "p99", "max"), lag, strict=True)),
            "asks": {"sent": (counters or {}).get("asks", 0), "timeouts": 0, "error_replies": 0,
                     "late_replies": 0, "expired_requests": 0, "cached_replies": 0,
                     "p50_ms": None, "p99_ms": None},
            "llm": None, "counters": counters if counters is not None else {"messages_in": mi}}


# Support runs three replicas; two of them talk with Sales, and one replica with another
GROUP_SNAPSHOT: dict[str, Any] = {
    "v": 1,
    "ts": 1_700_000_000_000,
    "graph": {
        "agents": ["Sales", "Support-1", "Support-2", "Support-3"],
        "edges": [
            ["Sales", "Support-1", 0.9, 10, 1_699_999_999_000],
            ["Sales", "Support-2", 0.6, 5, 1_699_999_999_800],
            ["Sales", "Support-3", 0.2, 0, None],
            ["Support-1", "Sales", 0.5, 4, 1_699_999_999_500],
            ["Support-2", "Sales", 0.7, 6, 1_699_999_999_200],
            ["Support-1", "Support-2", 0.5, 1, 1_699_999_999_900],
        ],
    },
    "roles": {"Sales": "sales", "Support-1": "support", "Support-2": "support", "Support-3": "support"},
}


def replica_group(name: str) -> str | None:
    """GROUP_SNAPSHOT's replicas -> their group (as MeshConfig.group_name)."""
    return "Support" if name.startswith("Support-") else None

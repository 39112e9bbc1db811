"""Replica groups in the metrics (pure): the `group` label of a replica's series, the
groups' counts, and the senders' routing state (docs/routing.md), one series per sender,
group and replica (PromQL sums or averages them as it likes; status combines them,
replica_view.py).

A replica's series keep `agent` (or `caller`, `owner`) = the concrete replica, `Support-2`,
and gain `group="Support"`; every other series stays as it was, so a mesh without groups
scrapes exactly as before.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from agentmesh_cli.replica_view import ROUTING_FRESH_S, replica_order

PREFIX = "agentmesh_"
AGENT_LABELS = ("agent", "caller", "owner")  # the labels that name an agent
# per replica of a sender's router: (family, snapshot key, scale, help)
ROUTING_GAUGES = (
    ("routing_outstanding", "outstanding", 1.0, "Requests the sender has in flight to the replica"),
    ("routing_ewma_seconds", "ewma_ms", 0.001, "The sender's peak-EWMA of the replica's round "
     "trips (its default until the first reply)"),
    ("routing_probability", "probability", 1.0, "physarum: the chance the sender sends a new "
     "conversation of the group to the replica"),
    ("routing_conductance", "conductance", 1.0, "physarum: the conductance of the sender's tube "
     "to the replica"),
)


def label_groups(metrics: list[Metric], group_of: Mapping[str, str]) -> list[Metric]:
    """Add `group` to every sample whose agent label names a replica (in place)."""
    if not group_of:
        return metrics
    for metric in metrics:
        for i, sample in enumerate(metric.samples):
            agent = next((sample.labels[k] for k in AGENT_LABELS if k in sample.labels), None)
            group = None if agent is None else group_of.get(agent)
            if group is not None:
                metric.samples[i] = sample._replace(labels={**sample.labels, "group": group})
    return metrics


def group_families(replicas: Mapping[str, tuple[int, int]], routing: Mapping[str, Mapping[str, Any]],
                   ts: float) -> Iterator[Metric]:
    """`replicas`: group -> (declared, running); `routing`: the senders' published state.
    Nothing for a mesh without groups; the routing families once a sender published."""
    if not replicas:
        return
    counts = GaugeMetricFamily(PREFIX + "replicas", "Replicas of the group: declared in mesh.yaml "
                               "(autoscaled: its min), running now (agentmesh up, scale, the "
                               "autoscaler)", labels=["group", "state"])
    for group, (declared, running) in sorted(replicas.items()):
        counts.add_metric([group, "declared"], declared)
        counts.add_metric([group, "running"], running)
    yield counts
    if not routing:
        return
    age = GaugeMetricFamily(PREFIX + "routing_state_age_seconds", "Age of the routing state the "
                            "sender published last (it publishes about once a second while it "
                            "routes; the gauges below leave out a state over 60 s old)", labels=["sender"])
    gauges = [GaugeMetricFamily(PREFIX + short, text, labels=["sender", "group", "replica"])
              for short, _, _, text in ROUTING_GAUGES]
    for sender, state in sorted(routing.items()):
        seconds = max(0.0, ts - float(state.get("ts", 0)) / 1000)
        age.add_metric([sender], seconds)
        if seconds > ROUTING_FRESH_S:
            continue
        for group, snapshot in sorted((state.get("groups") or {}).items()):
            if group not in replicas or not isinstance(snapshot, dict):
                continue
            for replica in sorted(snapshot, key=replica_order):
                row = snapshot[replica]
                for family, (_, key, scale, _) in zip(gauges, ROUTING_GAUGES, strict=True):
                    value = row.get(key) if isinstance(row, dict) else None
                    if isinstance(value, int | float) and not isinstance(value, bool):
                        family.add_metric([sender, group, replica], value * scale)
    yield age
    # probability and conductance only when a sender routes by physarum
    yield from (family for family, (short, *_) in zip(gauges, ROUTING_GAUGES, strict=True)
                if family.samples or short in ("routing_outstanding", "routing_ewma_seconds"))

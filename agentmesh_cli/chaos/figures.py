"""The figures of a finished chaos run, as one JSON-able dict (`RESULT_VERSION`).

Probes: sent = confirmed by the broker; handled = the agents' exact `handled_from:chaos`;
lost = sent and never handled. Each lost probe is also found by id (missing from its
agent's ledger) and charged to the fault injected last before it was produced, or at most
`CHARGE_AHEAD_S` after: a broker that dies takes the records it confirmed but nobody read yet.
Asks (chaos/asks.py): sent, answered, lost (never answered), answered twice (two replies
with different ids for one request), and the round trip.
The gateway fault's asks over HTTP (chaos/gateway.py): summed over its rows in `gateway`;
the llm fault's chats (chaos/llm.py) likewise in `llm`, the replicas fault's asks
(chaos/replicas.py) in `replicas`, the doze fault's sleepers (chaos/sleepers.py) in `doze`, the
inbox fault's agents served again (chaos/inbox.py) in `inbox`.
Proposals: opened and decided = proposal ids broadcast on the consensus topic, and how
many were broadcast more than once; Redis's records of the run's proposals must all be
decided, or pending and not yet past their `expires_at`.
"""

from __future__ import annotations

import bisect
import math
import statistics
import time
from typing import TYPE_CHECKING, Any

from agentmesh_cli import constants as C
from agentmesh_cli import doze
from agentmesh_cli.chaos.probes import handled_seqs
from agentmesh_cli.envelope import now_ms

if TYPE_CHECKING:
    from agentmesh_cli.chaos.runner import ChaosRun

RESULT_VERSION = 1
OVERDUE_GRACE_MS = 3000
CHARGE_AHEAD_S = 1.0  # a pending proposal this far past expires_at was never decided


def _delta(counters: dict[str, dict[str, int]], baseline: dict[str, dict[str, int]], owner: str,
           field: str) -> int:
    return counters.get(owner, {}).get(field, 0) - baseline.get(owner, {}).get(field, 0)


def summarise(run: ChaosRun, baseline: dict[str, dict[str, int]], unconfirmed: int) -> dict[str, Any]:
    store, probes, agents = run.ctx.store, run.probes, run.ctx.agents
    counters = store.all_counters()
    handled = run.handled(baseline)
    per_agent = {}
    for a in agents:
        per_agent[a] = {"sent": probes.sent[a], "handled": handled[a],
                        "lost": max(0, probes.sent[a] - handled[a]),
                        "handled_twice": _delta(counters, baseline, a, C.COUNTER_HANDLED_TWICE),
                        "duplicates": _delta(counters, baseline, a, C.COUNTER_DUPLICATES)}
    sent = sum(p["sent"] for p in per_agent.values())
    messages_in = sum(_delta(counters, baseline, a, C.COUNTER_IN) for a in agents)
    unattributed = _charge_lost(run)
    result = {
        "v": RESULT_VERSION,
        "mesh": run.mesh.config.mesh,
        "embedded": run.embedded,
        "started_ms": run.started_ms,
        "duration_s": round(time.monotonic() - run.started, 1),
        "settings": {k: getattr(run.settings, k) for k in (
            "rate", "pause", "faults", "rounds", "duration", "every", "seed", "timeout", "drain",
            "ask_rate")} | {"inbox_reader": run.mesh.config.kafka.inbox_reader},
        "agents": agents,
        "faults": [o.as_dict() for o in run.outcomes],
        "probes": {
            "produced": probes.produced,
            "refused": probes.refused,
            "held": probes.held,  # never produced: to a replica being scaled away (chaos/replicas.py)
            "unconfirmed": unconfirmed,
            "sent": sent,
            "handled": sum(handled.values()),
            "lost": sum(p["lost"] for p in per_agent.values()),
            "handled_unconfirmed": sum(max(0, p["handled"] - p["sent"]) for p in per_agent.values()),
            "lost_before_first_fault": unattributed,
            "per_agent": per_agent,
        },
        "duplicates_handled": sum(p["handled_twice"] for p in per_agent.values()),
        "duplicates_recognised": sum(p["duplicates"] for p in per_agent.values()),
        "messages_in": messages_in,
        "demo_messages_in": messages_in - sum(handled.values()),
        "dead_letters": sum(_delta(counters, baseline, owner, C.COUNTER_DEAD) for owner in counters),
        "proposals": _proposals(run),
        "asks": run.asks.figures(),
        "gateway": gateway_figures([o.asks for o in run.outcomes if o.asks is not None]),
        "llm": llm_figures([o.chats for o in run.outcomes if o.chats is not None]),
        "replicas": replicas_figures([o.replicas for o in run.outcomes if o.replicas is not None]),
        "doze": doze_figures([o.doze for o in run.outcomes if o.doze is not None],
                             {name: sum(_delta(counters, baseline, a, name) for a in agents)
                              for name in DOZE_COUNTERS}),
        "inbox": inbox_figures([o.inbox for o in run.outcomes if o.inbox is not None]),
        "status": {"samples": run.truth.samples, "disagreements": run.truth.disagreements,
                   "failed": run.truth.failures, "slowest_s": round(run.truth.slowest_s, 2),
                   "examples": run.truth.examples},
    }
    result["ok"] = judge(result)
    return result


def judge(result: dict[str, Any]) -> bool:
    """0 lost, 0 handled twice, no proposal opened or decided more than once, none left
    undecided past its time, every ask answered, none twice (through the gateway too, every
    chat of the llm fault and every ask to the replica group), every sleeper of the doze
    fault woken, every row of the inbox fault ok (every agent served again, no agent down with
    its reader)."""
    p, asks, gateway, llm = result["proposals"], result["asks"], result.get("gateway"), result.get("llm")
    replicas, dozing, inbox = result.get("replicas"), result.get("doze"), result.get("inbox")
    return (result["probes"]["lost"] == 0 and result["duplicates_handled"] == 0
            and asks["lost"] == 0 and asks["answered_twice"] == 0
            and (gateway is None or gateway["ok"]) and (llm is None or llm["ok"])
            and (replicas is None or replicas["ok"]) and (dozing is None or dozing["ok"])
            and (inbox is None or inbox["ok"])
            and p["decided_more_than_once"] == 0 and p["opened_more_than_once"] == 0
            and p["overdue"] == 0)


GATEWAY_SUMMED = ("sent", "answered", "retried", "retries", "lost", "failed", "handled", "handled_twice",
                  "unrecorded")


def gateway_figures(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The gateway faults' asks summed (None: no gateway fault ran); ok when every row is."""
    if not rows:
        return None
    summed: dict[str, Any] = {name: sum(r[name] for r in rows) for name in GATEWAY_SUMMED}
    summed["ok"] = all(r["ok"] for r in rows)
    return summed


LLM_SUMMED = ("sent", "answered", "retried", "retries", "lost", "failed", "answered_twice", "without_tool",
              "handled", "handled_twice", "tool_requests", "tool_handled_twice", "tool_asked_twice",
              "tool_cached_replies", "restreamed")


def llm_figures(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The llm faults' chats summed (None: no llm fault ran), with their kills and how many
    landed mid-answer; ok when every row is."""
    if not rows:
        return None
    summed: dict[str, Any] = {name: sum(r[name] for r in rows) for name in LLM_SUMMED}
    kills = [k for r in rows for k in r["kills"]]
    summed["kills"] = len(kills)
    summed["kills_mid_answer"] = sum(1 for k in kills if k["streaming"] > 0)
    summed["ok"] = all(r["ok"] for r in rows)
    return summed


REPLICAS_SUMMED = ("sent", "answered", "retried", "retries", "lost", "failed", "handled", "handled_twice",
                   "unrecorded", "answered_twice", "asked_twice", "asked_handled_twice", "duplicates",
                   "cached_replies", "moved")


def replicas_figures(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The replicas faults' asks summed (None: no replicas fault ran), with their kills, what
    the scale-downs handed over and whether every scale went through; ok when every row is."""
    if not rows:
        return None
    summed: dict[str, Any] = {name: sum(r[name] for r in rows) for name in REPLICAS_SUMMED}
    summed["kills"] = sum(len(r["kills"]) for r in rows)
    summed["handed_over"] = sum(r["scale"]["handed_over"] for r in rows)
    summed["scaled"] = all(r["scale"]["done"] for r in rows)
    summed["ok"] = all(r["ok"] for r in rows)
    return summed


DOZE_COUNTERS = (doze.COUNTER_SLEEPS, doze.COUNTER_RUNG, doze.COUNTER_PROBE_FOUND, doze.COUNTER_DEAF)


def doze_figures(rows: list[dict[str, Any]], counters: dict[str, int]) -> dict[str, Any] | None:
    """The doze faults' sleepers summed (None: no doze fault ran), with the agents' doze
    counters over the whole run (`counters`: how every agent fell asleep and woke); ok
    when every row is."""
    if not rows:
        return None
    wakes = sorted(ms for r in rows for ms in r["wake_ms"].values())
    return {
        "rows": len(rows), "woken": len(wakes), "not_woken": sum(len(r["not_woken"]) for r in rows),
        "wake_p50_ms": statistics.median(wakes) if wakes else None,
        "wake_max_ms": wakes[-1] if wakes else None,
        "handled_twice": sum(r["handled_twice"] or 0 for r in rows),
        "counters": counters, "ok": all(r["ok"] for r in rows),
    }


def inbox_figures(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The inbox faults' rows summed (None: no inbox fault ran): the agents served again after
    each kill and how long it took, the asks around the outages, what was handled twice, and
    the restarts supervisord logged (None: unknown); ok when every row is."""
    if not rows:
        return None
    served = sorted(ms for r in rows for ms in r["served_ms"].values())
    restarts = [r["restarts"] for r in rows]
    again = [r["agents_restarted"] for r in rows]
    return {
        "kills": len(rows), "served": len(served), "not_served": sum(len(r["not_served"]) for r in rows),
        "served_p50_ms": statistics.median(served) if served else None,
        "served_max_ms": served[-1] if served else None,
        "back_max_s": max((r["back_s"] for r in rows if r["back_s"] is not None), default=None),
        **{f"asks_{name}": sum(r["asks"][name] for r in rows)
           for name in ("sent", "answered", "answered_twice")},
        "handled_twice": sum(r["handled_twice"] or 0 for r in rows),
        "duplicates": sum(r["duplicates"] or 0 for r in rows),
        "restarts": None if None in restarts else sum(r or 0 for r in restarts),
        "agents_restarted": None if None in again else sum(len(a or []) for a in again),
        "ok": all(r["ok"] for r in rows),
    }


def _charge_lost(run: ChaosRun) -> int:
    """Charge each lost probe (by id, from the agents' ledgers) to the fault injected last
    before it was produced (or just after); return those lost before any fault."""
    probes, outcomes = run.probes, sorted(run.outcomes, key=lambda o: o.started)
    starts = [o.started for o in outcomes]
    window = run.mesh.config.recovery.dedup_window
    before_faults = 0
    n = len(probes.agents)
    for i, agent in enumerate(probes.agents):
        seqs, full = handled_seqs(run.ctx.store, agent, probes, window)
        oldest = min(seqs, default=0) if full else 0
        for seq in range(i, probes.produced, n):
            if not probes.confirmed[seq] or seq in seqs or seq < oldest:
                continue
            at = probes.produced_at[seq]
            where = bisect.bisect_right(starts, at + CHARGE_AHEAD_S) - 1 if not math.isnan(at) else -1
            if where < 0:
                before_faults += 1
            else:
                outcomes[where].lost += 1
    return before_faults


def _proposals(run: ChaosRun) -> dict[str, Any]:
    opened, decided = run.tally.opened, run.tally.decided
    records = [p for p in run.ctx.store.recent_proposals(1000) if p.get("created_at", 0) >= run.started_ms]
    now = now_ms()
    pending = [p for p in records if p.get("status") == "pending"]
    overdue = [p["id"] for p in pending if now > p.get("expires_at", now) + OVERDUE_GRACE_MS]
    done = {p["id"] for p in records if p.get("status") != "pending"}
    return {
        "opened": len(opened),
        "decided": len(decided),
        "opened_more_than_once": sum(1 for n in opened.values() if n > 1),
        "decided_more_than_once": sum(1 for n in decided.values() if n > 1),
        "in_redis": len(records),
        "pending": len(pending),
        "overdue": len(overdue),
        "overdue_ids": overdue[:10],
        "decided_not_broadcast": len(done - set(decided)),  # e.g. broadcast to a broker that then restarted
        "topic_rereads": run.tally.rereads,
        "unreadable_records": run.tally.unreadable,
    }

"""An agent's load and its asks, as `status` and the metrics exporter show them (pure).

Load is what the agent's registry record says as of its last heartbeat (its heartbeat
thread writes it every `heartbeat.interval`, agent/runtime.py): `concurrency`, `in_flight`
(messages read and not finished: queued or running), `running` (handlers running),
`asks_pending` (its asks waiting for a reply) and `loop_lag_ms` ({p50, p99, max} of its
newest lag samples). A record without them (an agent of an older runtime) gives None.

Asks are counters of the agent's own hash, since the mesh's Redis was new: as an asker
(sent, timeouts, error replies, late replies, and the round trip's `ask_ms` histogram) and
as an answerer (requests read after their deadline, repeated requests answered from the
reply cache).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from agentmesh_cli import constants as C
from agentmesh_cli.metrics.histogram import ASK_BUCKETS, LLM_BUCKETS, quantile

LOAD_COUNTS = ("concurrency", "in_flight", "running", "asks_pending")
LAG_KEYS = ("p50", "p99", "max")
# the keys of status's `asks` object -> the agent's counters
ASK_COUNTERS = {
    "sent": C.COUNTER_ASKS,
    "timeouts": C.COUNTER_ASK_TIMEOUTS,
    "error_replies": C.COUNTER_ERROR_REPLIES,
    "late_replies": C.COUNTER_LATE_REPLIES,
    "expired_requests": C.COUNTER_EXPIRED,
    "cached_replies": C.COUNTER_CACHED_REPLIES,
}


def load(record: Mapping[str, Any] | None) -> dict[str, Any]:
    """{concurrency, in_flight, running, asks_pending, loop_lag_ms} of a registry record
    (None: the agent is not in the registry), each None where the record has no such value."""
    rec = record or {}
    out: dict[str, Any] = {key: _count(rec.get(key)) for key in LOAD_COUNTS}
    out["loop_lag_ms"] = loop_lag(rec)
    return out


def loop_lag(record: Mapping[str, Any]) -> dict[str, float] | None:
    """The record's {p50, p99, max} loop lag in ms, or None when it has none."""
    lag = record.get("loop_lag_ms")
    if not isinstance(lag, Mapping) or not all(_is_number(lag.get(key)) for key in LAG_KEYS):
        return None
    return {key: float(lag[key]) for key in LAG_KEYS}


def asks(counters: Mapping[str, int]) -> dict[str, Any]:
    """The agent's ask counters, and the p50 and p99 of its ask round trips in ms, estimated
    from the `ask_ms` buckets: asks that got a reply (an error reply too), not those that
    timed out; None before the first reply."""
    out: dict[str, Any] = {key: counters.get(name, 0) for key, name in ASK_COUNTERS.items()}
    buckets, _ = ASK_BUCKETS.read(counters, C.COUNTER_ASK_MS)
    for key, q in (("p50_ms", 0.5), ("p99_ms", 0.99)):
        seconds = quantile(buckets, q)
        out[key] = None if seconds is None else round(seconds * 1000, 2)
    return out


def llm(counters: Mapping[str, int]) -> dict[str, Any] | None:
    """An llm agent's model use (llm/role.py): calls, tokens in and out, tool calls, turns
    that ended in an error reply, and the p50, p99 and mean of a call's duration in ms
    (estimated from the `llm_ms` buckets). None for an agent that never called a model."""
    calls = counters.get(C.COUNTER_LLM_CALLS, 0)
    if not calls:
        return None
    buckets, total_s = LLM_BUCKETS.read(counters, C.COUNTER_LLM_MS)
    timed = buckets[-1][1]
    out: dict[str, Any] = {"calls": calls,
                           "tokens_in": counters.get(C.COUNTER_LLM_TOKENS_IN, 0),
                           "tokens_out": counters.get(C.COUNTER_LLM_TOKENS_OUT, 0),
                           "tool_calls": counters.get(C.COUNTER_LLM_TOOL_CALLS, 0),
                           "errors": counters.get(C.COUNTER_LLM_ERRORS, 0)}
    for key, q in (("p50_ms", 0.5), ("p99_ms", 0.99)):
        seconds = quantile(buckets, q)
        out[key] = None if seconds is None else round(seconds * 1000, 1)
    out["mean_ms"] = round(total_s * 1000 / timed, 1) if timed else None
    return out


def _count(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)

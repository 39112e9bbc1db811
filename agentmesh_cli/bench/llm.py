"""LLM scenario: what the built-in `llm` role (llm/role.py) adds to the calls it is made of,
beside those calls made directly, all in the same run against one scripted model server
(llm/scripted.py: no delay, a 20-word answer streamed one word a chunk, bench/llm_direct.py).

The mesh: `Asker` (bench/waiters.py, as `bench ask` runs it), `Concierge` (role `llm`, its
model the scripted server, its one tool `Inventory__check_stock`) and `Inventory` (the
built-in role), each its own process, on a throwaway broker and Valkey. The asker times
each `await ctx.ask` itself, one at a time; every ask is public in a conversation of its
run, as a gateway chat and the role's tool asks are (the streamed text goes out as delta
events, the replies are appended to the conversation's events). Each of `repeats` runs:

- direct SDK (floor): the bench calls the server with the openai SDK, streamed, replaying
  a request the role sent, `samples` times one at a time: the text answer, then the
  tool-calling round. The agents idle meanwhile: their CPU then is their idle share;
- ctx.ask (raw): the asker asks Inventory `check_stock` with the tool call's arguments;
- one round: the asker asks Concierge `chat`; its script answers in text at once;
- a tool round: the asker asks Concierge `chat`; its script calls the tool, then says the
  same text.

A process's CPU per ask or turn is its CPU over the phase (every thread) above its idle
share, over the asks. `overheads` puts the role against the floors. Figures are medians
over the runs.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from agentmesh_cli import constants as C
from agentmesh_cli.bench.agents import AgentsMesh, agents_mesh
from agentmesh_cli.bench.ask import ASKER, ROLES, Jobs
from agentmesh_cli.bench.infra import cpu_seconds, percentiles, ratio
from agentmesh_cli.bench.llm_direct import (
    MODEL,
    SCRIPT,
    TEXT_ASK,
    TOOL_ARGUMENTS,
    TOOL_ASK,
    direct_calls,
    steps_seen,
)
from agentmesh_cli.bench.roundtrip import WARMUP
from agentmesh_cli.errors import BenchError
from agentmesh_cli.llm.process import requests_seen, start_scripted


def forgotten_requests(base_url: str) -> list[dict[str, Any]]:
    """The model requests since the last call, then forgotten (the server's record grows)."""
    return requests_seen(base_url, forget=True)


LLM, INVENTORY = "Concierge", "Inventory"
IDLE_MIN_S = 2.0  # the agents' idle share is taken over the direct calls, padded to this long


@dataclass(frozen=True)
class Measured:
    """One run's figures that the overheads are made of (p50s in ms, CPU in us per call)."""

    sdk_p50_ms: float  # a direct SDK call answered in text
    sdk_tool_p50_ms: float  # a direct SDK call answered with the tool call
    ask_p50_ms: float  # a direct ctx.ask of Inventory, agent to agent
    round_p50_ms: float  # a chat of one model round
    tool_turn_p50_ms: float  # a chat of a tool round and a text round
    sdk_cpu_us: float  # the bench's CPU per direct call (text)
    sdk_tool_cpu_us: float  # the bench's CPU per direct call (tool call)
    asker_cpu_us: float  # the asker's CPU per direct ctx.ask
    answerer_cpu_us: float  # Inventory's CPU per ask answered
    round_cpu_us: float  # the llm agent's CPU per chat of one round
    tool_turn_cpu_us: float  # the llm agent's CPU per chat with a tool round


def overheads(m: Measured) -> dict[str, float]:
    """What the role adds (pure): a model round's latency beyond an ask and a direct call,
    its CPU beyond the SDK's own (and beyond what answering any ask costs an agent), and
    a tool round's latency and CPU beyond a direct ctx.ask plus a direct call."""
    tool_round_ms = m.tool_turn_p50_ms - m.round_p50_ms
    tool_round_cpu_us = m.tool_turn_cpu_us - m.round_cpu_us
    return {
        "round_added_ms": round(m.round_p50_ms - m.ask_p50_ms - m.sdk_p50_ms, 3),
        "round_cpu_added_us": round(m.round_cpu_us - m.sdk_cpu_us, 1),
        "round_cpu_beyond_answering_us": round(m.round_cpu_us - m.sdk_cpu_us - m.answerer_cpu_us, 1),
        "tool_round_ms": round(tool_round_ms, 3),
        "tool_round_added_ms": round(tool_round_ms - m.ask_p50_ms - m.sdk_tool_p50_ms, 3),
        "tool_round_cpu_us": round(tool_round_cpu_us, 1),
        "tool_round_cpu_added_us": round(tool_round_cpu_us - m.sdk_tool_cpu_us - m.asker_cpu_us, 1),
        "round_p50_to_ask_plus_sdk": ratio(m.round_p50_ms, m.ask_p50_ms + m.sdk_p50_ms),
        "round_cpu_to_sdk": ratio(m.round_cpu_us, m.sdk_cpu_us),
        "tool_round_to_ask_plus_sdk": ratio(tool_round_ms, m.ask_p50_ms + m.sdk_tool_p50_ms),
        "tool_round_cpu_to_ask_plus_sdk": ratio(tool_round_cpu_us, m.asker_cpu_us + m.sdk_tool_cpu_us),
    }


# the mesh and its phases ------------------------------------------------------------------
def _agents(base_url: str) -> list[dict[str, Any]]:
    llm = {"base_url": base_url, "model": MODEL, "tools": [f"{INVENTORY}:check_stock"],
           "max_tool_rounds": 2, "context_items": 0, "timeout": "10s"}
    return [{"name": ASKER, "role": f"{ROLES}:Asker"}, {"name": LLM, "role": C.ROLE_LLM, "llm": llm},
            {"name": INVENTORY, "role": "inventory"}]


def _chat(text: str) -> dict[str, Any]:
    return {"to": LLM, "type": "chat", "payload": {"text": text}}


def _role_requests(jobs: Jobs, agents: AgentsMesh, base_url: str) -> dict[str, dict[str, Any]]:
    """Warm the role up on both chats; the first request of each, as the role sent it."""
    bodies: dict[str, dict[str, Any]] = {}
    for scenario, text in (("text", TEXT_ASK), ("tool", TOOL_ASK)):
        result = jobs.run(in_flight=1, samples=WARMUP, **_chat(text))
        if result["failed"]:
            raise BenchError(f"{result['failed']} of {WARMUP} chats failed; see {agents.log(LLM)}")
        first = [r for r in forgotten_requests(base_url) if (r["scenario"], r["step"]) == (scenario, 0)]
        if not first:
            raise BenchError(f"the role sent no request of the {scenario!r} chat; see {agents.log(LLM)}")
        bodies[scenario] = first[0]["body"]
    return bodies


def _direct(base_url: str, bodies: dict[str, dict[str, Any]], samples: int, server_pid: int,
            pids: dict[str, int]) -> dict[str, Any]:
    """Both direct calls `samples` times; the agents' idle CPU shares meanwhile."""
    before, wall = {name: cpu_seconds(pid) for name, pid in pids.items()}, time.perf_counter()
    got: dict[str, Any] = {
        "sdk": asyncio.run(direct_calls(base_url, bodies["text"], samples, WARMUP, server_pid)),
        "sdk_tool": asyncio.run(direct_calls(base_url, bodies["tool"], samples, WARMUP, server_pid))}
    time.sleep(max(0.0, IDLE_MIN_S - (time.perf_counter() - wall)))
    elapsed = time.perf_counter() - wall
    got["idle"] = {name: round((cpu_seconds(pid) - before[name]) / elapsed, 4) for name, pid in pids.items()}
    forgotten_requests(base_url)  # forgotten
    return got


def _asks(jobs: Jobs, request: dict[str, Any], samples: int, pids: dict[str, int], idle: dict[str, float],
          server_pid: int, base_url: str) -> dict[str, Any]:
    """`samples` asks one at a time (after WARMUP); each process's CPU per ask above idle,
    the server's per model call, and the model requests each script step got."""
    jobs.run(in_flight=1, samples=WARMUP, **request)
    forgotten_requests(base_url)
    before, server = {name: cpu_seconds(pid) for name, pid in pids.items()}, cpu_seconds(server_pid)
    wall = time.perf_counter()
    result = jobs.run(in_flight=1, samples=samples, **request)
    elapsed = time.perf_counter() - wall
    used = {name: cpu_seconds(pid) - before[name] for name, pid in pids.items()}
    server = cpu_seconds(server_pid) - server
    records = forgotten_requests(base_url)
    seen = steps_seen(records)
    return {"latency": percentiles(result["latencies_ms"]), "failed": result["failed"], "seen": dict(seen),
            "cpu_us": {name: round(max(0.0, used[name] - idle[name] * elapsed) / samples * 1e6, 1)
                       for name in pids},
            "cpu_us_gross": {name: round(used[name] / samples * 1e6, 1) for name in pids},
            "server_cpu_us_per_call": round(server / max(1, len(records)) * 1e6, 1)}


def _expect(phase: dict[str, Any], steps: dict[str, int], agents: AgentsMesh, what: str) -> None:
    """BenchError unless the model got exactly the requests the phase stands for."""
    if phase["seen"] != steps:
        raise BenchError(f"{what}: the model server got {phase['seen'] or 'no requests'}, not {steps}; "
                         f"see {agents.log(LLM)}")


def _measured(got: dict[str, Any]) -> Measured:
    return Measured(
        sdk_p50_ms=got["sdk"]["p50_ms"], sdk_tool_p50_ms=got["sdk_tool"]["p50_ms"],
        ask_p50_ms=got["ask"]["latency"]["p50_ms"], round_p50_ms=got["round"]["latency"]["p50_ms"],
        tool_turn_p50_ms=got["tool"]["latency"]["p50_ms"],
        sdk_cpu_us=got["sdk"]["client_cpu_us_per_call"],
        sdk_tool_cpu_us=got["sdk_tool"]["client_cpu_us_per_call"],
        asker_cpu_us=got["ask"]["cpu_us"][ASKER], answerer_cpu_us=got["ask"]["cpu_us"][INVENTORY],
        round_cpu_us=got["round"]["cpu_us"][LLM], tool_turn_cpu_us=got["tool"]["cpu_us"][LLM])


def _run(jobs: Jobs, agents: AgentsMesh, bodies: dict[str, dict[str, Any]], samples: int,
         server_pid: int, base_url: str) -> dict[str, Any]:
    """One run: the direct calls, then the direct asks, the one-round and the tool-round chats."""
    pids = {name: agents.procs[name].pid for name in (ASKER, LLM, INVENTORY)}
    got = _direct(base_url, bodies, samples, server_pid, pids)
    conversation = f"bench-llm-{uuid.uuid4().hex[:12]}"
    args = (samples, pids, got["idle"], server_pid, base_url)
    got["ask"] = _asks(jobs, {"to": INVENTORY, "type": "check_stock", "payload": TOOL_ARGUMENTS,
                              "conversation": conversation}, *args)
    _expect(got["ask"], {}, agents, "the direct asks")
    got["round"] = _asks(jobs, {**_chat(TEXT_ASK), "conversation": conversation}, *args)
    _expect(got["round"], {"text/0": samples}, agents, "the one-round chats")
    got["tool"] = _asks(jobs, {**_chat(TOOL_ASK), "conversation": conversation}, *args)
    _expect(got["tool"], {"tool/0": samples, "tool/1": samples}, agents, "the tool-round chats")
    got["overheads"] = overheads(_measured(got))
    return got


def _measure(repeats: int, samples: int) -> list[dict[str, Any]]:
    """The server, then the mesh using it; `repeats` runs; everything stopped by pid after."""
    with tempfile.TemporaryDirectory(prefix="agentmesh-bench-llm-") as folder:
        server = start_scripted(SCRIPT, Path(folder))
        base_url = server.base_url
        try:
            with agents_mesh(_agents(base_url)) as agents:
                jobs = Jobs(agents)
                try:
                    bodies = _role_requests(jobs, agents, base_url)
                    return [_run(jobs, agents, bodies, samples, server.pid, base_url) for _ in range(repeats)]
                finally:
                    jobs.close()
        finally:
            server.stop()


# the result -------------------------------------------------------------------------------
def _median(values: list[float]) -> float:
    return round(statistics.median(values), 3)


def _summary(runs: list[dict[str, float]]) -> dict[str, float]:
    return {"p50_ms": _median([r["p50_ms"] for r in runs]), "p99_ms": _median([r["p99_ms"] for r in runs]),
            "max_ms": max(r["max_ms"] for r in runs), "mean_ms": _median([r["mean_ms"] for r in runs])}


def run(repeats: int = 3, samples: int = 200) -> dict[str, Any]:
    """The llm scenario, its direct SDK floor and its ctx.ask baseline, in the bench result
    shape (cli/bench.py)."""
    if repeats < 1 or samples < 1:
        raise BenchError("bench llm needs repeats >= 1 and samples >= 1")
    load_start = round(os.getloadavg()[0], 2)
    runs = _measure(repeats, samples)
    each = [asdict(_measured(r)) for r in runs]
    m = Measured(**{field.name: _median([e[field.name] for e in each]) for field in fields(Measured)})
    added = {name: _median([r["overheads"][name] for r in runs]) for name in runs[0]["overheads"]}
    figures: dict[str, Any] = {
        "one_round": _summary([r["round"]["latency"] for r in runs]),
        "one_round_p50_runs": [r["round"]["latency"]["p50_ms"] for r in runs],
        "tool_turn": _summary([r["tool"]["latency"] for r in runs]),
        "tool_turn_p50_runs": [r["tool"]["latency"]["p50_ms"] for r in runs],
        "llm_cpu_us_per_round": m.round_cpu_us,
        "llm_cpu_us_per_round_gross": _median([r["round"]["cpu_us_gross"][LLM] for r in runs]),
        "llm_cpu_us_per_tool_turn": m.tool_turn_cpu_us,
        "llm_idle_cpu_share": _median([r["idle"][LLM] for r in runs]),
        "server_cpu_us_per_role_call": _median([r["round"]["server_cpu_us_per_call"] for r in runs]),
        "chats_failed": sum(r["round"]["failed"] + r["tool"]["failed"] for r in runs),
        **{name: value for name, value in added.items() if "_to_" not in name},
        "round_added_ms_runs": [r["overheads"]["round_added_ms"] for r in runs],
        "tool_round_added_ms_runs": [r["overheads"]["tool_round_added_ms"] for r in runs],
    }
    raw = {"ctx_ask": _summary([r["ask"]["latency"] for r in runs]),
           "ctx_ask_p50_runs": [r["ask"]["latency"]["p50_ms"] for r in runs],
           "asker_cpu_us_per_ask": m.asker_cpu_us, "inventory_cpu_us_per_ask": m.answerer_cpu_us,
           "asks_failed": sum(r["ask"]["failed"] for r in runs)}
    floor = {"sdk_call": _summary([r["sdk"] for r in runs]),
             "sdk_call_p50_runs": [r["sdk"]["p50_ms"] for r in runs],
             "sdk_tool_call": _summary([r["sdk_tool"] for r in runs]),
             "sdk_client_cpu_us_per_call": m.sdk_cpu_us, "sdk_client_cpu_us_per_tool_call": m.sdk_tool_cpu_us,
             "server_cpu_us_per_call": _median([r["sdk"]["server_cpu_us_per_call"] for r in runs])}
    return {
        "scenario": "llm",
        "settings": {"repeats": repeats, "samples": samples, "warmup": WARMUP, "model": MODEL,
                     "asker": ASKER, "llm_agent": LLM, "tool_agent": INVENTORY},
        "figures": figures,
        "raw": raw,
        "floor": floor,
        "ratios": {name: value for name, value in added.items() if "_to_" in name},
        "targets": {},
        "notes": _notes(m, added, repeats, samples, load_start),
    }


def _notes(m: Measured, added: dict[str, float], repeats: int, samples: int, load_start: float) -> list[str]:
    return [
        f"load average {load_start} at start, {round(os.getloadavg()[0], 2)} at end (2-core machine: "
        "figures move with what else runs)",
        f"the role's overhead per model round: {added['round_added_ms']:+.2f} ms p50 over a ctx.ask and "
        f"a direct SDK call ({m.round_p50_ms:.2f} ms against {m.ask_p50_ms:.2f} + {m.sdk_p50_ms:.2f} ms); "
        f"CPU {added['round_cpu_added_us']:+.0f} us over the SDK's own ({m.round_cpu_us:.0f} against "
        f"{m.sdk_cpu_us:.0f} us, {added['round_cpu_to_sdk']:.2f}x), "
        f"{added['round_cpu_beyond_answering_us']:+.0f} us beyond that and what answering an ask costs "
        f"{INVENTORY} ({m.answerer_cpu_us:.0f} us)",
        f"a tool round adds {added['tool_round_ms']:.2f} ms p50 to a chat ({m.tool_turn_p50_ms:.2f} "
        f"against {m.round_p50_ms:.2f} ms): {added['tool_round_added_ms']:+.2f} ms over a direct ctx.ask "
        f"and a direct SDK call of the tool-calling round ({m.ask_p50_ms:.2f} + {m.sdk_tool_p50_ms:.2f} "
        f"ms); CPU {added['tool_round_cpu_us']:.0f} us, {added['tool_round_cpu_added_us']:+.0f} us over "
        f"the asker's ctx.ask and the SDK's call ({m.asker_cpu_us:.0f} + {m.sdk_tool_cpu_us:.0f} us)",
        f"median of {repeats} runs on one mesh; each: {samples} direct SDK calls of each kind, then "
        f"{samples} asks one at a time of each kind (after {WARMUP} not counted, all)",
        "direct SDK: openai.AsyncOpenAI from the bench's process, streamed, replaying a request the "
        "role sent (the same messages, tools and stream_options); its CPU is the bench process's "
        "(every thread)",
        f"ctx.ask: agent to agent, {ASKER} asking {INVENTORY} check_stock with the tool call's "
        "arguments; every ask is timed inside the asker around `await ctx.ask`, public in a "
        "conversation of the run",
        "agents' CPU per ask: their CPU over the phase (every thread, /proc) above their idle share, "
        f"taken while the direct calls ran (at least {IDLE_MIN_S:g} s); `_gross` keeps the idle part",
    ]

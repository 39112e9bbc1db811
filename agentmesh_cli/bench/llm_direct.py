"""The floor of `bench llm`: the scripted model server (agentmesh_cli.llm.scripted) as a
process of its own, and the same streamed Chat Completions call the llm role makes, made
directly with the `openai` SDK from the bench's process.

The direct call replays a request the role itself sent (taken from the server's
`GET /_requests` record: model, messages, tools, `stream`, `stream_options`), so the two
differ by the role and the mesh only, never by what is asked. It reads the stream as any
SDK user must (each chunk's text and tool-call parts), nothing more.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

import openai

from agentmesh_cli.bench.infra import cpu_seconds, percentiles
from agentmesh_cli.errors import BenchError
from agentmesh_cli.llm.model import NO_KEY

CALL_TIMEOUT_S = 10.0
MODEL = "scripted"
# the answer every text step streams: 20 words, one chunk each (the script sets no chunks)
ANSWER = ("The mesh has three agents on duty today, and each of them answers within a few "
          "milliseconds of being asked.")
TEXT_ASK = "What can the mesh do for me today?"
TOOL_ASK = "Is a laptop in stock?"
TOOL = "Inventory__check_stock"
TOOL_ARGUMENTS = {"items": {"laptop": 1}}
# one round: a text answer; a tool round: round 1 calls the tool, round 2 says the same
# answer. No delay, no chunk_delay: each stream is written at once (llm/scripted.py)
SCRIPT: dict[str, Any] = {"model": MODEL, "scenarios": [
    {"name": "tool", "when": TOOL_ASK, "steps": [
        {"tool_calls": [{"name": TOOL, "arguments": TOOL_ARGUMENTS}]},
        {"text": ANSWER}]},
    {"name": "text", "when": TEXT_ASK, "steps": [{"text": ANSWER}]},
]}


def steps_seen(records: list[dict[str, Any]]) -> Counter[str]:
    """How many requests reached each `scenario/step`, and each error status (`status NNN`)."""
    seen: Counter[str] = Counter()
    for record in records:
        seen[f"{record['scenario']}/{record['step']}"] += 1
        if record["status"] != 200:
            seen[f"status {record['status']}"] += 1
    return seen


async def _one(client: openai.AsyncOpenAI, body: dict[str, Any]) -> tuple[str, list[str]]:
    """One streamed call read to its end: its text and the names of the tools it called."""
    pieces: list[str] = []
    tools: list[str] = []
    stream = await client.chat.completions.create(**body)
    async with stream:
        async for chunk in stream:
            for choice in chunk.choices:
                if choice.delta.content:
                    pieces.append(choice.delta.content)
                for part in choice.delta.tool_calls or ():
                    if part.function is not None and part.function.name:
                        tools.append(part.function.name)
    return "".join(pieces), tools


async def direct_calls(base_url: str, body: dict[str, Any], samples: int, warmup: int,
                       server_pid: int) -> dict[str, Any]:
    """`warmup` calls not counted, then `samples` calls one at a time, each timed around
    the SDK's create and the stream's last chunk; the CPU this process (every thread) and
    the server used over those `samples` calls, per call."""
    client = openai.AsyncOpenAI(base_url=base_url, api_key=NO_KEY, timeout=CALL_TIMEOUT_S, max_retries=0)
    took: list[float] = []
    said: tuple[str, list[str]] = ("", [])
    try:
        for _ in range(warmup):
            said = await _one(client, body)
        own, server = time.process_time(), cpu_seconds(server_pid)
        for _ in range(samples):
            started = time.perf_counter()
            said = await _one(client, body)
            took.append((time.perf_counter() - started) * 1000)
        own, server = time.process_time() - own, cpu_seconds(server_pid) - server
    except openai.APIError as exc:
        raise BenchError(f"a direct call of the scripted model server failed: {exc}") from exc
    finally:
        await client.close()
    if said not in ((ANSWER, []), ("", [TOOL])):
        raise BenchError(f"the scripted model server answered {said!r}, not the bench's script")
    return {**percentiles(took), "client_cpu_us_per_call": round(own / samples * 1e6, 1),
            "server_cpu_us_per_call": round(server / samples * 1e6, 1)}

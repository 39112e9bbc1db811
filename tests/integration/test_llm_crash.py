"""The llm role when its process dies mid-answer, and its use of Memory and Cognition, for
real: the scripted model server, the gateway, agent processes, and (for the second test)
the Memory and Cognition services as processes, on the session broker and Valkey.

Kill -9 of the Concierge while it streams its answer: the message is read again after the
restart and the turn runs again. The round the first run finished (the tool call) is
replayed from Redis (ctx.once): the same tool call under the same request id, which
Inventory answers from its reply cache without handling it twice; the model is called
again only for the round the kill cut; the final answer goes out once under its derived
id, and the user's ask gets it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from agentmesh_cli import constants as C
from agentmesh_cli import convlog
from agentmesh_cli.embedded import stop
from agentmesh_cli.waiting import wait_until
from tests.helpers.commands import spawn_role
from tests.helpers.gateway import RunningGateway, running_gateway, sse_events, wait_ready, write_gateway_mesh
from tests.helpers.llm import ScriptedLlm

SCRIPT: dict[str, Any] = {"model": "scripted", "scenarios": [
    {"name": "cable", "when": "cable", "steps": [
        {"tool_calls": [{"name": "Inventory__check_stock", "arguments": {"items": {"cable": 1}}}]},
        {"text": "one two three four five six seven eight nine ten", "chunk_delay": 0.3}]},
    {"name": "remember", "when": "", "steps": [{"text": "Noted."}]},
]}


@pytest.fixture
def scripted() -> Iterator[ScriptedLlm]:
    with ScriptedLlm(SCRIPT) as llm:
        yield llm


def concierge(scripted: ScriptedLlm, context_items: int = 0) -> dict[str, Any]:
    return {"name": "Concierge", "role": "llm", "concurrency": 4,
            "llm": {"base_url": scripted.base_url, "model": "scripted", "tools": ["Inventory"],
                    "context_items": context_items, "timeout": "10s", "max_retries": 0}}


def restart(gateway: RunningGateway, folder: Path, name: str) -> subprocess.Popen[bytes]:
    """Start agent `name` again (what supervisord would do), ready; stopped by the test."""
    log = folder / f"{name}-again.log"
    proc = spawn_role("agent", "--name", name, "--config", str(gateway.mesh.config_file), log=log)
    gateway.agents[f"{name}-again"] = proc
    wait_ready(gateway.store, C.agent_program(name), proc, log)
    return proc


def test_a_kill_mid_answer_loses_nothing_and_asks_no_tool_twice(broker: str, valkey: str, tmp_path: Path,
                                                                 scripted: ScriptedLlm) -> None:
    mesh = write_gateway_mesh(tmp_path, broker, valkey, [concierge(scripted),
                                                         {"name": "Inventory", "role": "inventory"}])
    conversation = f"c-{uuid.uuid4().hex[:24]}"
    with running_gateway(mesh, tmp_path) as gateway:
        again: subprocess.Popen[bytes] | None = None
        try:
            result: dict[str, httpx.Response] = {}

            def ask() -> None:
                with gateway.client("alice", timeout=60) as client:
                    result["answer"] = client.post("/agents/Concierge/ask", json={
                        "type": "chat", "payload": {"text": "where is my cable?"},
                        "conversation": conversation, "timeout": 45})

            seen = []
            with gateway.client("alice") as client, \
                    client.stream("GET", f"/conversations/{conversation}/events") as stream:
                asker = threading.Thread(target=ask)
                asker.start()
                events = sse_events(stream)
                for event in events:  # until the answer streams: after Inventory's reply, a delta
                    seen.append(event)
                    answered = any(e.event == "message" and e.data["type"] == "stock_result" for e in seen)
                    if event.event == "delta" and answered:
                        break
                os.kill(gateway.agents["Concierge"].pid, signal.SIGKILL)  # mid-answer
                gateway.agents["Concierge"].wait(10)
                again = restart(gateway, tmp_path, "Concierge")
                for event in events:
                    seen.append(event)
                    if event.event == "message" and event.data["type"] == "answer":
                        break
                asker.join(60)
            answer = result["answer"]
            assert answer.status_code == 200, answer.text
            text = answer.json()["payload"]["text"]
            assert text == "one two three four five six seven eight nine ten"
            # the first run streamed part of it, the re-run all of it; the answer once
            deltas = [(e.data["offset"], e.data["text"]) for e in seen if e.event == "delta"]
            streamed = "".join(piece for _, piece in deltas)
            assert streamed.endswith(text) and len(streamed) > len(text)
            # the re-run streams from offset 0 again: a client that writes each piece at its
            # offset shows the answer, with no part of the first run's text left over
            shown = ""
            for offset, piece in deltas:
                shown = shown[:offset] + piece
            assert shown == text
            offsets = [offset for offset, _ in deltas]
            assert offsets[0] == 0 and offsets.count(0) == 2  # the first run, then the re-run
            messages = [(e.data["from"], e.data["type"]) for e in seen if e.event == "message"]
            assert messages == [("gateway", "chat"), ("Concierge", "check_stock"),
                                ("Inventory", "stock_result"), ("Concierge", "answer")]
            log = convlog.ConversationLog(gateway.store.redis, gateway.store.keys, 1000, 60)
            logged = [d["type"] for _, _, d in log.after(conversation, "0-0")]
            assert logged == ["chat", "check_stock", "stock_result", "answer"]  # each once
            # the re-run replayed the round the first run finished (kept by ctx.once) and
            # called the model again for the one the kill cut only; the tool handled once
            assert [r["step"] for r in scripted.requests() if r["scenario"] == "cable"] == [0, 1, 1]
            counted = wait_until(
                lambda: (c := gateway.store.counters("Concierge")).get(C.COUNTER_ONCE_REPLAYED, 0) >= 1 and c,
                20, "the replayed round counted")
            assert counted.get(C.COUNTER_HANDLED_TWICE, 0) == 0
            # the kept rounds are gone once the message is recorded as handled
            kept = gateway.store.keys.once("Concierge", "*")
            wait_until(lambda: not gateway.store.redis.keys(kept), 20, "the kept rounds deleted")
            inventory: dict[str, int] = wait_until(
                lambda: (c := gateway.store.counters("Inventory")).get(C.COUNTER_DUPLICATES, 0) >= 1 and c,
                20, "Inventory's duplicate counted")
            assert inventory[C.COUNTER_IN] == 1 and inventory.get(C.COUNTER_HANDLED_TWICE, 0) == 0
        finally:
            if again is not None:
                stop(again)


def test_the_context_comes_from_cognition_and_the_exchange_goes_to_memory(
        broker: str, valkey: str, tmp_path: Path, scripted: ScriptedLlm) -> None:
    mesh = write_gateway_mesh(tmp_path, broker, valkey, [concierge(scripted, context_items=5),
                                                         {"name": "Inventory", "role": "inventory"}])
    services = {name: spawn_role(name, "--config", str(mesh.config_file), log=tmp_path / f"{name}.log")
                for name in (C.PROGRAM_MEMORY, C.PROGRAM_COGNITION)}
    try:
        cfg = mesh.config.services
        urls = {C.PROGRAM_MEMORY: f"http://{cfg.memory.host}:{cfg.memory.port}",
                C.PROGRAM_COGNITION: f"http://{cfg.cognition.host}:{cfg.cognition.port}"}
        auth = {"Authorization": f"Bearer {mesh.credentials.service_token}"}
        with httpx.Client(timeout=5, headers=auth) as http:
            def healthy() -> bool:
                try:
                    return all(http.get(f"{url}/health").status_code == 200 for url in urls.values())
                except httpx.HTTPError:
                    return False

            wait_until(healthy, 60, "memory and cognition healthy")
            with running_gateway(mesh, tmp_path) as gateway, gateway.client("alice") as client:
                first = client.post("/agents/Concierge/ask", json={
                    "type": "chat", "payload": {"text": "my parcel goes to Lisbon"}, "timeout": 30})
                assert first.status_code == 200, first.text
                history = f"{urls[C.PROGRAM_MEMORY]}/resource/history/alice"
                items = wait_until(lambda: len(i := http.get(history).json()["items"]) >= 2 and i, 20,
                                   "the exchange in Memory")
                assert sorted(i["content"] for i in items) == ["Noted.", "my parcel goes to Lisbon"]
                second = client.post("/agents/Concierge/ask", json={
                    "type": "chat", "payload": {"text": "where does my parcel go?"}, "timeout": 30})
                assert second.status_code == 200, second.text
        asked = [r["body"]["messages"][0]["content"] for r in scripted.requests()
                 if r["scenario"] == "remember"]
        assert "my parcel goes to Lisbon" not in asked[0]  # nothing known of alice yet
        assert "The user is alice" in asked[1] and "- my parcel goes to Lisbon" in asked[1]
    finally:
        for proc in services.values():
            stop(proc)

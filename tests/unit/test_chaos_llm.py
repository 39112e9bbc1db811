"""`agentmesh chaos`, the llm fault's pure parts: its place in the fault plan, the Concierge
and its script, what the user saw (deltas, conversation logs), the verdict, the table."""

from __future__ import annotations

import io
from typing import Any

import pytest
from rich.console import Console

from agentmesh_cli.agent.roles import InventoryRole
from agentmesh_cli.chaos.chats import conversation_tally, heard_delta, mid_stream, restreamed, streaming_at
from agentmesh_cli.chaos.faults import (
    DOZE,
    GARBAGE,
    GATEWAY,
    KILL,
    LLM,
    RESTART,
    STALL,
    Fault,
    plan_faults,
    wants_llm,
)
from agentmesh_cli.chaos.figures import judge as judge_result
from agentmesh_cli.chaos.figures import llm_figures
from agentmesh_cli.chaos.llm import ROUNDS, SCRIPT, TOOL_RESULT, chats_note, judge_chats
from agentmesh_cli.chaos.mesh import mesh_data
from agentmesh_cli.chaos.report import chaos_table
from agentmesh_cli.config import parse_config
from agentmesh_cli.convlog import delta_message
from agentmesh_cli.errors import ConfigError
from agentmesh_cli.llm.script import build_answer, choose, parse_script
from agentmesh_cli.llm.tools import Call, offered, resolve
from tests.helpers.tables import CHAOS_AGENTS, quiet_chaos_result

AGENTS = ["Concierge", *CHAOS_AGENTS]
PROGRAMS = sorted(["kafka", "redis", "memory", "cognition", "metrics", "gateway", "topology-manager",
                   "consensus-manager", *(f"agent-{a}" for a in AGENTS)])


def test_all_kills_the_llm_agent_mid_answer_and_in_no_other_way() -> None:
    assert plan_faults("all", PROGRAMS, AGENTS, "Concierge") == [
        *(Fault(KILL, f"agent-{a}") for a in CHAOS_AGENTS),
        *(Fault(KILL, p) for p in ("topology-manager", "consensus-manager", "memory", "cognition",
                                   "metrics")),
        Fault(GATEWAY, "gateway"), Fault(LLM, "agent-Concierge"), Fault(KILL, "redis"), Fault(KILL, "kafka"),
        Fault(DOZE, "agent-Sales"), Fault(DOZE, "redis"), Fault(STALL, "Fraud"), Fault(GARBAGE),
        Fault(RESTART)]
    assert plan_faults("llm,agent-Concierge", PROGRAMS, AGENTS, "Concierge") == [
        Fault(LLM, "agent-Concierge"), Fault(KILL, "agent-Concierge")]
    assert Fault(KILL, "agent-Concierge") in plan_faults("agents", PROGRAMS, AGENTS, "Concierge")
    assert Fault(LLM, "agent-Concierge").label == "kill -9 agent-Concierge mid-answer (chats over HTTP)"


def test_the_llm_fault_needs_the_embedded_llm_agent_and_the_gateway() -> None:
    # --config: the run does not script the mesh's model, so there is no llm agent to judge
    assert LLM not in {f.kind for f in plan_faults("all", PROGRAMS, AGENTS)}
    with pytest.raises(ConfigError, match="llm: runs on the embedded mesh only"):
        plan_faults("llm", PROGRAMS, AGENTS)
    without_gateway = [p for p in PROGRAMS if p != "gateway"]
    assert LLM not in {f.kind for f in plan_faults("all", without_gateway, AGENTS, "Concierge")}
    with pytest.raises(ConfigError, match="llm: the chats go through the gateway"):
        plan_faults("llm", without_gateway, AGENTS, "Concierge")


@pytest.mark.parametrize(("spec", "wanted"), [
    ("llm", True), ("all", True), ("agents, llm", True), ("agents", False), ("gateway,restart", False),
    ("llms", False), ("", False)])
def test_which_faults_bring_the_llm_agent(spec: str, wanted: bool) -> None:
    assert wants_llm(spec) is wanted


def test_the_chaos_mesh_runs_the_concierge_only_with_a_model() -> None:
    assert [a["name"] for a in mesh_data(4)["agents"]] == CHAOS_AGENTS
    config = parse_config(mesh_data(4, "http://127.0.0.1:9/v1"), "chaos mesh")
    assert [a.name for a in config.agents] == AGENTS  # the last agent is still the one `stall` stops
    concierge = config.agents[0]
    assert (concierge.role, concierge.concurrency) == ("llm", 4)
    settings = config.llm_settings(concierge)
    assert (settings.base_url, settings.model, settings.tools) == ("http://127.0.0.1:9/v1", "scripted",
                                                                   ("Inventory",))
    assert (settings.timeout, settings.max_retries, settings.context_items) == (5.0, 1, 0)


def test_the_script_calls_the_tool_the_concierge_is_offered_and_answers_with_its_result() -> None:
    script = parse_script(SCRIPT, "chaos")
    schemas = {type_: model.model_json_schema() for type_, model in InventoryRole.accepts.items()}
    tools, notes = offered(["Inventory"], {"Inventory": schemas})
    messages: list[dict[str, Any]] = [{"role": "system", "content": "be brief"},
                                      {"role": "user", "content": "chaos chat 7: are the cables in stock?"}]
    first = choose(script, messages)
    assert first is not None and notes == []
    call = build_answer(first, messages).tool_calls[0]
    tool, arguments = resolve(Call(call.id, call.name, call.arguments), tools)
    assert (tool.agent, tool.type, tool.mismatch(arguments)) == ("Inventory", "check_stock", None)
    messages += [{"role": "assistant", "content": None, "tool_calls": [{"id": call.id}]},
                 {"role": "tool", "tool_call_id": call.id, "content": '{"order_id":null,"approved":true}'}]
    second = choose(script, messages)
    assert second is not None and second.step.chunk_delay * (second.step.chunks or 0) == pytest.approx(1.0)
    text = build_answer(second, messages).content
    assert text == 'In stock: {"order_id":null,"approved":true}. Thank you for asking the concierge.'
    assert TOOL_RESULT in text and ROUNDS == 2


@pytest.mark.parametrize(("deltas", "now", "streaming"), [
    ([(10.0, "In"), (10.5, " st")], 10.6, 1),  # 0.6 s into its text, a piece 0.1 s ago
    ([(10.5, "In")], 10.6, 0),  # only just begun
    ([(9.0, "In"), (9.9, " st")], 10.6, 0),  # done streaming (its answer is on its way)
    ([], 10.6, 0),
])
def test_mid_stream(deltas: list[tuple[float, str]], now: float, streaming: int) -> None:
    assert mid_stream({"r1": deltas, "r2": []}, now) == streaming


@pytest.mark.parametrize(("kill", "caught"), [(0.5, 0), (2.0, 1), (3.5, 1), (5.0, 0)])
def test_chats_caught_mid_answer(kill: float, caught: int) -> None:
    streams = {"a": [(1.0, "In"), (2.2, " st")], "b": [(3.0, "In")], "c": []}  # a: killed between pieces
    answered = {"a": 2.5, "b": 4.0, "c": 2.6, "d": 2.7}  # d streamed nothing that was heard
    assert streaming_at(kill, streams, answered) == caught


def test_streams_started_over() -> None:
    answers = {"a": "In stock", "b": "In stock", "c": "In stock"}
    streams = {"a": [(0.0, "In st"), (0.1, "ock")],
               "b": [(0.0, "In st"), (2.0, "In st"), (2.1, "ock")]}  # killed after "In st", run again
    assert restreamed(streams, answers) == 1


REQUEST = ("1-0", "message", {"id": "r1", "from": "gateway", "to": "Concierge", "type": "chat"})
TOOL_ASK = ("2-0", "message", {"id": "t1", "from": "Concierge", "to": "Inventory", "type": "check_stock"})
TOOL_REPLY = ("3-0", "message", {"id": "s1", "from": "Inventory", "to": "Concierge", "type": "stock_result",
                                 "in_reply_to": "t1"})
ANSWER = ("4-0", "message", {"id": "a1", "from": "Concierge", "to": "gateway", "type": "answer",
                             "in_reply_to": "r1"})


@pytest.mark.parametrize(("events", "tally"), [
    ([REQUEST, TOOL_ASK, TOOL_REPLY, ANSWER], (1, 1)),
    ([REQUEST, TOOL_ASK, TOOL_REPLY, ANSWER, ANSWER], (1, 1)),  # the same reply again: one
    ([REQUEST, TOOL_ASK, TOOL_REPLY, ANSWER, ("5-0", "message", {**ANSWER[2], "id": "a2"})], (2, 1)),
    ([REQUEST, TOOL_ASK, ("5-0", "message", {**TOOL_ASK[2], "id": "t2"}), ANSWER], (1, 2)),
    ([REQUEST, ("2-0", "gone", {"from": "Concierge"}),
      ("3-0", "message", {**ANSWER[2], "in_reply_to": "r0"})], (0, 0)),  # not a message; not its reply
])
def test_conversation_tally(events: list[tuple[str, str, Any]], tally: tuple[int, int]) -> None:
    assert conversation_tally(events, "r1", "Concierge") == tally


@pytest.mark.parametrize(("raw", "heard"), [
    (delta_message("c-1", "Concierge", "In st", "r1"), ("r1", "In st")),
    (delta_message("c-1", "Concierge", "In st", "r1").decode(), ("r1", "In st")),
    (delta_message("c-1", "Sales", "In st", "r1"), None),
    (delta_message("c-1", "Concierge", "In st", None), None),
    (b"c-1 1700000000000-0", None),  # an append's notice
    (b"{not json", None),
    (42, None),
], ids=["bytes", "str", "other-sender", "no-request", "append-notice", "not-json", "not-text"])
def test_heard_delta(raw: object, heard: tuple[str, str] | None) -> None:
    assert heard_delta(raw, "Concierge") == heard


KILLS = [{"in_flight": 3, "streaming": 2, "detect_s": 0.2, "recover_s": 3.1},
         {"in_flight": 5, "streaming": 4, "detect_s": 0.3, "recover_s": 4.5}]
CLIENT = {"sent": 10, "answered": 10, "retried": 1, "retries": 2, "retry_causes": {"HTTP 504": 2},
          "lost": 0, "failed": 0, "kills": KILLS, "restreamed": 6, "model_calls": 26}
CONCIERGE = {"handled": 10, "handled_twice": 0}
TOOL = {"handled": 10, "handled_twice": 0, "duplicates": 6, "cached_replies": 6}
LOGS = {"answered_twice": 0, "tool_asked_twice": 0, "without_tool": 0}


@pytest.mark.parametrize(("client", "concierge", "tool", "logs", "unrecorded", "ok"), [
    ({}, {}, {}, {}, 0, True),  # 6 streams started over: the user saw text twice, nothing was done twice
    ({}, {"handled": 11}, {}, {}, 0, False),  # more chats handled than asked
    ({}, {"handled": 9}, {}, {}, 0, False),  # answered, never recorded as handled
    ({}, {"handled_twice": 1}, {}, {}, 0, False),  # an id the ledger already held
    ({}, {}, {}, {}, 1, False),  # answered, its id not in the Concierge's ledger
    ({}, {}, {"handled": 11}, {}, 0, False),  # a re-run's tool ask handled as a new request
    ({}, {}, {"handled": 9}, {}, 0, False),  # a tool request never recorded as handled
    ({}, {}, {"handled_twice": 1}, {}, 0, False),
    ({}, {}, {}, {"answered_twice": 1}, 0, False),  # two replies with different ids
    ({}, {}, {}, {"tool_asked_twice": 1}, 0, False),  # the tool asked under a new id
    ({}, {}, {}, {"without_tool": 1}, 0, False),  # the tool's answer never reached the model
    ({"answered": 9, "lost": 1}, {"handled": 9}, {"handled": 9}, {}, 0, False),
    ({"answered": 9, "failed": 1}, {"handled": 9}, {"handled": 9}, {}, 0, False),
])
def test_llm_verdict(client: dict[str, Any], concierge: dict[str, int], tool: dict[str, int],
                     logs: dict[str, int], unrecorded: int, ok: bool) -> None:
    figures = judge_chats({**CLIENT, **client}, {**CONCIERGE, **concierge}, {**TOOL, **tool},
                          {**LOGS, **logs}, unrecorded)
    assert figures["ok"] is ok
    assert [figures[k] for k in ("tool_duplicates", "tool_cached_replies", "restreamed", "kills")] == \
        [6, 6, 6, KILLS]


def test_llm_note_and_sums() -> None:
    row = judge_chats(CLIENT, CONCIERGE, TOOL, LOGS, 0)
    assert chats_note(row) == (
        "2 kills, 2 and 4 chats streaming (3 and 5 in flight); 10 chats over HTTP: 10 answered, "
        "1 retried (2 retries: 2 HTTP 504), 0 lost, 0 failed, 0 answered twice, 0 without the tool's "
        "result; 10 handled by Concierge, 0 twice; 10 tool requests handled by Inventory, 0 twice, "
        "0 asked under a new id, 6 answered again from its reply cache; 6 streams started over; "
        "26 model calls, 6 of them rounds run again")
    assert chats_note({**row, "model_calls": None}).endswith("6 streams started over")
    bad = judge_chats({**CLIENT, "answered": 9, "lost": 1, "kills": KILLS[:1]}, {**CONCIERGE, "handled": 9},
                      {**TOOL, "handled": 9}, LOGS, 0)
    assert llm_figures([]) is None
    assert llm_figures([row, bad]) == {
        "sent": 20, "answered": 19, "retried": 2, "retries": 4, "lost": 1, "failed": 0, "answered_twice": 0,
        "without_tool": 0, "handled": 19, "handled_twice": 0, "tool_requests": 19, "tool_handled_twice": 0,
        "tool_asked_twice": 0, "tool_cached_replies": 12, "restreamed": 12, "kills": 3,
        "kills_mid_answer": 3, "ok": False}


def test_llm_row_and_lines_in_the_table_and_the_verdict() -> None:
    row = judge_chats(CLIENT, CONCIERGE, TOOL, LOGS, 0)
    fault = {"fault": "kill -9 agent-Concierge mid-answer (chats over HTTP)", "phase": "sequence",
             "detect_s": 0.3, "recover_s": 4.5, "lost": 0, "note": chats_note(row),
             "recovered_by": "new pid ready", "asks": None, "chats": row}
    result = quiet_chaos_result(fault, AGENTS, 30.0, gateway=None, llm=llm_figures([row]))
    result["ok"] = judge_result(result)
    assert result["ok"]
    text = rendered(result)
    assert "kill -9 agent-Concierge mid-answer (chats over HTTP)" in text
    assert "ok: 2 kills, 2 and 4 chats streaming (3 and 5 in flight)" in text
    assert "llm chats sent (HTTP)" in text and "2 kills of the llm agent, 2 while a chat streamed" in text
    assert "0 failed, 0 without the tool's result, 6 streamed again from the start" in text
    assert "must be 0 (10 handled, 6 asked again and answered from the reply cache): ok" in text
    bad = judge_chats(CLIENT, CONCIERGE, {**TOOL, "handled": 11}, LOGS, 0)
    result = {**result, "faults": [{**fault, "chats": bad}], "llm": llm_figures([bad])}
    result["ok"] = judge_result(result)
    assert not result["ok"]
    assert "FAILED: 2 kills" in rendered(result)


def rendered(result: dict[str, Any]) -> str:
    out = io.StringIO()
    Console(file=out, width=300, color_system=None).print(chaos_table(result))
    return out.getvalue()

"""The llm role's pure cores: its settings (config_llm.py) and its tools (llm/tools.py)."""

from __future__ import annotations

import pytest

from agentmesh_cli.config import parse_config
from agentmesh_cli.config_llm import DEFAULT_MAX_TOOL_ROUNDS, DEFAULT_SYSTEM, tool_ref
from agentmesh_cli.errors import (
    AskTimeout,
    ConfigError,
    RemoteError,
    ToolCallInvalid,
    ToolNotAllowed,
    UnknownAgent,
)
from agentmesh_cli.llm.tools import ANY_OBJECT, Call, ask_key, error_text, offered, resolve, result_text

STOCK = {"type": "object", "title": "CheckStock", "description": "Is there stock?",
         "properties": {"items": {"type": "object", "additionalProperties": {"type": "integer"}}},
         "required": ["items"]}
ACCEPTS = {"Inventory": {"check_stock": STOCK, "reserve": {"type": "object"}},
           "Support": {"ticket": {"type": "object", "title": "Ticket"}}}


def mesh(llm: dict | None = None, concierge: dict | None = None) -> dict:
    agents = [{"name": "Inventory", "role": "inventory"}, {"name": "Support", "role": "support"},
              {"name": "Refunds", "role": "support"},
              {"name": "Concierge", "role": "llm", **({"llm": concierge} if concierge else {})}]
    return {"mesh": "m", "agents": agents, **({"llm": llm} if llm is not None else {})}


@pytest.mark.parametrize(("ref", "parsed"), [
    ("Inventory", ("Inventory", None)),
    ("Support:ticket", ("Support", "ticket")),
    ("a.b-c:x.y", ("a.b-c", "x.y")),
])
def test_tool_refs(ref: str, parsed: tuple[str, str | None]) -> None:
    assert tool_ref(ref) == parsed


def test_an_agent_s_keys_win_over_the_section_s_over_the_defaults() -> None:
    config = parse_config(mesh({"model": "m1", "base_url": "http://127.0.0.1:1/v1", "temperature": 0.5,
                                "tools": ["Inventory"]},
                               {"model": "m2", "tools": ["Support:ticket"], "timeout": "5s"}))
    settings = config.llm_settings(config.agents[3])
    assert (settings.model, settings.base_url, settings.temperature) == ("m2", "http://127.0.0.1:1/v1", 0.5)
    assert settings.tools == ("Support:ticket",)
    assert (settings.timeout, settings.max_tool_rounds) == (5.0, DEFAULT_MAX_TOOL_ROUNDS)
    assert settings.system == DEFAULT_SYSTEM.replace("{name}", "Concierge").replace("{mesh}", "m")
    assert settings.api_key is None


@pytest.mark.parametrize(("data", "message"), [
    (mesh(), "agent 'Concierge' (role llm) needs a model"),
    (mesh({"model": "x", "tools": ["Nobody"]}), "'Nobody' names no agent of mesh.yaml"),
    (mesh({"model": "x"}, {"tools": ["Concierge"]}), "Concierge cannot be its own tool"),
    (mesh({"model": "x", "tools": ["bad name"]}), "is neither an agent name nor 'agent:type'"),
    (mesh({"model": "x", "base_url": "127.0.0.1:8080"}), "is not an http(s) URL"),
    (mesh({"model": "x", "temperature": 3}), "llm.temperature"),
    (mesh({"model": "x", "unknown": 1}), "llm.unknown"),
])
def test_bad_llm_settings_are_refused(data: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=None) as caught:
        parse_config(data)
    assert message in str(caught.value)


def test_the_allowlist_offers_what_it_names_and_nothing_else() -> None:
    tools, notes = offered(["Inventory:check_stock", "Support", "Refunds"], ACCEPTS,
                           {"Inventory": "inventory"})
    assert sorted(tools) == ["Inventory__check_stock", "Support__ticket"]
    stock = tools["Inventory__check_stock"]
    assert (stock.agent, stock.type, stock.parameters) == ("Inventory", "check_stock", STOCK)
    assert stock.description == ("Ask agent Inventory (role inventory) a `check_stock` request and "
                                 "get its reply. Is there stock?")
    assert stock.spec() == {"type": "function", "function": {
        "name": "Inventory__check_stock", "description": stock.description, "parameters": STOCK}}
    assert notes == ["tools: Refunds declares no accepts (yet): nothing of it is offered; "
                     "name a type as 'Refunds:TYPE'"]


def test_a_named_type_the_agent_does_not_declare_takes_any_object() -> None:
    tools, notes = offered(["Refunds:refund", "Inventory", "Inventory:check_stock"], ACCEPTS)
    assert sorted(tools) == ["Inventory__check_stock", "Inventory__reserve", "Refunds__refund"]
    assert tools["Refunds__refund"].parameters == ANY_OBJECT
    assert notes == []


@pytest.mark.parametrize(("call", "error", "message"), [
    (Call("1", "Refunds__refund", "{}"), ToolNotAllowed,
     "the model called tool 'Refunds__refund', which it was not offered (offered: Inventory__check_stock)"),
    (Call("1", "Inventory__check_stock", "{\"items\": "), ToolCallInvalid,
     "the model called Inventory__check_stock with arguments that are not JSON: '{\"items\":'"),
    (Call("1", "Inventory__check_stock", "[1, 2]"), ToolCallInvalid,
     "the model called Inventory__check_stock with arguments that are not a JSON object: '[1, 2]'"),
])
def test_calls_the_turn_cannot_go_on_with(call: Call, error: type[Exception], message: str) -> None:
    tools, _ = offered(["Inventory:check_stock"], ACCEPTS)
    with pytest.raises(error) as caught:
        resolve(call, tools)
    assert str(caught.value) == message


def test_a_call_resolves_to_its_agent_type_and_payload() -> None:
    tools, _ = offered(["Inventory"], ACCEPTS)
    tool, arguments = resolve(Call("c1", "Inventory__check_stock", ' {"items": {"laptop": 1}} '), tools)
    assert (tool.agent, tool.type, arguments) == ("Inventory", "check_stock", {"items": {"laptop": 1}})
    assert resolve(Call("c2", "Inventory__reserve", ""), tools)[1] == {}  # no arguments: {}
    assert tool.mismatch(arguments) is None
    assert tool.mismatch({"items": {"laptop": "one"}}) == (
        "error: invalid arguments for Inventory__check_stock: items.laptop: 'one' is not of type 'integer'")
    assert tool.mismatch({}) == ("error: invalid arguments for Inventory__check_stock: (the arguments): "
                                 "'items' is a required property")


def test_the_ask_key_is_the_tool_and_its_arguments_in_any_key_order() -> None:
    tools, _ = offered(["Inventory"], ACCEPTS)
    stock, reserve = tools["Inventory__check_stock"], tools["Inventory__reserve"]
    a = ask_key(stock, {"items": {"a": 1, "b": 2}, "order_id": "o"})
    assert a == ask_key(stock, {"order_id": "o", "items": {"b": 2, "a": 1}})
    assert a != ask_key(stock, {"items": {"a": 1, "b": 3}, "order_id": "o"})
    assert a != ask_key(reserve, {"items": {"a": 1, "b": 2}, "order_id": "o"})
    assert a.startswith("Inventory\ncheck_stock\n")


def test_what_goes_back_to_the_model() -> None:
    assert result_text({"ok": True, "n": 1, "text": "é"}) == '{"ok":true,"n":1,"text":"é"}'
    long = result_text({"t": "x" * 20_000})
    assert len(long) == 16_000 + len(" ...(cut)") and long.endswith(" ...(cut)")
    assert error_text(RemoteError("Inventory", "check_stock", "KeyError", "'sku'")) == (
        "error: Inventory failed: KeyError: 'sku'")
    assert error_text(AskTimeout("Inventory", "check_stock", 2.5)) == (
        "error: Inventory did not answer within 2.5 s")
    assert error_text(UnknownAgent("Ghost")) == "error: there is no agent Ghost in the mesh"


def test_the_starter_s_commented_concierge_and_llm_section_parse_when_uncommented() -> None:
    import yaml

    from agentmesh_cli.starter import render_starter

    lines = render_starter().splitlines()
    start = lines.index(next(line for line in lines if line.startswith("# llm:")))
    uncommented = []
    for number, line in enumerate(lines):
        if start <= number < start + 13 or line.startswith("  # - {name: Concierge"):
            line = line.replace("# ", "", 1)
        uncommented.append(line)
    config = parse_config(yaml.safe_load("\n".join(uncommented).replace("${OPENAI_API_KEY}", "${KEY}")))
    concierge = config.agents[-1]
    settings = config.llm_settings(concierge)
    assert (concierge.name, concierge.role, concierge.concurrency) == ("Concierge", "llm", 16)
    assert (settings.model, settings.base_url, settings.tools) == (
        "llama3.2", "http://127.0.0.1:11434/v1", ("Sales", "Support"))
    assert (settings.api_key, settings.max_tool_rounds, settings.timeout) == ("${KEY}", 4, 60.0)

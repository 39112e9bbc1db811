"""The scripted Chat Completions server's pure core by tables: scripts and their exact errors,
the step a request gets (llm/script.py), and the exact wire objects of an answer
(llm/scripted_wire.py)."""

from __future__ import annotations

from typing import Any

import pytest

from agentmesh_cli.errors import ConfigError
from agentmesh_cli.llm.script import (
    Choice,
    Script,
    build_answer,
    choose,
    load_script,
    parse_script,
    render_text,
)
from agentmesh_cli.llm.scripted_wire import (
    ErrorReply,
    completion,
    error_reply,
    no_scenario,
    parse_request,
    requested_model,
    scripted_error,
    split_even,
    split_words,
    stream_plan,
    wants_usage,
)

IDS: dict[str, Any] = {"completion_id": "chatcmpl-t", "created": 1700000000, "model": "m"}


def script(*steps: dict[str, Any], when: str = "", name: str | None = "s") -> Script:
    return parse_script({"scenarios": [{"name": name, "when": when, "steps": list(steps)}]}, "t")


def only_choice(step: dict[str, Any], step_index: int = 0) -> Choice:
    scripted = script(*[{}] * step_index, step)
    return Choice(0, scripted.scenarios[0], step_index, scripted.scenarios[0].steps[step_index])


def user(text: Any) -> dict[str, Any]:
    return {"role": "user", "content": text}


def assistant(text: str | None = None) -> dict[str, Any]:
    return {"role": "assistant", "content": text}


def tool(text: str) -> dict[str, Any]:
    return {"role": "tool", "tool_call_id": "c", "content": text}


# parsing ------------------------------------------------------------------------------
def test_a_yaml_script_with_its_defaults() -> None:
    parsed = load_script(
        "scenarios:\n"
        "  - when: laptop\n"
        "    steps:\n"
        "      - tool_calls: [{name: Inventory__check_stock, arguments: {items: {laptop: 1}}}]\n"
        "      - {text: done, chunks: 4, chunk_delay: 0.05, error: {status: 429, retry_after: 1}}\n",
        "s.yaml")
    assert parsed.model == "scripted"
    scenario = parsed.scenarios[0]
    assert (scenario.name, scenario.when) == (None, "laptop")
    call = scenario.steps[0].tool_calls[0]
    assert (call.name, call.arguments, call.id) == ("Inventory__check_stock", '{"items":{"laptop":1}}', None)
    step = scenario.steps[1]
    assert (step.text, step.chunks, step.chunk_delay, step.delay, step.stall_after) == \
        ("done", 4, 0.05, 0.0, None)
    assert step.error is not None
    assert (step.error.status, step.error.message, step.error.retry_after, step.error.times) == \
        (429, "scripted error", 1.0, None)


def test_arguments_as_a_string_are_kept_as_written() -> None:
    step = script({"tool_calls": [{"name": "f", "arguments": "{not json", "id": "x"}]}).scenarios[0].steps[0]
    assert (step.tool_calls[0].arguments, step.tool_calls[0].id) == ("{not json", "x")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ([], "s: a script is a mapping with `scenarios` (and `model`)"),
        ({}, "s: scenarios: required key is missing"),
        ({"scenarios": []}, "s: scenarios: List should have at least 1 item after validation, not 0"),
        ({"scenarios": [{"steps": [{}]}], "modle": "x"}, "s: modle: unknown key"),
        ({"scenarios": [{"when": "a"}]}, "s: scenarios[0].steps: required key is missing"),
        ({"scenarios": [{"steps": [{"text": 5}]}]},
         "s: scenarios[0].steps[0].text: Input should be a valid string"),
        ({"scenarios": [{"steps": [{"chunks": "4"}]}]},
         "s: scenarios[0].steps[0].chunks: Input should be a valid integer"),
        ({"scenarios": [{"steps": [{"chunks": 0}]}]},
         "s: scenarios[0].steps[0].chunks: Input should be greater than or equal to 1"),
        ({"scenarios": [{"steps": [{"delay": -1}]}]},
         "s: scenarios[0].steps[0].delay: Input should be greater than or equal to 0"),
        ({"scenarios": [{"steps": [{"error": {"status": 200}}]}]},
         "s: scenarios[0].steps[0].error.status: Input should be greater than or equal to 400"),
        ({"scenarios": [{"steps": [{"error": {"message": "x"}}]}]},
         "s: scenarios[0].steps[0].error.status: required key is missing"),
        ({"scenarios": [{"steps": [{"error": {"status": 429, "times": 0}}]}]},
         "s: scenarios[0].steps[0].error.times: Input should be greater than or equal to 1"),
        ({"scenarios": [{"steps": [{"tool_calls": [{"arguments": {}}]}]}]},
         "s: scenarios[0].steps[0].tool_calls[0].name: required key is missing"),
        ({"scenarios": [{"steps": [{"tool_calls": [{"name": "f", "arguments": [1]}]}]}]},
         "s: scenarios[0].steps[0].tool_calls[0].arguments: an object (sent as its JSON text) "
         "or a string (sent as is)"),
        ({"scenarios": [{"steps": [{"usage": {"prompt_tokens": -1}}]}]},
         "s: scenarios[0].steps[0].usage.prompt_tokens: Input should be greater than or equal to 0"),
        # every problem at once
        ({"scenarios": [{"steps": [{"stall_after": -1, "txt": "a"}]}]},
         "s: scenarios[0].steps[0].stall_after: Input should be greater than or equal to 0\n"
         "s: scenarios[0].steps[0].txt: unknown key"),
    ],
)
def test_bad_scripts_name_the_key(data: Any, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_script(data, "s")
    assert str(caught.value) == message


def test_a_file_that_is_not_yaml() -> None:
    with pytest.raises(ConfigError, match=r"^s.yaml: not YAML or JSON: "):
        load_script("scenarios: [", "s.yaml")


# the request --------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("raw", "recorded", "message"),
    [
        (b'{"messages": [{"role": "user", "content": "hi"}]}',
         {"messages": [{"role": "user", "content": "hi"}]}, None),
        (b"not json", "not json", "scripted server: the request body is not JSON"),
        (b"[1]", [1], "scripted server: the request has no `messages` (a list of message objects)"),
        (b'{"model": "m"}', {"model": "m"},
         "scripted server: the request has no `messages` (a list of message objects)"),
        (b'{"messages": []}', {"messages": []},
         "scripted server: the request has no `messages` (a list of message objects)"),
        (b'{"messages": ["hi"]}', {"messages": ["hi"]},
         "scripted server: the request has no `messages` (a list of message objects)"),
    ],
)
def test_parse_request(raw: bytes, recorded: Any, message: str | None) -> None:
    body, problem = parse_request(raw)
    assert body == recorded
    if message is None:
        assert problem is None
    else:
        assert problem == ErrorReply(400, {}, {"error": {"message": message, "type": "invalid_request_error",
                                                         "param": None, "code": None}})


@pytest.mark.parametrize(
    ("body", "model", "usage"),
    [({}, "scripted", False), ({"model": "gpt-x", "stream_options": {"include_usage": True}}, "gpt-x", True),
     ({"model": "", "stream_options": {"include_usage": 1}}, "scripted", False)],
)
def test_model_and_usage_options(body: dict[str, Any], model: str, usage: bool) -> None:
    assert requested_model(body, script({})) == model
    assert wants_usage(body) is usage


# choosing -----------------------------------------------------------------------------
SCENARIOS = parse_script({"scenarios": [
    {"name": "laptop", "when": "LapTop", "steps": [{"text": "0"}, {"text": "1"}, {"text": "2"}]},
    {"name": "refund", "when": "refund", "steps": [{"text": "r"}]},
]}, "t")
WITH_FALLBACK = SCENARIOS.model_copy(update={"scenarios": [*SCENARIOS.scenarios,
                                                           *script({}, name=None).scenarios]})


@pytest.mark.parametrize(
    ("messages", "expected"),
    [
        ([user("a laptop please")], ("laptop", 0)),
        ([{"role": "system", "content": "refund laptop"}, user("A LAPTOP")], ("laptop", 0)),
        # the first user message decides, not the newest
        ([user("refund my laptop"), assistant("?"), user("yes")], ("laptop", 1)),
        ([user("refund"), assistant("?"), user("my laptop")], ("refund", 0)),  # past the last step
        # one step per assistant message after the first user message, tool rounds included
        ([user("laptop"), assistant(), tool("ok"), assistant(), tool("ok")], ("laptop", 2)),
        ([user("laptop"), assistant(), tool("ok"), assistant(), tool("ok"), assistant()], ("laptop", 2)),
        ([assistant("hello"), user("laptop")], ("laptop", 0)),  # before the user message: not a round
        ([user([{"type": "text", "text": "my"}, {"type": "text", "text": "laptop"}])], ("laptop", 0)),
        ([user("a phone")], None),
        ([{"role": "system", "content": "laptop"}], None),  # no user message: only "" matches
    ],
)
def test_choose(messages: list[dict[str, Any]], expected: tuple[str, int] | None) -> None:
    choice = choose(SCENARIOS, messages)
    assert ((choice.scenario.name, choice.step_index) if choice else None) == expected


def test_an_empty_when_matches_every_request() -> None:
    choice = choose(WITH_FALLBACK, [{"role": "system", "content": "x"}])
    assert choice is not None and (choice.scenario_index, choice.scenario.name) == (2, None)


def test_no_scenario_names_the_first_user_message() -> None:
    reply = no_scenario([user("a Phone"), assistant("?"), user("hm")])
    assert (reply.status, reply.body["error"]["message"]) == \
        (400, "scripted server: no scenario matches the first user message 'a Phone'")


@pytest.mark.parametrize(
    ("error", "reached", "fails"),
    [(None, 1, False), ({"status": 500}, 1, True), ({"status": 500}, 9, True),
     ({"status": 429, "times": 2}, 1, True), ({"status": 429, "times": 2}, 2, True),
     ({"status": 429, "times": 2}, 3, False)],
)
def test_an_error_for_its_first_times(error: dict[str, Any] | None, reached: int, fails: bool) -> None:
    assert (scripted_error(only_choice({"error": error}).step, reached) is not None) is fails


@pytest.mark.parametrize(
    ("status", "retry_after", "code", "headers", "kind", "sent_code"),
    [
        (429, 1.0, None, {"retry-after": "1"}, "rate_limit_error", "rate_limit_exceeded"),
        (429, 0.25, None, {"retry-after": "0.25"}, "rate_limit_error", "rate_limit_exceeded"),
        (401, None, None, {}, "authentication_error", "invalid_api_key"),
        (400, None, "context_length_exceeded", {}, "invalid_request_error", "context_length_exceeded"),
        (403, None, None, {}, "permission_error", None),
        (404, None, None, {}, "not_found_error", None),
        (409, None, None, {}, "invalid_request_error", None),
        (500, None, None, {}, "server_error", None),
        (503, 2.0, None, {"retry-after": "2"}, "server_error", None),
    ],
)
def test_error_replies(status: int, retry_after: float | None, code: str | None, headers: dict[str, str],
                       kind: str, sent_code: str | None) -> None:
    body = {"error": {"message": "m", "type": kind, "param": None, "code": sent_code}}
    assert error_reply(status, "m", retry_after=retry_after, code=code) == ErrorReply(status, headers, body)


# the answer ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("template", "text"),
    [
        ("plain {braces} and {0} kept", "plain {braces} and {0} kept"),
        ("got {tool_results} for {user} in round {round}",
         'got 3 left; {"a": 1} for and {round}? in round 2'),
        ("{user}{user}", "and {round}?and {round}?"),
    ],
)
def test_render_text(template: str, text: str) -> None:
    messages = [user("first"), assistant(), tool("3 left"), assistant(), tool('{"a": 1}'),
                user("and {round}?")]
    assert render_text(template, messages, 2) == text


def test_placeholders_with_nothing_to_put_in() -> None:
    assert render_text("[{tool_results}|{user}]", [{"role": "system", "content": "s"}], 0) == "[|]"


@pytest.mark.parametrize(
    ("text", "pieces"),
    [("", []), ("Hello big  world", ["Hello ", "big  ", "world"]),
     ("  lead and trail ", ["  lead ", "and ", "trail "]), ("   ", ["   "]), ("one", ["one"]),
     ("a\nb", ["a\n", "b"])],
)
def test_split_words(text: str, pieces: list[str]) -> None:
    assert split_words(text) == pieces
    assert "".join(pieces) == text


@pytest.mark.parametrize(
    ("text", "count", "pieces"),
    [("abcdefghij", 4, ["abc", "def", "gh", "ij"]), ("abcdefgh", 4, ["ab", "cd", "ef", "gh"]),
     ("abc", 5, ["a", "b", "c"]), ("", 3, []), ("{}", 2, ["{", "}"]), ("x", 2, ["x"])],
)
def test_split_even(text: str, count: int, pieces: list[str]) -> None:
    assert split_even(text, count) == pieces


@pytest.mark.parametrize(
    ("step", "content", "calls", "usage"),
    [
        ({}, "", [], (4, 0)),  # neither text nor tool calls: an empty text
        ({"text": "you said {user}"}, "you said two words", [], (4, 4)),
        ({"tool_calls": [{"name": "f"}, {"name": "g", "arguments": {"x": 1}, "id": "mine"}]}, None,
         [("call_1_0", "f", "{}"), ("mine", "g", '{"x":1}')], (4, 2)),
        ({"text": "checking", "tool_calls": [{"name": "f", "arguments": "{not json"}]}, "checking",
         [("call_1_0", "f", "{not json")], (4, 2)),
        ({"text": "a b c", "usage": {"completion_tokens": 10}}, "a b c", [], (4, 10)),
        ({"text": "a b c", "usage": {"prompt_tokens": 0, "completion_tokens": 0}}, "a b c", [], (0, 0)),
    ],
)
def test_build_answer(step: dict[str, Any], content: str | None, calls: list[tuple[str, str, str]],
                      usage: tuple[int, int]) -> None:
    # prompt words: "hi there" (2) + None content (0) + "two words" (2)
    messages = [user("hi there"), assistant(), user("two words")]
    answer = build_answer(only_choice(step, 1), messages)
    assert answer.content == content
    assert [(call.id, call.name, call.arguments) for call in answer.tool_calls] == calls
    assert answer.usage == {"prompt_tokens": usage[0], "completion_tokens": usage[1],
                            "total_tokens": usage[0] + usage[1]}
    assert answer.finish_reason == ("tool_calls" if calls else "stop")


def test_completion_with_text() -> None:
    answer = build_answer(only_choice({"text": "Hello there"}), [user("hi")])
    assert completion(answer, **IDS) == {
        "id": "chatcmpl-t", "object": "chat.completion", "created": 1700000000, "model": "m",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello there"},
                     "logprobs": None, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}}


def test_completion_with_tool_calls_only() -> None:
    answer = build_answer(only_choice({"tool_calls": [{"name": "f", "arguments": {"a": 1}}]}), [user("hi")])
    assert completion(answer, **IDS)["choices"] == [{
        "index": 0, "logprobs": None, "finish_reason": "tool_calls",
        "message": {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_0_0", "type": "function", "function": {"name": "f", "arguments": '{"a":1}'}}]}}]


def deltas(step: dict[str, Any], include_usage: bool = False) -> tuple[list[Any], bool]:
    """(delta, finish_reason) per chunk, or ("usage", usage) for the usage chunk; and the stall."""
    choice = only_choice(step)
    plan = stream_plan(build_answer(choice, [user("hi")]), choice.step, include_usage=include_usage, **IDS)
    for chunk in plan.chunks:
        assert {key: chunk[key] for key in ("id", "object", "created", "model")} == \
            {"id": "chatcmpl-t", "object": "chat.completion.chunk", "created": 1700000000, "model": "m"}
    seen = [("usage", chunk["usage"]) if not chunk["choices"] else
            (chunk["choices"][0]["delta"], chunk["choices"][0]["finish_reason"]) for chunk in plan.chunks]
    assert all(chunk["choices"][0]["index"] == 0 for chunk in plan.chunks if chunk["choices"])
    return seen, plan.stall


ROLE = ({"role": "assistant", "content": ""}, None)


@pytest.mark.parametrize(
    ("step", "include_usage", "expected", "stall"),
    [
        ({"text": "Hello big world"}, False,
         [ROLE, ({"content": "Hello "}, None), ({"content": "big "}, None), ({"content": "world"}, None),
          ({}, "stop")], False),
        ({"text": "abcdefghij", "chunks": 4}, True,
         [ROLE, ({"content": "abc"}, None), ({"content": "def"}, None), ({"content": "gh"}, None),
          ({"content": "ij"}, None), ({}, "stop"),
          ("usage", {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2})], False),
        ({}, False, [ROLE, ({}, "stop")], False),
        ({"tool_calls": [{"name": "f", "arguments": {"q": "x"}}, {"name": "g", "arguments": "{not json"}]},
         False,
         [({"role": "assistant", "content": None}, None),
          ({"tool_calls": [{"index": 0, "id": "call_0_0", "type": "function",
                            "function": {"name": "f", "arguments": ""}}]}, None),
          ({"tool_calls": [{"index": 0, "function": {"arguments": '{"q":'}}]}, None),
          ({"tool_calls": [{"index": 0, "function": {"arguments": '"x"}'}}]}, None),
          ({"tool_calls": [{"index": 1, "id": "call_0_1", "type": "function",
                            "function": {"name": "g", "arguments": ""}}]}, None),
          ({"tool_calls": [{"index": 1, "function": {"arguments": "{not "}}]}, None),
          ({"tool_calls": [{"index": 1, "function": {"arguments": "json"}}]}, None),
          ({}, "tool_calls")], False),
        ({"text": "ok", "tool_calls": [{"name": "f", "arguments": "{}"}]}, False,
         [ROLE, ({"content": "ok"}, None),
          ({"tool_calls": [{"index": 0, "id": "call_0_0", "type": "function",
                            "function": {"name": "f", "arguments": ""}}]}, None),
          ({"tool_calls": [{"index": 0, "function": {"arguments": "{"}}]}, None),
          ({"tool_calls": [{"index": 0, "function": {"arguments": "}"}}]}, None),
          ({}, "tool_calls")], False),
        # a stall: the role and the first pieces, then nothing (no finish, no usage)
        ({"text": "one two three", "stall_after": 2}, True,
         [ROLE, ({"content": "one "}, None), ({"content": "two "}, None)], True),
        ({"text": "one two", "stall_after": 0}, True, [ROLE], True),
        ({"text": "one", "stall_after": 5, "tool_calls": [{"name": "f"}]}, True,
         [ROLE, ({"content": "one"}, None)], True),
    ],
)
def test_stream_plan(step: dict[str, Any], include_usage: bool, expected: list[Any], stall: bool) -> None:
    assert deltas(step, include_usage) == (expected, stall)

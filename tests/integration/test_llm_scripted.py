"""The scripted Chat Completions server (agentmesh_cli.llm.scripted) as a real process,
driven over its socket by the real `openai` SDK, sync and async: text and tool calls,
streamed and not, usage, the errors the SDK maps (401, 429 with its retries, 500, a
timeout), a malformed tool call, a stalled stream, and the test endpoints."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from openai import AsyncOpenAI, OpenAI
from openai.lib.streaming.chat import ChatCompletionStreamState
from openai.types.chat import ChatCompletionMessageParam, ChatCompletionToolParam

from tests.helpers.llm import ScriptedLlm

HI: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hi"}]
TOOLS: list[ChatCompletionToolParam] = [
    {"type": "function", "function": {"name": name, "parameters": {"type": "object", "properties": {}}}}
    for name in ("Inventory__check_stock", "Fraud__score")
]
TOOL_ROUND: dict[str, Any] = {"scenarios": [{"name": "laptop", "when": "laptop", "steps": [
    {"tool_calls": [{"name": "Inventory__check_stock", "arguments": {"items": {"laptop": 1}}, "id": "call_1"},
                    {"name": "Fraud__score", "arguments": {"order": "o-17", "note": "a longer argument"}}]},
    {"text": "Your laptop: {tool_results} (round {round})", "chunks": 3},
]}]}


def text_script(text: str, **step: Any) -> dict[str, Any]:
    return {"model": "scripted-1", "scenarios": [{"name": "any", "steps": [{"text": text, **step}]}]}


@pytest.fixture(scope="module")
def server() -> Iterator[ScriptedLlm]:
    with ScriptedLlm(text_script("hello")) as running:
        yield running
    assert running.returncode == 0  # SIGTERM: a clean exit


@pytest.fixture
def llm(server: ScriptedLlm) -> ScriptedLlm:
    server.reset()
    return server


def sync_client(llm: ScriptedLlm, **options: Any) -> OpenAI:
    return OpenAI(base_url=llm.base_url, api_key="test-key", **options)


def async_client(llm: ScriptedLlm, **options: Any) -> AsyncOpenAI:
    return AsyncOpenAI(base_url=llm.base_url, api_key="test-key", **options)


# text -----------------------------------------------------------------------------------
def test_models_and_a_text_answer(llm: ScriptedLlm) -> None:
    llm.set_script(text_script("Hello there, {user}!"))
    with sync_client(llm) as client:
        assert [model.id for model in client.models.list()] == ["scripted-1"]
        answer = client.chat.completions.create(model="any-model", messages=HI)
    assert answer.object == "chat.completion" and answer.model == "any-model"
    assert answer.id.startswith("chatcmpl-")
    choice = answer.choices[0]
    assert (choice.message.role, choice.message.content, choice.message.tool_calls, choice.finish_reason) == \
        ("assistant", "Hello there, hi!", None, "stop")
    assert answer.usage is not None
    usage = answer.usage
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (1, 3, 4)
    assert llm.requests() == [{"body": {"model": "any-model", "messages": HI}, "authorization": True,
                               "scenario": "any", "step": 0, "status": 200}]


def test_streamed_text_sync_with_usage(llm: ScriptedLlm) -> None:
    llm.set_script(text_script("Hello big  world"))
    with sync_client(llm) as client:
        with client.chat.completions.create(model="m", messages=HI, stream=True,
                                            stream_options={"include_usage": True}) as stream:
            chunks = list(stream)
    assert [c.choices[0].delta.content for c in chunks[:-1]] == ["", "Hello ", "big  ", "world", None]
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks[:-1]] == [None, None, None, None, "stop"]
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == (1, 3)
    assert {c.id for c in chunks} == {chunks[0].id}
    assert {c.object for c in chunks} == {"chat.completion.chunk"}


def test_streamed_text_async_in_pieces_without_usage(llm: ScriptedLlm) -> None:
    llm.set_script(text_script("abcdefghij", chunks=4))

    async def scenario() -> list[Any]:
        async with async_client(llm) as client:
            stream = await client.chat.completions.create(model="m", messages=HI, stream=True)
            return [chunk async for chunk in stream]

    chunks = asyncio.run(scenario())
    assert [c.choices[0].delta.content for c in chunks] == ["", "abc", "def", "gh", "ij", None]
    assert all(c.usage is None and c.choices for c in chunks)


def test_chunk_delay_paces_the_stream(llm: ScriptedLlm) -> None:
    llm.set_script(text_script("one two three", chunk_delay=0.2))
    arrivals = []
    with sync_client(llm) as client:
        with client.chat.completions.create(model="m", messages=HI, stream=True) as stream:
            for chunk in stream:
                if chunk.choices[0].delta.content:
                    arrivals.append(time.monotonic())
    assert len(arrivals) == 3
    assert arrivals[2] - arrivals[0] >= 0.35


# tool calls -----------------------------------------------------------------------------
def test_tool_calls_streamed_rebuild_by_manual_accumulation(llm: ScriptedLlm) -> None:
    llm.set_script(TOOL_ROUND)
    messages: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Need a LAPTOP"}]
    state: ChatCompletionStreamState[Any] = ChatCompletionStreamState(input_tools=TOOLS)
    with sync_client(llm) as client:
        with client.chat.completions.create(model="m", messages=messages, tools=TOOLS, stream=True,
                                            stream_options={"include_usage": True}) as stream:
            argument_pieces = 0
            for chunk in stream:
                state.handle_chunk(chunk)
                for choice in chunk.choices:  # none in the usage chunk
                    argument_pieces += sum(1 for call in choice.delta.tool_calls or []
                                           if call.function and call.function.arguments)
        final = state.get_final_completion()
        assert argument_pieces == 4  # two pieces per call: the client put them back together
        message = final.choices[0].message
        assert (message.content, final.choices[0].finish_reason) == (None, "tool_calls")
        assert message.tool_calls is not None
        calls = [(c.id, c.function.name, json.loads(c.function.arguments)) for c in message.tool_calls
                 if c.type == "function"]
        assert calls == [("call_1", "Inventory__check_stock", {"items": {"laptop": 1}}),
                         ("call_0_1", "Fraud__score", {"order": "o-17", "note": "a longer argument"})]
        assert final.usage is not None and final.usage.completion_tokens == 2

        # the next round: the tool results back, the step after answers
        messages += [{"role": "assistant", "tool_calls": [
                         {"id": call_id, "type": "function",
                          "function": {"name": name, "arguments": json.dumps(args)}}
                         for call_id, name, args in calls]},
                     {"role": "tool", "tool_call_id": "call_1", "content": "12 in stock"},
                     {"role": "tool", "tool_call_id": "call_0_1", "content": "risk low"}]
        answer = client.chat.completions.create(model="m", messages=messages, tools=TOOLS)
    assert answer.choices[0].message.content == "Your laptop: 12 in stock; risk low (round 1)"
    assert [(r["scenario"], r["step"], r["status"]) for r in llm.requests()] == \
        [("laptop", 0, 200), ("laptop", 1, 200)]


def test_tool_calls_through_the_stream_helper(llm: ScriptedLlm) -> None:
    llm.set_script(TOOL_ROUND)

    async def scenario() -> tuple[Any, list[Any]]:
        async with async_client(llm) as client:
            async with client.chat.completions.stream(
                    model="m", messages=[{"role": "user", "content": "laptop"}], tools=TOOLS) as stream:
                done = [(event.name, event.arguments) async for event in stream
                        if event.type == "tool_calls.function.arguments.done"]
                return await stream.get_final_completion(), done

    final, done = asyncio.run(scenario())
    assert done == [("Inventory__check_stock", '{"items":{"laptop":1}}'),
                    ("Fraud__score", '{"order":"o-17","note":"a longer argument"}')]
    assert final.choices[0].message.tool_calls is not None
    assert [c.function.name for c in final.choices[0].message.tool_calls if c.type == "function"] == \
        ["Inventory__check_stock", "Fraud__score"]


def test_a_malformed_tool_call_arrives_intact(llm: ScriptedLlm) -> None:
    malformed = {"name": "Fraud__score", "arguments": "{not json"}
    llm.set_script({"scenarios": [{"steps": [{"text": "let me look", "tool_calls": [malformed]}]}]})
    with sync_client(llm) as client:
        with client.chat.completions.stream(model="m", messages=HI, tools=TOOLS) as stream:
            streamed = stream.get_final_completion().choices[0].message
        plain = client.chat.completions.create(model="m", messages=HI, tools=TOOLS).choices[0].message
    for message in (streamed, plain):
        assert message.content == "let me look"
        assert message.tool_calls is not None
        assert [(c.id, c.function.name, c.function.arguments) for c in message.tool_calls
                if c.type == "function"] == [("call_0_0", "Fraud__score", "{not json")]


# errors ---------------------------------------------------------------------------------
def test_an_api_key_is_required_when_given() -> None:
    with ScriptedLlm(text_script("welcome"), api_key="sk-right") as llm:
        with OpenAI(base_url=llm.base_url, api_key="sk-wrong", max_retries=0) as client:
            with pytest.raises(openai.AuthenticationError) as caught:
                client.chat.completions.create(model="m", messages=HI)
        assert caught.value.status_code == 401
        assert caught.value.type == "authentication_error" and caught.value.code == "invalid_api_key"
        with OpenAI(base_url=llm.base_url, api_key="sk-right") as client:
            answer = client.chat.completions.create(model="m", messages=HI)
        assert answer.choices[0].message.content == "welcome"
        assert llm.http.post("/v1/chat/completions", json={"messages": HI}).status_code == 401  # no header
        assert [(r["authorization"], r["scenario"], r["step"], r["status"]) for r in llm.requests()] == \
            [(True, None, None, 401), (True, "any", 0, 200), (False, None, None, 401)]
    assert llm.returncode == 0


def test_429_with_retry_after_then_success(llm: ScriptedLlm) -> None:
    llm.set_script(text_script("made it", error={"status": 429, "message": "slow down", "retry_after": 1,
                                                 "times": 1}))
    with sync_client(llm, max_retries=2) as client:
        started = time.monotonic()
        answer = client.chat.completions.create(model="m", messages=HI)
        waited = time.monotonic() - started
    assert answer.choices[0].message.content == "made it"
    assert waited >= 0.9  # the SDK waited as Retry-After said
    assert [r["status"] for r in llm.requests()] == [429, 200]


def test_429_every_time_raises_after_the_retries(llm: ScriptedLlm) -> None:
    llm.set_script(text_script("never", error={"status": 429, "message": "slow down", "retry_after": 0.1}))

    async def scenario() -> openai.RateLimitError:
        async with async_client(llm, max_retries=2) as client:
            with pytest.raises(openai.RateLimitError) as caught:
                await client.chat.completions.create(model="m", messages=HI, stream=True)
            return caught.value

    error = asyncio.run(scenario())
    assert error.response.headers["retry-after"] == "0.1"
    assert error.body == {"message": "slow down", "type": "rate_limit_error", "param": None,
                          "code": "rate_limit_exceeded"}
    assert [r["status"] for r in llm.requests()] == [429, 429, 429]


def test_500(llm: ScriptedLlm) -> None:
    llm.set_script(text_script("never", error={"status": 500, "message": "the model fell over"}))
    with sync_client(llm, max_retries=0) as client:
        with pytest.raises(openai.InternalServerError) as caught:
            client.chat.completions.create(model="m", messages=HI)
    assert (caught.value.status_code, caught.value.type, caught.value.message) == \
        (500, "server_error", "Error code: 500 - the model fell over")


def test_a_delay_past_the_client_timeout(llm: ScriptedLlm) -> None:
    llm.set_script(text_script("too late", delay=1.5))
    with sync_client(llm, max_retries=0, timeout=0.3) as client:
        with pytest.raises(openai.APITimeoutError):
            client.chat.completions.create(model="m", messages=HI)

    async def streamed() -> None:
        async with async_client(llm, max_retries=0, timeout=0.3) as client:
            with pytest.raises(openai.APITimeoutError):
                await client.chat.completions.create(model="m", messages=HI, stream=True)

    asyncio.run(streamed())
    assert [r["status"] for r in llm.requests()] == [200, 200]  # recorded before the wait


def test_a_stalled_stream_holds_until_the_client_goes(llm: ScriptedLlm) -> None:
    llm.set_script(text_script("one two three", stall_after=2))
    received = []
    with sync_client(llm, max_retries=0, timeout=openai.Timeout(5.0, read=0.5)) as client:
        with pytest.raises(openai.APITimeoutError):
            with client.chat.completions.create(model="m", messages=HI, stream=True) as stream:
                for chunk in stream:
                    received.append(chunk.choices[0].delta.content)
    assert received == ["", "one ", "two "]
    llm.set_script(text_script("still here"))  # and the server goes on
    with sync_client(llm) as client:
        answer = client.chat.completions.create(model="m", messages=HI)
    assert answer.choices[0].message.content == "still here"


def test_no_scenario_matches(llm: ScriptedLlm) -> None:
    llm.set_script({"scenarios": [{"name": "laptop", "when": "laptop", "steps": [{"text": "x"}]}]})
    with sync_client(llm, max_retries=0) as client:
        with pytest.raises(openai.BadRequestError) as caught:
            client.chat.completions.create(model="m", messages=[{"role": "user", "content": "A phone"}])
    assert caught.value.body == {
        "message": "scripted server: no scenario matches the first user message 'A phone'",
        "type": "invalid_request_error", "param": None, "code": None}


def test_requests_that_are_not_chat_requests(llm: ScriptedLlm) -> None:
    not_json = llm.http.post("/v1/chat/completions", content=b"{oops", headers={"authorization": "Bearer k"})
    no_messages = llm.http.post("/v1/chat/completions", json={"model": "m"})
    assert (not_json.status_code, not_json.json()["error"]["message"]) == \
        (400, "scripted server: the request body is not JSON")
    assert (no_messages.status_code, no_messages.json()["error"]["type"]) == (400, "invalid_request_error")
    assert llm.requests() == [
        {"body": "{oops", "authorization": True, "scenario": None, "step": None, "status": 400},
        {"body": {"model": "m"}, "authorization": False, "scenario": None, "step": None, "status": 400}]


# the test endpoints ---------------------------------------------------------------------
def test_put_script_checks_it_and_resets_the_counters(llm: ScriptedLlm) -> None:
    bad = llm.http.put("/_script", json={"scenarios": [{"steps": [{"text": "x", "chunks": 0}]}]})
    assert bad.status_code == 400
    assert bad.json()["error"]["message"] == \
        "PUT /_script: scenarios[0].steps[0].chunks: Input should be greater than or equal to 1"
    assert llm.http.put("/_script", content=b"not json").status_code == 400

    once = text_script("ok", error={"status": 503, "times": 1})
    llm.set_script(once)
    with sync_client(llm, max_retries=0) as client:
        with pytest.raises(openai.InternalServerError):
            client.chat.completions.create(model="m", messages=HI)
        assert client.chat.completions.create(model="m", messages=HI).choices[0].message.content == "ok"
        llm.set_script(once)  # counters cleared: it fails once more
        with pytest.raises(openai.InternalServerError):
            client.chat.completions.create(model="m", messages=HI)
        llm.reset()  # so does DELETE /_requests, with the record
        assert llm.requests() == []
        with pytest.raises(openai.InternalServerError):
            client.chat.completions.create(model="m", messages=HI)
    assert [r["status"] for r in llm.requests()] == [503]


def test_a_bad_script_file_is_one_error_line(tmp_path: Path) -> None:
    script = tmp_path / "script.yaml"
    script.write_text("scenarios:\n  - steps: [{text: hi, chunk: 4}]\n", encoding="utf-8")
    done = subprocess.run([sys.executable, "-m", "agentmesh_cli.llm.scripted", "--script", str(script)],
                          capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr == f"error: {script}: scenarios[0].steps[0].chunk: unknown key\n"

"""The pure core of the scripted Chat Completions server (llm/scripted.py), part two: the
OpenAI wire format. A request body read and checked; the answer of llm/script.py as a
`chat.completion` or as the `chat.completion.chunk` list of a stream; an error as its
status, headers and OpenAI-shaped body.

The server passes the ids and the clock in, and counts how many requests reached a step (an
error's `times`), so everything here is checked by tables (tests/unit/test_llm_script.py).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import orjson

from agentmesh_cli.llm.script import Answer, Message, Script, Step, first_user, message_text

PREFIX = "scripted server: "  # on the chat errors the server makes up (not the scripted ones)


# errors and the request -------------------------------------------------------------
@dataclass(frozen=True)
class ErrorReply:
    """An error answer: HTTP status, headers, and the OpenAI-shaped JSON body."""

    status: int
    headers: dict[str, str]
    body: dict[str, Any]


ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
               404: "not_found_error", 429: "rate_limit_error"}
ERROR_CODES = {401: "invalid_api_key", 429: "rate_limit_exceeded"}


def error_reply(status: int, message: str, *, retry_after: float | None = None,
                code: str | None = None) -> ErrorReply:
    """OpenAI's error body: `type` by status, `code` by status unless given, and a
    Retry-After header (seconds) when given."""
    kind = ERROR_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    headers = {} if retry_after is None else {"retry-after": _seconds(retry_after)}
    body = {"error": {"message": message, "type": kind, "param": None,
                      "code": code if code is not None else ERROR_CODES.get(status)}}
    return ErrorReply(status, headers, body)


def _seconds(value: float) -> str:
    return str(int(value)) if value.is_integer() else repr(value)


def unauthorized() -> ErrorReply:
    return error_reply(401, PREFIX + "missing or wrong API key (Authorization: Bearer ...)")


def parse_request(raw: bytes) -> tuple[Any, ErrorReply | None]:
    """The request body as recorded (its JSON, or its text when it is not JSON), and the 400
    to answer when it is not a chat request (None when it is one)."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return raw.decode("utf-8", "replace"), error_reply(400, PREFIX + "the request body is not JSON")
    messages = body.get("messages") if isinstance(body, dict) else None
    if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
        return body, error_reply(400, PREFIX + "the request has no `messages` (a list of message objects)")
    return body, None


def wants_stream(body: dict[str, Any]) -> bool:
    return body.get("stream") is True


def wants_usage(body: dict[str, Any]) -> bool:
    options = body.get("stream_options")
    return isinstance(options, dict) and options.get("include_usage") is True


def requested_model(body: dict[str, Any], script: Script) -> str:
    model = body.get("model")
    return model if isinstance(model, str) and model else script.model


def no_scenario(messages: list[Message]) -> ErrorReply:
    first = first_user(messages)
    opening = message_text(messages[first]) if first is not None else ""
    return error_reply(400, PREFIX + f"no scenario matches the first user message {opening!r}")


def scripted_error(step: Step, reached: int) -> ErrorReply | None:
    """The step's error for the `reached`-th request to reach it (1 for the first), or None
    when this one gets the normal answer."""
    error = step.error
    if error is None or (error.times is not None and reached > error.times):
        return None
    return error_reply(error.status, error.message, retry_after=error.retry_after, code=error.code)


# the answer ---------------------------------------------------------------------------
def completion(answer: Answer, *, completion_id: str, created: int, model: str) -> dict[str, Any]:
    """The non-streamed answer: a `chat.completion` object."""
    message: dict[str, Any] = {"role": "assistant", "content": answer.content}
    if answer.tool_calls:
        message["tool_calls"] = [{"id": call.id, "type": "function",
                                  "function": {"name": call.name, "arguments": call.arguments}}
                                 for call in answer.tool_calls]
    return {"id": completion_id, "object": "chat.completion", "created": created, "model": model,
            "choices": [{"index": 0, "message": message, "logprobs": None,
                         "finish_reason": answer.finish_reason}],
            "usage": answer.usage}


@dataclass(frozen=True)
class StreamPlan:
    """The chunks to send, in order; `stall`: then send nothing more (no finish, no [DONE])
    and hold the connection open until the client goes."""

    chunks: list[dict[str, Any]]
    stall: bool


def stream_plan(answer: Answer, step: Step, *, completion_id: str, created: int, model: str,
                include_usage: bool) -> StreamPlan:
    """The streamed answer as `chat.completion.chunk` objects: the role, the text pieces,
    each tool call (name first, then its arguments in pieces), the finish, and the usage
    when the request asked for it."""
    def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
        return {"id": completion_id, "object": "chat.completion.chunk", "created": created,
                "model": model, "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}]}

    text = answer.content or ""
    pieces = split_words(text) if step.chunks is None else split_even(text, step.chunks)
    chunks = [chunk({"role": "assistant", "content": "" if answer.content is not None else None})]
    chunks += [chunk({"content": piece}) for piece in pieces]
    if step.stall_after is not None:
        return StreamPlan(chunks[:1 + step.stall_after], stall=True)
    for index, call in enumerate(answer.tool_calls):
        chunks.append(chunk({"tool_calls": [{"index": index, "id": call.id, "type": "function",
                                             "function": {"name": call.name, "arguments": ""}}]}))
        # in two pieces, so a client must put the arguments back together
        chunks += [chunk({"tool_calls": [{"index": index, "function": {"arguments": piece}}]})
                   for piece in split_even(call.arguments, 2)]
    chunks.append(chunk({}, answer.finish_reason))
    if include_usage:
        chunks.append({"id": completion_id, "object": "chat.completion.chunk", "created": created,
                       "model": model, "choices": [], "usage": answer.usage})
    return StreamPlan(chunks, stall=False)


WORD_PIECE = re.compile(r"\s*\S+\s*|\s+")


def split_words(text: str) -> list[str]:
    """One piece per word, with the spaces after it (and any before the first word)."""
    return WORD_PIECE.findall(text)


def split_even(text: str, count: int) -> list[str]:
    """`count` pieces of lengths that differ by one at most (fewer when the text is shorter)."""
    count = min(count, len(text))
    if count == 0:
        return []
    size, longer = divmod(len(text), count)
    pieces, start = [], 0
    for index in range(count):
        end = start + size + (1 if index < longer else 0)
        pieces.append(text[start:end])
        start = end
    return pieces


def models_list(script: Script) -> dict[str, Any]:
    return {"object": "list",
            "data": [{"id": script.model, "object": "model", "created": 0, "owned_by": "agentmesh"}]}

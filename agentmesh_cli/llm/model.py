"""One model round through the official `openai` SDK: a streamed Chat Completions call to
any OpenAI-compatible server, its text handed on piece by piece as it arrives, its tool
calls and token usage gathered, and the SDK's errors turned into ModelError kinds.

The SDK's own retries and timeouts apply (`llm.max_retries`: 429 honouring Retry-After,
408, 409, 5xx, connection errors; `llm.timeout` per attempt and between streamed
chunks); there is no second retry layer here. What is left after them is one error:

    connection refused, reset        ModelUnavailable
    timeout (the SDK's, or the
      request's deadline)            ModelTimeout
    401, 403                         ModelAuthFailed
    429                              ModelRateLimited
    any other status                 ModelRefused (.status)
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import openai

from agentmesh_cli.config_llm import LlmSettings
from agentmesh_cli.errors import (
    ModelAuthFailed,
    ModelError,
    ModelRateLimited,
    ModelRefused,
    ModelTimeout,
    ModelUnavailable,
)
from agentmesh_cli.llm.tools import Call, Tool

NO_KEY = "unused"  # sent when no api_key is set (local servers ignore it; the SDK wants one)


@dataclass
class Round:
    """What one call of the model answered."""

    text: str = ""
    calls: list[Call] = field(default_factory=list)
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        """What ctx.once keeps of the round (so that a re-run after a crash replays it)."""
        return {"text": self.text, "calls": [[c.id, c.name, c.arguments] for c in self.calls],
                "finish_reason": self.finish_reason, "prompt_tokens": self.prompt_tokens,
                "completion_tokens": self.completion_tokens, "seconds": self.seconds}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Round:
        return cls(str(data["text"]), [Call(str(i), str(n), str(a)) for i, n, a in data["calls"]],
                   data["finish_reason"], int(data["prompt_tokens"]), int(data["completion_tokens"]),
                   float(data["seconds"]))

    def message(self) -> dict[str, Any]:
        """The assistant message to send back with the tools' results."""
        message: dict[str, Any] = {"role": "assistant", "content": self.text or None}
        if self.calls:
            message["tool_calls"] = [{"id": c.id, "type": "function",
                                      "function": {"name": c.name, "arguments": c.arguments}}
                                     for c in self.calls]
        return message


class Model:
    def __init__(self, settings: LlmSettings, api_key: str | None) -> None:
        self.settings = settings
        self.client = openai.AsyncOpenAI(base_url=settings.base_url, api_key=api_key or NO_KEY,
                                         timeout=settings.timeout, max_retries=settings.max_retries)

    async def close(self) -> None:
        await self.client.close()

    async def round(self, messages: Sequence[dict[str, Any]], tools: Sequence[Tool],
                    on_text: Callable[[str], None], budget: float) -> Round:
        """Call the model once, streamed; `on_text` gets each piece of text as it arrives.
        `budget`: seconds left before the asker stops waiting (the round ends by then)."""
        settings = self.settings
        request: dict[str, Any] = {"model": settings.model, "messages": list(messages), "stream": True,
                                   "stream_options": {"include_usage": True}}
        if tools:
            request["tools"] = [tool.spec() for tool in tools]
        if settings.temperature is not None:
            request["temperature"] = settings.temperature
        if settings.max_tokens is not None:
            request["max_tokens"] = settings.max_tokens
        result = Round()
        started = time.perf_counter()
        try:
            async with asyncio.timeout(budget):
                await self._stream(request, result, on_text)
        except TimeoutError:
            raise ModelTimeout(f"{settings.model} did not finish within {budget:.3g} s (the request's "
                               "deadline)") from None
        except openai.APIError as exc:
            raise model_error(exc, settings.model) from None
        finally:
            result.seconds = time.perf_counter() - started
        return result

    async def _stream(self, request: dict[str, Any], result: Round, on_text: Callable[[str], None]) -> None:
        calls: dict[int, list[str]] = {}  # index -> [id, name, arguments]
        pieces: list[str] = []
        stream = await self.client.chat.completions.create(**request)
        async with stream:
            async for chunk in stream:
                if chunk.usage is not None:
                    result.prompt_tokens = chunk.usage.prompt_tokens or 0
                    result.completion_tokens = chunk.usage.completion_tokens or 0
                for choice in chunk.choices:
                    delta = choice.delta
                    if delta.content:
                        pieces.append(delta.content)
                        on_text(delta.content)
                    for part in delta.tool_calls or ():
                        call = calls.setdefault(part.index, ["", "", ""])
                        call[0] = part.id or call[0]
                        if part.function is not None:
                            call[1] += part.function.name or ""
                            call[2] += part.function.arguments or ""
                    if choice.finish_reason:
                        result.finish_reason = choice.finish_reason
        result.text = "".join(pieces)
        result.calls = [Call(id or f"call_{index}", name, arguments)
                        for index, (id, name, arguments) in sorted(calls.items())]


def model_error(exc: openai.APIError, model: str) -> ModelError:
    """The SDK's error (after its retries) as the ModelError kind the asker is told."""
    if isinstance(exc, openai.APITimeoutError):
        return ModelTimeout(f"{model} did not answer in time (after the SDK's retries)")
    if isinstance(exc, openai.APIConnectionError):
        return ModelUnavailable(f"the model server cannot be reached: {exc.message}")
    detail = _server_message(exc)
    if isinstance(exc, openai.AuthenticationError | openai.PermissionDeniedError):
        return ModelAuthFailed(f"the model server refused the api key ({exc.status_code}): {detail}")
    if isinstance(exc, openai.RateLimitError):
        return ModelRateLimited(f"the model server is rate limiting (429, after the SDK's retries): "
                                f"{detail}")
    if isinstance(exc, openai.APIStatusError):
        return ModelRefused(f"the model server answered {exc.status_code}: {detail}", exc.status_code)
    return ModelRefused(f"the model server failed: {detail}")


def _server_message(exc: openai.APIError) -> str:
    body = exc.body
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and isinstance(inner.get("message"), str):
            return str(inner["message"])[:500]
    return str(exc.message)[:500]

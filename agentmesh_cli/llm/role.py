"""The built-in `llm` role: an agent that thinks with a language model and uses the other
agents as its tools (docs/llm.md).

A `chat` message (`{"text": ...}`, asked through the gateway, `agentmesh ask` or another
agent's `ctx.ask`) is one turn:

1. the user's context is read from Cognition (`meta.user`, the gateway's token);
2. the model is called, streamed: each piece of text is a `delta` event of the
   conversation as it arrives (`ctx.delta`);
3. each tool call is an ask of the agent it names (`<agent>__<type>`, only those of the
   `tools` allowlist), the calls of one round at once; the reply, or the error as text,
   goes back to the model, and the model is called again, up to `max_tool_rounds`;
4. the final text is the reply (`answer`), and the exchange is remembered in Memory.

Failures never stop the agent: the asker gets an error reply naming a ModelError kind
(errors.py), counted under `llm_errors`. After a crash the message is handled again: the
rounds the first run finished are replayed from Redis (`ctx.once`), so the model is called
again only from the round the crash cut; tool asks are keyed by tool and arguments
(`ctx.ask(key=...)`), so the same call is answered from the answerer's reply cache; and the
reply goes out under the same id.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any

from pydantic import BaseModel, Field, ValidationError

from agentmesh_cli import constants as C
from agentmesh_cli import environment
from agentmesh_cli.agent.base import AgentContext, Role, type_of_request
from agentmesh_cli.config_llm import LlmSettings
from agentmesh_cli.envelope import Envelope, now_ms
from agentmesh_cli.errors import (
    AskError,
    ConfigError,
    EmptyAnswer,
    ModelAuthFailed,
    ModelError,
    ModelTimeout,
    ToolRoundLimit,
)
from agentmesh_cli.llm.model import Model, Round
from agentmesh_cli.llm.tools import Call, Tool, ask_key, error_text, offered, resolve, result_text
from agentmesh_cli.metrics.histogram import LLM_BUCKETS

ANSWER = "answer"  # the reply's type
DEADLINE_MARGIN_S = 0.25  # a turn ends this long before the asker's deadline (its error reply gets there)
NO_DEADLINE_S = 600.0  # a turn of a plain message (nobody waits on a deadline) ends by then


class Chat(BaseModel):
    """A message to a language-model agent; it answers in its own words, asking the other
    agents it may use as tools."""

    text: str = Field(min_length=1, max_length=32_000, description="What the user writes.")


class LlmRole(Role):
    """Answers `chat` with a language model (any OpenAI-compatible server, llm: in mesh.yaml)."""

    accepts = {"chat": Chat}
    replicable = True  # its turns keep their state in Redis (ctx.once) and Memory

    def __init__(self, ctx: AgentContext) -> None:
        super().__init__(ctx)
        config = ctx.config
        spec = config.spec_of(ctx.name)  # a replica (Concierge-2) runs its group's settings
        self.settings: LlmSettings = (config.llm_settings(spec) if spec is not None
                                      else config.llm.resolve(None, ctx.name, config.mesh))
        self.key_problem: str | None = None
        api_key: str | None = None
        try:
            if self.settings.api_key is not None:
                api_key = environment.expand(self.settings.api_key, "llm.api_key")
        except ConfigError as exc:  # every turn says why, the agent stays up
            self.key_problem = str(exc)
        self.model = Model(self.settings, api_key)
        self.noted: set[str] = set()

    async def on_stop(self) -> None:
        await self.model.close()

    async def on_message(self, message: Envelope) -> None:
        if message.type != "chat":
            if type_of_request(message):
                self.ctx.reply(message, C.TYPE_ERROR_REPLY, {
                    "error": "UnsupportedType", "message": f"{self.ctx.name} answers `chat` only"})
            return
        try:
            text = Chat.model_validate(message.payload).text
        except ValidationError as exc:
            self._fail(message, "InvalidPayload", f"a chat needs `text`: {exc.errors()[0]['msg']}")
            return
        try:
            answer = await self._turn(message, text)
        except ModelError as exc:
            self.ctx.log.warning("chat %s: %s: %s", message.id, type(exc).__name__, exc)
            self.ctx.count(f"{C.COUNTER_LLM_ERRORS}:{type(exc).__name__}")
            self._fail(message, type(exc).__name__, str(exc))
            return
        self.ctx.respond(message, ANSWER, answer)
        user = self.ctx.user
        if user is not None:
            self.ctx.remember(user, text, self.ctx.conversation, {"kind": "chat", "from": user})
            self.ctx.remember(user, answer["text"], self.ctx.conversation,
                              {"kind": "chat", "from": self.ctx.name})

    def _fail(self, message: Envelope, kind: str, text: str) -> None:
        """The asker's error reply (an agent's ask raises RemoteError, the gateway says 502)."""
        self.ctx.count(C.COUNTER_LLM_ERRORS)
        self.ctx.respond(message, C.TYPE_ERROR_REPLY, {"error": kind, "message": text[:1000]})

    async def _turn(self, message: Envelope, text: str) -> dict[str, Any]:
        if self.key_problem is not None:
            raise ModelAuthFailed(self.key_problem)
        settings = self.settings
        deadline = message.meta.get("deadline")
        ends = (time.monotonic() + (deadline - now_ms()) / 1000 - DEADLINE_MARGIN_S
                if type(deadline) is int else time.monotonic() + NO_DEADLINE_S)
        tools = self._tools()
        messages: list[dict[str, Any]] = [{"role": "system", "content": await self._system(text)},
                                          {"role": "user", "content": text}]
        used: list[str] = []
        usage = [0, 0]
        for number in range(settings.max_tool_rounds + 1):
            result = await self._round(number, messages, list(tools.values()), ends)
            usage[0] += result.prompt_tokens
            usage[1] += result.completion_tokens
            if not result.calls:
                if not result.text.strip():
                    raise EmptyAnswer(f"{settings.model} ended its turn without text or a tool call "
                                      f"(finish_reason {result.finish_reason})")
                return {"text": result.text, "model": settings.model, "rounds": number + 1,
                        "tools": used, "usage": {"prompt_tokens": usage[0], "completion_tokens": usage[1]}}
            if number == settings.max_tool_rounds:
                break
            messages.append(result.message())
            for call, answer in zip(result.calls, await self._call_tools(message, result.calls, tools, ends),
                                    strict=True):
                used.append(call.name)
                messages.append({"role": "tool", "tool_call_id": call.id, "content": answer})
        raise ToolRoundLimit(f"{settings.model} still called tools after {settings.max_tool_rounds} "
                             "rounds (llm.max_tool_rounds)")

    async def _round(self, number: int, messages: list[dict[str, Any]], tools: list[Tool],
                     ends: float) -> Round:
        """Round `number` of the turn: the model's answer, kept (ctx.once) until the message
        is recorded as handled. A re-run after a crash replays the rounds the first run
        finished (their text streamed again) and calls the model from the one it lost."""
        called = False

        async def call() -> dict[str, Any]:
            nonlocal called
            called = True
            return (await self._call_model(messages, tools, ends - time.monotonic())).to_json()

        result = Round.from_json(await self.ctx.once(f"round:{number}", call))
        if not called and result.text:
            self.ctx.delta(result.text)  # what the first run streamed, shown again
        return result

    async def _call_model(self, messages: list[dict[str, Any]], tools: list[Tool], budget: float) -> Round:
        if budget <= 0:
            raise ModelTimeout("the asker's deadline passed before the model could be asked again")
        counts: Counter[str] = Counter()
        try:
            result = await self.model.round(messages, tools, self.ctx.delta, budget)
        finally:
            counts[C.COUNTER_LLM_CALLS] += 1
            self._count(counts)
        counts.clear()
        counts[C.COUNTER_LLM_TOKENS_IN] += result.prompt_tokens
        counts[C.COUNTER_LLM_TOKENS_OUT] += result.completion_tokens
        LLM_BUCKETS.observe(counts, C.COUNTER_LLM_MS, result.seconds * 1000)
        self._count(counts)
        return result

    def _count(self, counts: Counter[str]) -> None:
        for name, n in counts.items():
            if n:
                self.ctx.count(name, n)

    async def _call_tools(self, message: Envelope, calls: list[Call], tools: dict[str, Tool],
                          ends: float) -> list[str]:
        """The tools' texts, in the calls' order. Every call is checked before any is sent:
        one the model was not offered, or with arguments that are no JSON object, ends the
        turn with nothing sent."""
        resolved = [resolve(call, tools) for call in calls]
        public = type_of_request(message)
        timeout = max(0.05, min(self.settings.tool_timeout, ends - time.monotonic()))

        async def one(tool: Tool, arguments: dict[str, Any]) -> str:
            problem = tool.mismatch(arguments)
            if problem is not None:
                return problem
            self.ctx.count(C.COUNTER_LLM_TOOL_CALLS)
            try:
                reply = await self.ctx.ask(tool.agent, tool.type, arguments, timeout=timeout,
                                           public=public, key=ask_key(tool, arguments))
            except AskError as exc:
                return error_text(exc)
            return result_text(reply.payload)

        return list(await asyncio.gather(*(one(tool, arguments) for tool, arguments in resolved)))

    def _tools(self) -> dict[str, Tool]:
        refs = self.settings.tools
        if not refs:
            return {}
        names = {ref.partition(":")[0] for ref in refs}
        roles = {a.name: a.role for a in self.ctx.config.agents}
        tools, notes = offered(refs, {name: self.ctx.accepts(name) for name in names}, roles)
        for note in notes:
            if note not in self.noted:  # once per agent process
                self.noted.add(note)
                self.ctx.log.warning("%s", note)
        return tools

    async def _system(self, text: str) -> str:
        """The system prompt, with what Cognition knows of the user (when there is one)."""
        system = self.settings.system
        user = self.ctx.user
        if user is None or self.settings.context_items == 0:
            return system
        items = await self.ctx.acontext(user, query=text, limit=self.settings.context_items)
        # get_context's entries: {item: {content, ...}, score, relevance, recency}, best first
        lines = [str((entry.get("item") or {}).get("content") or "").strip() for entry in items or ()]
        lines = [line[:500] for line in lines if line]
        if not lines:
            return system
        known = "\n".join(f"- {line}" for line in lines)
        return (f"{system}\n\nThe user is {user}. What the mesh remembers of them, most relevant "
                f"first:\n{known}")

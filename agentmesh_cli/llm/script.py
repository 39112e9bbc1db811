"""The pure core of the scripted Chat Completions server (llm/scripted.py), part one: the
script (scenarios of steps), parsed and checked with errors that name the key; the step that
answers a request, chosen; and what that step says (text, tool calls, usage).

How it is said on the wire (a `chat.completion`, the chunks of a stream, an error) is
llm/scripted_wire.py. No I/O in either: tests/unit/test_llm_script.py checks both by tables.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import orjson
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_core import PydanticCustomError

from agentmesh_cli.config_values import describe_error, key_path
from agentmesh_cli.errors import ConfigError

LISTENING = "listening on "  # the server's line once it accepts connections (then its /v1 URL)

Message = dict[str, Any]


# the script ---------------------------------------------------------------------------
class _Strict(BaseModel):
    # strict: "4" is not a chunk count; YAML's 4 and 4.0 are
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


class ErrorSpec(_Strict):
    """An HTTP error answered instead of the step's answer, for the first `times` requests
    that reach the step (all of them when `times` is absent)."""

    status: int = Field(ge=400, le=599)
    message: str = "scripted error"
    retry_after: float | None = Field(default=None, ge=0)
    times: int | None = Field(default=None, ge=1)
    code: str | None = None  # absent: by status (scripted_wire.ERROR_CODES)


class ToolCallSpec(_Strict):
    name: str = Field(min_length=1)
    arguments: str = "{}"  # as sent: an object in the script is turned into its JSON text
    id: str | None = None  # absent: call_<step>_<index>

    @field_validator("arguments", mode="before")
    @classmethod
    def _as_sent(cls, value: Any) -> Any:
        # a string stays as written, so a script can send arguments that are not JSON
        if isinstance(value, str):
            return value
        if isinstance(value, dict):
            try:
                return orjson.dumps(value).decode()
            except orjson.JSONEncodeError as exc:
                raise PydanticCustomError("arguments", "cannot be sent as JSON: {reason}",
                                          {"reason": str(exc)}) from exc
        raise PydanticCustomError("arguments", "an object (sent as its JSON text) or a string (sent as is)")


class UsageSpec(_Strict):
    prompt_tokens: int | None = Field(default=None, ge=0)
    completion_tokens: int | None = Field(default=None, ge=0)


class Step(_Strict):
    text: str | None = None
    tool_calls: list[ToolCallSpec] = Field(default_factory=list)
    delay: float = Field(default=0.0, ge=0)
    chunks: int | None = Field(default=None, ge=1)  # absent: one piece per word
    chunk_delay: float = Field(default=0.0, ge=0)
    stall_after: int | None = Field(default=None, ge=0)
    error: ErrorSpec | None = None
    usage: UsageSpec | None = None


class Scenario(_Strict):
    name: str | None = None
    when: str = ""  # a case-insensitive substring of the first user message; "" matches all
    steps: list[Step] = Field(min_length=1)


class Script(_Strict):
    model: str = Field(default="scripted", min_length=1)
    scenarios: list[Scenario] = Field(min_length=1)


def load_script(text: str, source: str) -> Script:
    """A script from the text of a YAML or JSON file; ConfigError naming `source`."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not YAML or JSON: {exc}") from exc
    return parse_script(data, source)


def parse_script(data: Any, source: str) -> Script:
    """Validate a parsed script; one ConfigError naming the key path of every problem."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: a script is a mapping with `scenarios` (and `model`)")
    try:
        return Script.model_validate(data)
    except ValidationError as exc:
        problems = [f"{source}: {key_path(error['loc'])}: {describe_error(error)}"
                    for error in exc.errors()]
        raise ConfigError("\n".join(problems)) from exc


# a request's messages -----------------------------------------------------------------
def message_text(message: Message) -> str:
    """The text of a message: its string content, or its text parts joined by newlines."""
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(part["text"] for part in content
                         if isinstance(part, dict) and isinstance(part.get("text"), str))
    return ""


def first_user(messages: list[Message]) -> int | None:
    """The index of the first user message: the one that picks the scenario."""
    return next((i for i, message in enumerate(messages) if message.get("role") == "user"), None)


# choosing the step --------------------------------------------------------------------
@dataclass(frozen=True)
class Choice:
    scenario_index: int
    scenario: Scenario
    step_index: int
    step: Step


def choose(script: Script, messages: list[Message]) -> Choice | None:
    """The first scenario whose `when` is in the first user message, and its step for the
    number of assistant messages after that message (the last step past the end)."""
    first = first_user(messages)
    opening = message_text(messages[first]).lower() if first is not None else ""
    after = messages[first + 1:] if first is not None else messages
    rounds = sum(1 for message in after if message.get("role") == "assistant")
    for index, scenario in enumerate(script.scenarios):
        if scenario.when.lower() in opening:
            step_index = min(rounds, len(scenario.steps) - 1)
            return Choice(index, scenario, step_index, scenario.steps[step_index])
    return None


# the answer ---------------------------------------------------------------------------
@dataclass(frozen=True)
class ToolCall:
    id: str
    name: str
    arguments: str


@dataclass(frozen=True)
class Answer:
    content: str | None  # None only for tool calls without text
    tool_calls: tuple[ToolCall, ...]
    usage: dict[str, int]

    @property
    def finish_reason(self) -> str:
        return "tool_calls" if self.tool_calls else "stop"


PLACEHOLDER = re.compile(r"\{(tool_results|user|round)\}")


def render_text(template: str, messages: list[Message], round_index: int) -> str:
    """The step's text with {tool_results}, {user} and {round} filled in, in one pass (a
    user message that contains "{round}" stays as written); other braces are kept."""
    if "{" not in template:
        return template
    values = {
        "tool_results": "; ".join(message_text(m) for m in messages if m.get("role") == "tool"),
        "user": next((message_text(m) for m in reversed(messages) if m.get("role") == "user"), ""),
        "round": str(round_index),
    }
    return PLACEHOLDER.sub(lambda match: values[match.group(1)], template)


def build_answer(choice: Choice, messages: list[Message]) -> Answer:
    """What the chosen step says to these messages. Usage counts words, not tokens: the
    prompt's text and the answer's (+1 per tool call), unless the step sets them."""
    step = choice.step
    calls = tuple(ToolCall(call.id or f"call_{choice.step_index}_{index}", call.name, call.arguments)
                  for index, call in enumerate(step.tool_calls))
    content = None if step.text is None and calls else render_text(step.text or "", messages,
                                                                     choice.step_index)
    prompt = sum(len(message_text(message).split()) for message in messages)
    completion = len((content or "").split()) + len(calls)
    if step.usage is not None:
        prompt = step.usage.prompt_tokens if step.usage.prompt_tokens is not None else prompt
        completion = step.usage.completion_tokens if step.usage.completion_tokens is not None else completion
    usage = {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
    return Answer(content, calls, usage)

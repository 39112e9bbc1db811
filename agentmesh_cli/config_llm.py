"""mesh.yaml's `llm:` settings (pure): the defaults of every agent of the built-in `llm`
role, and each agent's own `llm:` over them (docs/llm.md).

    llm:                                  # defaults for every llm agent
      base_url: http://127.0.0.1:11434/v1 # any OpenAI-compatible Chat Completions server
      model: llama3.2
      api_key: ${OPENAI_API_KEY}          # read from the agent's environment, never logged
    agents:
      - {name: Concierge, role: llm, concurrency: 16, llm: {tools: [Sales, "Support:ticket"]}}

Every key is optional at both levels; an agent's key wins over the section's, the
section's over the built-in default (`Llm.resolve`). `tools` is an allowlist: the model
is offered only the agents (all the types each declares in `accepts`) and `agent:type`
pairs named there, and nothing when it is empty.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from agentmesh_cli import constants as C
from agentmesh_cli.config_values import Duration

TOOL_REF = re.compile(C.NAME_PATTERN[:-1] + r"(?::([A-Za-z0-9_.-]{1,64}))?$")
DEFAULT_SYSTEM = ("You are {name}, an agent of the {mesh} mesh. Answer the user briefly and "
                  "plainly. When you need a fact another agent knows, call its tool; never "
                  "make up what a tool would tell you.")
DEFAULT_MAX_TOOL_ROUNDS = 4
DEFAULT_TIMEOUT_S = 60.0
DEFAULT_MAX_RETRIES = 2
DEFAULT_TOOL_TIMEOUT_S = 30.0
DEFAULT_CONTEXT_ITEMS = 5


class Llm(BaseModel):
    """`llm:` (the defaults) or `agents[].llm` (one agent's): every key optional."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    base_url: str | None = None  # None: the SDK's own (api.openai.com, or $OPENAI_BASE_URL)
    model: str | None = Field(None, min_length=1)
    api_key: str | None = None  # ${NAME} is expanded in the agent's process; None: "unused"
    system: str | None = None  # {name} and {mesh} are replaced
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    max_tokens: int | None = Field(None, ge=1)
    max_tool_rounds: int | None = Field(None, ge=0, le=50)
    tools: list[Annotated[str, Field(min_length=1)]] | None = None
    timeout: Duration | None = None  # one model call (the SDK's timeout, per attempt)
    max_retries: int | None = Field(None, ge=0, le=10)  # the SDK's retries (429, 5xx, connection)
    tool_timeout: Duration | None = None  # one tool call (an ask)
    context_items: int | None = Field(None, ge=0, le=50)  # Cognition items read before the first call

    @field_validator("tools")
    @classmethod
    def _tool_refs(cls, tools: list[str] | None) -> list[str] | None:
        for ref in tools or ():
            if not TOOL_REF.match(ref):
                raise ValueError(f"{ref!r} is neither an agent name nor 'agent:type'")
        return tools

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, url: str | None) -> str | None:
        if url is not None and not re.match(r"^https?://[^/\s]+", url):
            raise ValueError(f"{url!r} is not an http(s) URL like http://127.0.0.1:11434/v1")
        return url

    def resolve(self, agent: Llm | None, name: str, mesh: str) -> LlmSettings:
        """The settings of agent `name`: its own keys over these defaults over the built-in."""
        own: dict[str, Any] = agent.model_dump(exclude_none=True) if agent is not None else {}
        merged = {**self.model_dump(exclude_none=True), **own}
        system = merged.get("system", DEFAULT_SYSTEM)
        return LlmSettings(
            base_url=merged.get("base_url"),
            model=merged.get("model", ""),
            api_key=merged.get("api_key"),
            system=system.replace("{name}", name).replace("{mesh}", mesh),
            temperature=merged.get("temperature"),
            max_tokens=merged.get("max_tokens"),
            max_tool_rounds=merged.get("max_tool_rounds", DEFAULT_MAX_TOOL_ROUNDS),
            tools=tuple(merged.get("tools", ())),
            timeout=merged.get("timeout", DEFAULT_TIMEOUT_S),
            max_retries=merged.get("max_retries", DEFAULT_MAX_RETRIES),
            tool_timeout=merged.get("tool_timeout", DEFAULT_TOOL_TIMEOUT_S),
            context_items=merged.get("context_items", DEFAULT_CONTEXT_ITEMS),
        )


@dataclass(frozen=True)
class LlmSettings:
    """One llm agent's settings, every default applied (`api_key` still unexpanded)."""

    base_url: str | None
    model: str
    api_key: str | None
    system: str
    temperature: float | None
    max_tokens: int | None
    max_tool_rounds: int
    tools: tuple[str, ...]
    timeout: float
    max_retries: int
    tool_timeout: float
    context_items: int


def tool_ref(ref: str) -> tuple[str, str | None]:
    """"Inventory" -> ("Inventory", None): every type it accepts; "Support:ticket" ->
    ("Support", "ticket")."""
    agent, _, type_ = ref.partition(":")
    return agent, type_ or None

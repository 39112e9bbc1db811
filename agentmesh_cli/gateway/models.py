"""The gateway's request and answer bodies (pydantic models, published in its OpenAPI), and
reading a JSON body into one: a 400 naming the first field that does not fit."""

from __future__ import annotations

from typing import Annotated, Any, TypeVar

from fastapi import Header, Path
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from agentmesh_cli import convlog
from agentmesh_cli.envelope import NAME_PATTERN
from agentmesh_cli.errors import BadRequest

TYPE_PATTERN = r"^[A-Za-z0-9_.:-]{1,128}$"
USER_PATTERN = r"^[A-Za-z0-9_.@:-]{1,128}$"
EVENT_ID_PATTERN = r"^\s*[0-9]{1,20}(-[0-9]{1,20})?\s*$"  # a stream id: what convlog.stream_id reads
IDEMPOTENCY_KEY = Annotated[str | None, Header(
    alias="Idempotency-Key", min_length=1, max_length=255,
    description="A retry with the same key (and the same user) is the same request: the agent "
                "handles it once and a repeated ask gets its reply again.")]
AGENT = Annotated[str, Path(pattern=NAME_PATTERN, description="The agent's name.")]


class Send(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: str = Field(pattern=TYPE_PATTERN, description="The message type the agent handles.")
    payload: dict[str, Any] = Field(default_factory=dict, description="A JSON object.")
    conversation: str | None = Field(None, pattern=convlog.CONVERSATION_PATTERN, description=(
        "The conversation it belongs to (its order at the agent, its events). None: a new one."))
    user: str | None = Field(None, pattern=USER_PATTERN, description=(
        "Service token only: the user the request acts for. A user token acts for its user."))


class Ask(Send):
    timeout: float | None = Field(None, gt=0, description="Seconds to wait for the reply "
                                  "(default gateway.ask_timeout, at most gateway.max_ask_timeout).")


class Reply(BaseModel):
    id: str
    type: str
    payload: dict[str, Any]
    conversation: str
    in_reply_to: str = Field(description="The request's id.")
    round_trip_ms: float
    from_: str = Field(alias="from")


class Accepted(BaseModel):
    id: str = Field(description="The envelope's id.")
    conversation: str


class Conversation(BaseModel):
    conversation: str
    owner: str | None


class ReplicaEntry(BaseModel):
    name: str
    state: str = Field(description="up, down, or declared.")
    concurrency: int | None = None
    in_flight: int | None = None


class AgentEntry(BaseModel):
    name: str
    role: str
    state: str = Field(description="up (heartbeats arrive), down, or declared (in mesh.yaml, never joined).")
    capabilities: list[str]
    concurrency: int | None = None
    in_flight: int | None = None
    accepts: dict[str, Any] = Field(
        description="Message type -> JSON schema of its payload, as the role declares.")
    replicas: list[ReplicaEntry] | None = Field(None, description=(
        "A replica group (agents[].replicas in mesh.yaml) only: its replicas. The group is "
        "asked by its name; each conversation goes to one replica."))


class Agents(BaseModel):
    agents: list[AgentEntry]


class NewConversation(BaseModel):
    model_config = ConfigDict(extra="forbid")

    user: str | None = Field(None, pattern=USER_PATTERN, description=(
        "Service token only: the user it belongs to (a user token: its user)."))


M = TypeVar("M", bound=BaseModel)


def parsed(model: type[M], data: Any) -> M:
    """The body as `model`, or a 400 naming the first field that does not fit."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        argument = ".".join(str(part) for part in first["loc"]) or "body"
        raise BadRequest(f"argument {argument!r}: {first['msg']}", {"argument": argument}) from None


def body_of(model: type[BaseModel], required: bool = True) -> dict[str, Any]:
    """OpenAPI `requestBody` of an endpoint that reads its JSON body itself (read_json: a
    missing Content-Type is JSON, another one a 415)."""
    return {"requestBody": {"required": required, "content": {
        "application/json": {"schema": model.model_json_schema()}}}}

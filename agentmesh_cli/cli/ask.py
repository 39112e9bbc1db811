"""`agentmesh ask`: ask an agent as the operator and print its reply."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from agentmesh_cli.cli import printer
from agentmesh_cli.cli.common import ConfigOption, json_object, mesh_from


def ask(
    agent: Annotated[str, typer.Argument(help="The agent to ask.")],
    type_: Annotated[str, typer.Argument(metavar="TYPE", help="The request's message type.")],
    payload: Annotated[str, typer.Argument(help="JSON object: the request's payload.")] = "{}",
    timeout: Annotated[float, typer.Option(min=0.001, help="Seconds to wait for the reply.")] = 10.0,
    conversation: Annotated[str | None, typer.Option(
        help="The conversation the request belongs to (its order at the agent, its events).")] = None,
    user: Annotated[str | None, typer.Option(
        help="The user the request acts for (the agent reads it as meta.user).")] = None,
    follow: Annotated[bool, typer.Option(
        "--follow", help="Print the conversation's events as they come (one JSON line each), "
                         "then the reply.")] = False,
    config: ConfigOption = None,
) -> None:
    """Ask an agent and print its reply as one JSON object (type, from, payload, round_trip_ms).

    The request goes to the agent's inbox as the operator (`cli`), with a reply address of
    its own; the agent answers with `ctx.reply`. Exit codes: 0 a reply, 1 an error reply
    (the agent's handler raised) or the broker did not take the request, 2 a usage or
    config error, 3 no reply within --timeout, 4 an agent that never joined and is not
    in mesh.yaml.

    With --follow the request goes in a conversation (--conversation, or a new one) and
    every event of it is printed as it comes, as the gateway's GET
    /conversations/ID/events streams them: the request, what the agents show the user
    (public messages, deltas), the reply.

    Example: agentmesh ask Inventory check_stock '{"order_id": "o-1", "items": {"cable": 2}}'
    """
    import uuid

    from agentmesh_cli.asker import Asker, Follow, round_trip
    from agentmesh_cli.convlog import is_conversation_id
    from agentmesh_cli.errors import ConfigError, WaitTimeout
    from agentmesh_cli.services.protocol import ID_PATTERN, ID_RULE
    from agentmesh_cli.waiting import wait_until

    if user is not None and not ID_PATTERN.fullmatch(user):
        raise ConfigError(f"--user {user!r} is not a user id: {ID_RULE}")
    if conversation is not None and not is_conversation_id(conversation):
        raise ConfigError(f"--conversation {conversation!r} is not a conversation id: 1 to 128 of "
                          "A-Z a-z 0-9 . _ : -, starting with a letter or digit")
    mesh = mesh_from(config)
    body = json_object(payload, "payload")
    if follow and not conversation:
        conversation = f"c-{uuid.uuid4().hex[:24]}"
    asker = Asker(mesh)
    follower = Follow(asker, conversation) if follow and conversation else None

    replied = False

    def show() -> bool:
        """Print what came; True once the reply's own event was printed."""
        nonlocal replied
        for event in follower.poll() if follower is not None else ():
            printer.out(json.dumps(event))
            data = event.get("data") or {}
            replied = replied or (event.get("event") == "message"
                                  and data.get("in_reply_to") == asker.request_id)
        return replied

    try:
        reply, ms = round_trip(asker, agent, type_, body, timeout, conversation, user,
                               show if follower is not None else None)
        if follower is not None:  # the agent appends its reply's event just after sending it
            try:
                wait_until(show, 2.0, "the reply's event", interval=0.05)
            except WaitTimeout:
                pass  # the reply is printed below either way
    finally:
        if follower is not None:
            follower.close()
        asker.close()
    printer.out(json.dumps({"type": reply.type, "from": reply.from_agent_id, "payload": reply.payload,
                            "round_trip_ms": round(ms, 1)}))


def register(app: typer.Typer) -> None:
    app.command()(ask)

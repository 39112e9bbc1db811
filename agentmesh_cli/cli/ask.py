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
        help="The conversation the request belongs to (its order at the agent).")] = None,
    config: ConfigOption = None,
) -> None:
    """Ask an agent and print its reply as one JSON object (type, from, payload, round_trip_ms).

    The request goes to the agent's inbox as the operator (`cli`), with a reply address of
    its own; the agent answers with `ctx.reply`. Exit codes: 0 a reply, 1 an error reply
    (the agent's handler raised) or the broker did not take the request, 2 a usage or
    config error, 3 no reply within --timeout, 4 an agent that never joined and is not
    in mesh.yaml.

    Example: agentmesh ask Inventory check_stock '{"order_id": "o-1", "items": {"cable": 2}}'
    """
    from agentmesh_cli.asker import Asker, round_trip

    mesh = mesh_from(config)
    body = json_object(payload, "payload")
    asker = Asker(mesh)
    try:
        reply, ms = round_trip(asker, agent, type_, body, timeout, conversation)
    finally:
        asker.close()
    printer.out(json.dumps({"type": reply.type, "from": reply.from_agent_id, "payload": reply.payload,
                            "round_trip_ms": round(ms, 1)}))


def register(app: typer.Typer) -> None:
    app.command()(ask)

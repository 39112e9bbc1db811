"""Commands that run one role process each (what supervisord starts): agent, topology."""

from __future__ import annotations

from typing import Annotated

import typer

from agentmesh_cli.cli.common import ConfigOption, console, mesh_from, role_logging

topology_app = typer.Typer(help="The topology manager, and queries on its graph.")


def agent(
    name: Annotated[str, typer.Option(help="Agent name (its id) from mesh.yaml.")],
    role: Annotated[str | None, typer.Option(help="Role; default: the one in mesh.yaml.")] = None,
    capabilities: Annotated[str | None, typer.Option(help="Comma-separated capabilities.")] = None,
    config: ConfigOption = None,
) -> None:
    """Run one agent process (supervisord runs one per agent of mesh.yaml).

    Example: agentmesh agent --name Sales --role sales --capabilities order_processing,upselling
    """
    from agentmesh_cli.agent.roles import resolve_role
    from agentmesh_cli.agent.runtime import AgentRuntime

    role_logging()
    mesh = mesh_from(config)
    caps = [c for c in capabilities.split(",") if c] if capabilities is not None else None
    spec = mesh.config.agent_spec(name, role, caps)
    raise typer.Exit(AgentRuntime(mesh, spec, resolve_role(spec.role)).run())


@topology_app.callback(invoke_without_command=True)
def topology(ctx: typer.Context, config: ConfigOption = None) -> None:
    """Run the topology manager (without a subcommand).

    Example: agentmesh topology --config mesh.yaml
    """
    if ctx.invoked_subcommand is not None:
        return
    from agentmesh_cli.topology.manager import TopologyManager

    role_logging()
    raise typer.Exit(TopologyManager(mesh_from(config)).run())


@topology_app.command()
def route(
    source: Annotated[str, typer.Argument(help="From agent.")],
    target: Annotated[str, typer.Argument(help="To agent.")],
    config: ConfigOption = None,
) -> None:
    """Cheapest path between two agents on the latest snapshot (edge cost 1/weight).

    Example: agentmesh topology route Support Inventory
    """
    from agentmesh_cli.errors import TopologyError
    from agentmesh_cli.store import Store
    from agentmesh_cli.topology.graph import SlimeMoldGraph
    from agentmesh_cli.topology.manager import rules_from

    mesh = mesh_from(config)
    snapshot = Store(mesh.config.redis.resolved_url, mesh.config.mesh).load_snapshot()
    if not snapshot:
        raise TopologyError("no topology snapshot yet: is the topology manager running?")
    graph = SlimeMoldGraph.from_dict(snapshot["graph"], rules_from(mesh.config.topology))
    path, cost = graph.route(source, target)
    console.print(f"{' -> '.join(path)}  (cost {cost:.3f})", highlight=False)


def register(app: typer.Typer) -> None:
    app.command()(agent)
    app.add_typer(topology_app, name="topology")

"""Commands that run one role process each (what supervisord starts): agent, topology."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from agentmesh_cli import constants as C
from agentmesh_cli.cli import printer
from agentmesh_cli.cli.common import ConfigOption, mesh_from, role_logging
from agentmesh_cli.topology.export import ExportFormat  # light: igraph only when exporting

# its help is the callback's docstring, so `agentmesh topology --help` shows the example
topology_app = typer.Typer()


def agent(
    name: Annotated[str, typer.Option(help="Agent name (its id) from mesh.yaml.")],
    role: Annotated[str | None, typer.Option(help="Role; default: the one in mesh.yaml.")] = None,
    capabilities: Annotated[str | None, typer.Option(help="Comma-separated capabilities.")] = None,
    config: ConfigOption = None,
) -> None:
    """Run one agent process (supervisord runs one per agent of mesh.yaml).

    Example: agentmesh agent --name Sales --role sales --capabilities order_processing,upselling
    """
    # the same body as the lean entry supervisord runs (`python -m agentmesh_cli.agent`)
    from agentmesh_cli.agent.__main__ import run_agent

    raise typer.Exit(run_agent(name, role, capabilities, config))


@topology_app.callback(invoke_without_command=True)
def topology(ctx: typer.Context, config: ConfigOption = None) -> None:
    """Run the topology manager, or query its graph (route, export).

    Without a subcommand: run the manager (supervisord runs one per mesh).

    Example: agentmesh topology --config mesh.yaml
    """
    if ctx.invoked_subcommand is not None:
        return
    from agentmesh_cli.topology.manager import TopologyManager

    mesh = mesh_from(config)
    role_logging(mesh, C.PROGRAM_TOPOLOGY)
    raise typer.Exit(TopologyManager(mesh).run())


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
    from agentmesh_cli.topology.graph import SlimeMoldRules
    from agentmesh_cli.topology.state import snapshot_graph

    mesh = mesh_from(config)
    snapshot = Store(mesh.redis_url, mesh.config.mesh).load_snapshot()
    if not snapshot:
        raise TopologyError("no topology snapshot yet: is the topology manager running?")
    graph = snapshot_graph(snapshot, SlimeMoldRules.of(mesh.config.topology))
    path, cost = graph.route(source, target)
    printer.out(f"{' -> '.join(path)}  (cost {cost:.3f})")


@topology_app.command()
def export(
    fmt: Annotated[ExportFormat, typer.Option("--format", "-f", help="Output format.")] = ExportFormat.svg,
    output: Annotated[Path | None, typer.Option(
        "--output", "-o", help="File to write (default: stdout).", show_default=False)] = None,
    by_group: Annotated[bool, typer.Option(
        "--by-group", help="Collapse each replica group into one node named after the group: "
        "parallel edges become one, their usage summed and their weight the highest; edges "
        "between replicas of one group are left out.")] = False,
    config: ConfigOption = None,
) -> None:
    """Write the latest topology snapshot as a picture (SVG) or a graph file (GraphML, DOT).

    Edge width follows the weight; nodes are labelled with name and role. A replica of a
    group (Support-2 of Support) carries its group's name (`group`); --by-group draws each
    group as one node.

    Example: agentmesh topology export -o topology.svg
    """
    from agentmesh_cli.errors import AgentMeshError, TopologyError
    from agentmesh_cli.store import Store
    from agentmesh_cli.topology.export import by_group as collapse
    from agentmesh_cli.topology.export import export_text, view_from_snapshot

    mesh = mesh_from(config)
    store = Store(mesh.redis_url, mesh.config.mesh)
    snapshot = store.load_snapshot()
    if not snapshot:
        raise TopologyError("no topology snapshot yet: is the topology manager running?")
    registry = {name: str(record.get("role", "")) for name, record in store.agents().items()}
    view = view_from_snapshot(snapshot, mesh.config.mesh, registry, mesh.config.group_name)
    text = export_text(collapse(view) if by_group else view, fmt)
    if output is None:
        printer.write(text)
        return
    try:
        output.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise AgentMeshError(f"cannot write {output}: {exc.strerror or exc}") from exc


def register(app: typer.Typer) -> None:
    app.command()(agent)
    app.add_typer(topology_app, name="topology")

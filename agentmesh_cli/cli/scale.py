"""`agentmesh scale`: change how many replicas a group of the running mesh runs."""

from __future__ import annotations

from typing import Annotated

import typer

from agentmesh_cli import constants as C
from agentmesh_cli.cli import printer
from agentmesh_cli.cli.common import ConfigOption, mesh_from


def scale(
    group: Annotated[str, typer.Argument(help="A replica group of mesh.yaml (an agent with `replicas`).")],
    replicas: Annotated[int, typer.Argument(min=1, help="How many replicas it should run.")],
    config: ConfigOption = None,
    drain_timeout: Annotated[float, typer.Option(
        min=0, help="Scaling down: seconds to wait for the leaving replicas to finish their "
                    "work; what is unread after that is handed over to the others.")
    ] = C.DEFAULT_DRAIN_TIMEOUT_S,
    timeout: Annotated[float, typer.Option(help="Scaling up: seconds to wait for the new replicas "
                                                "to be ready.")] = 60.0,
) -> None:
    """Run N replicas of a group in the running mesh (mesh.yaml stays the declared default).

    Up: the new replicas start and `scale` waits until they are ready. Down: the leaving
    replicas (the highest-numbered) get no new conversations, finish what they have, stop,
    and what they left unread is handed over to the group, with nothing lost or handled
    twice. `status` shows a count that differs from mesh.yaml's; the next `up` after a
    `down` starts mesh.yaml's count again.

    Example: agentmesh scale Support 5
    Example: agentmesh scale Support 2 --drain-timeout 60
    """
    from agentmesh_cli.scaling import scale as run

    mesh = mesh_from(config)
    result = run(mesh, group, replicas, drain_timeout, timeout, printer.say)
    if result.before == result.after:
        printer.out(f"{group} runs {replicas} replicas already")
        return
    declared = mesh.config.groups()[group].declared_replicas
    note = "" if result.after == declared else f" (mesh.yaml declares {declared})"
    printer.ok(f"{group}: {result.before} -> {result.after} replicas{note}")


def autoscale(config: ConfigOption = None) -> None:
    """Run the autoscaler (supervisord runs one when a group has replicas: {min, max, ...}).

    Example: agentmesh autoscale --config mesh.yaml
    """
    from agentmesh_cli.autoscaler import Autoscaler
    from agentmesh_cli.cli.common import role_logging

    mesh = mesh_from(config)
    role_logging(mesh, C.PROGRAM_AUTOSCALER)
    raise typer.Exit(Autoscaler(mesh).run())


def inbox_reader(config: ConfigOption = None) -> None:
    """Run the host's inbox reader (supervisord runs one per host with kafka.inbox_reader: host).

    It fetches the inboxes of this host's agents once and hands each agent its records
    over a local socket (docs/architecture.md, Inbox readers).

    Example: agentmesh inbox-reader --config mesh.yaml
    """
    from agentmesh_cli.cli.common import role_logging
    from agentmesh_cli.inbox_host import InboxHost

    mesh = mesh_from(config).for_host(None, required=False)[0]
    role_logging(mesh, C.PROGRAM_INBOX)
    raise typer.Exit(InboxHost(mesh).run())


def register(app: typer.Typer) -> None:
    app.command()(scale)
    app.command()(autoscale)
    app.command("inbox-reader")(inbox_reader)

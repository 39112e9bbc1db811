"""Commands that run and inspect a whole mesh: up, down, status, send.

`send` and `status --json` run in scripts' loops: what only `up`, `down` or the dashboard
need (lifecycle, rich) is imported inside them (cli/lazy.py).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from agentmesh_cli import constants as C
from agentmesh_cli.cli import printer
from agentmesh_cli.cli.common import ConfigOption, json_object, mesh_from
from agentmesh_cli.errors import AgentMeshError

if TYPE_CHECKING:
    from agentmesh_cli.lifecycle import ProgramState
    from agentmesh_cli.mesh import Mesh
    from agentmesh_cli.store import Store

HostOption = Annotated[str | None, typer.Option(
    "--host", show_default=False,
    help="With `hosts` in mesh.yaml: the host whose programs to act on (default: "
         "$AGENTMESH_HOST, else the host named like this machine).")]


def host_mesh(config: Path | None, host: str | None) -> Mesh:
    """The mesh, as `host` runs it when mesh.yaml spreads programs over hosts; says
    which host was chosen when --host was not given."""
    mesh, why = mesh_from(config).for_host(host)
    if why:
        printer.say(f"host {mesh.host} ({why})")
    return mesh


def up(
    config: ConfigOption = None,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for every program to be ready.")] = 60.0,
    host: HostOption = None,
) -> None:
    """Start the mesh (or apply a changed mesh.yaml) and wait until every program is ready.

    With `hosts` in mesh.yaml: this host's programs only, under its own supervisord.

    Example: agentmesh up --config mesh.yaml --timeout 90
    """
    from rich.live import Live

    from agentmesh_cli import lifecycle
    from agentmesh_cli.dashboard.views import up_table
    from agentmesh_cli.errors import NotReadyError

    mesh = host_mesh(config, host)
    console_err = printer.console(err=True)
    live = Live(console=console_err, transient=False, auto_refresh=False)
    seen: dict[str, bool] = {}

    def progress(states: list[ProgramState]) -> None:
        if console_err.is_terminal:
            live.update(up_table(states), refresh=True)
            return
        for s in states:  # not a terminal: one line when a program becomes ready
            if s.ready and not seen.get(s.name):
                detail = f"pid {s.pid}" if s.pid else s.state
                printer.say(f"ready  {s.name} ({detail})")
            seen[s.name] = s.ready

    notes: list[str] = []  # said once the live table is done
    try:
        try:
            with live if console_err.is_terminal else _null():
                states, changes = lifecycle.up(mesh, timeout, progress, notes.append)
        finally:
            for line in notes:
                printer.say(line)
    except NotReadyError as exc:
        printer.error(str(exc))
        if exc.log_tail:
            log = (mesh.logs_dir / f"{exc.program}.log").relative_to(mesh.root)
            printer.rule(f"last lines of {log}")
            printer.say(exc.log_tail.rstrip())
        raise typer.Exit(1) from exc
    summary = ", ".join(f"{k} {len(v)}" for k, v in changes.items() if v) or "no changes"
    printer.ok(f"mesh {mesh.config.mesh} is up{_on(mesh)}",
               f": {len(states)} programs ready ({summary}). "
               f"See `agentmesh status` or `supervisorctl -c {mesh.supervisord_conf} status`.")


class _null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def _on(mesh: Mesh) -> str:
    return f" on host {mesh.host}" if mesh.host else ""


def down(
    config: ConfigOption = None,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for each tier to stop.")] = 30.0,
    drain_timeout: Annotated[float, typer.Option(
        min=0, help="Seconds to wait for the mesh to go quiet before the agents stop; what is "
                    "still unread then is saved (embedded broker) and replayed by the next "
                    "`up`.")] = C.DEFAULT_DRAIN_TIMEOUT_S,
    now: Annotated[bool, typer.Option(
        "--now", help="Stop at once: no drain, nothing saved (with the embedded broker, "
                      "messages not yet handled are lost).")] = False,
    host: HostOption = None,
) -> None:
    """Drain the mesh, then stop agents, managers, services and infra, then supervisord.

    The drain: intake stops (demo workloads pause, `send` and `propose` are refused), and
    `down` waits until every agent has handled every message sent to it, printing what is
    left every second, for up to --drain-timeout seconds. With the embedded broker, which
    keeps messages in memory only, what is still unread then is saved to
    .agentmesh/unread.jsonl and sent again by the next `up`. --now skips all of that.

    With `hosts` in mesh.yaml: this host's programs and supervisord only, without a drain
    (the other hosts go on; the external Kafka keeps the messages).

    Example: agentmesh down --drain-timeout 60
    Example: agentmesh down --now
    """
    from agentmesh_cli import lifecycle

    mesh = host_mesh(config, host)

    def progress(tier: str, names: list[str]) -> None:
        printer.say(f"stopping {tier}: {', '.join(names)}")

    if now:
        lost = " (messages not yet handled are lost with the embedded broker)" if (
            mesh.config.kafka.embedded) else ""
        printer.say(f"--now: no drain, nothing saved{lost}")
    elif mesh.host is not None:
        printer.say(f"host {mesh.host}: no drain (the other hosts go on; messages to this "
                    "host's agents wait in Kafka)")
    drain = None if now else drain_timeout
    if lifecycle.down(mesh, timeout, progress, drain, printer.say):
        printer.ok(f"mesh {mesh.config.mesh} is down{_on(mesh)}")
    else:
        printer.out(f"mesh {mesh.config.mesh} is not running{_on(mesh)}")


def status(
    config: ConfigOption = None,
    once: Annotated[bool, typer.Option("--once", help="Print one frame and exit.")] = False,
    as_json: Annotated[bool, typer.Option(
        "--json", help="Print one JSON object (docs/status.schema.json) and exit.")] = False,
    interval: Annotated[float, typer.Option(
        min=0.1, help="Seconds between frames of the live dashboard.")] = 1.0,
    host: HostOption = None,
) -> None:
    """Show the mesh's processes, agents, topology, proposals, services and infra.

    On a terminal a live dashboard (Ctrl+C quits), else one frame. Exit code 1 when a
    program is not RUNNING. With `hosts` in mesh.yaml the processes are this host's; the
    rest is mesh-wide.

    Example: agentmesh status --json | jq .topology.stats
    """
    from agentmesh_cli.status import all_running, collect

    mesh = host_mesh(config, host)
    if as_json:
        data: dict[str, Any] | None = collect(mesh)
        printer.out(json.dumps(data, indent=2))
    elif once or not printer.is_terminal():
        from agentmesh_cli.dashboard.views import render_status

        data = collect(mesh)
        printer.show(render_status(data))
    else:
        from agentmesh_cli.dashboard.live import watch

        data = watch(mesh, printer.console(), interval)
    if data is None or not all_running(data):
        raise typer.Exit(1)


def send(
    sender: Annotated[str, typer.Argument(metavar="FROM", help="Sending agent's name.")],
    recipient: Annotated[str, typer.Argument(metavar="TO", help="Recipient agent's name.")],
    payload: Annotated[str, typer.Argument(help="JSON object: the message payload.")] = "{}",
    type_: Annotated[str, typer.Option("--type", help="Message type.")] = "message",
    config: ConfigOption = None,
) -> None:
    """Inject one agent-to-agent message (for demos and scripts).

    Example: agentmesh send Sales Inventory '{"order_id": "o-1", "items": {"cable": 2}}' --type check_stock
    """
    import dataclasses
    import time

    from agentmesh_cli import events
    from agentmesh_cli.bus import Bus
    from agentmesh_cli.dozing import ringing
    from agentmesh_cli.drain import refuse_while_draining
    from agentmesh_cli.replicas import Groups
    from agentmesh_cli.routing.dispatch import Dispatch
    from agentmesh_cli.signing import mesh_signer
    from agentmesh_cli.store import Store

    mesh = mesh_from(config)
    body = json_object(payload, "payload")
    store = Store(mesh.redis_url, mesh.config.mesh, timeout=1.0)
    try:
        refuse_while_draining(store, "`send`")
        _warn_if_unknown(store, recipient)
        bus = Bus(mesh.config.kafka, client_id="agentmesh-send", signer=mesh_signer(mesh))
        ringing(bus, store)  # a sleeping recipient is rung (dozing.py)
        # a group's name goes to one replica, role:<role> to every agent of the role
        dispatch = Dispatch(mesh.config, Groups(store), sender, time.monotonic)
        envelope = events.message(sender, recipient, type_, body, meta={"injected": True})
        targets = dispatch.targets(recipient, None)
        sent = []
        for target in targets:
            partition = bus.send_message(dataclasses.replace(envelope, to_agent_id=target))
            sent.append(f"{target} (partition {partition})")
        if bus.flush(10) or bus.delivery_failures:
            from agentmesh_cli.errors import BusError

            raise BusError(f"message not delivered to {mesh.config.kafka.bootstrap} (is the mesh up?)")
        for target in targets:
            _count_sent(store, target)
    finally:
        store.close()
    printer.out(f"sent {envelope.id} to {', '.join(sent)}")


def _warn_if_unknown(store: Store, recipient: str) -> None:
    """A message to an agent that is not registered is still sent (it may come later)."""
    try:
        if recipient not in store.agents():
            printer.warn(f"{recipient} is not a registered agent; the message waits in its "
                         "inbox partition")
    except AgentMeshError:
        pass  # Redis down: sending does not need it


def _count_sent(store: Store, recipient: str) -> None:
    """Count the message as the agents count theirs, for the inbox backlog in `status`
    and the drain of `down`."""
    from collections import Counter

    try:
        store.add_counters(C.CLI_COUNTER_OWNER, Counter({C.sent_to_counter(recipient): 1}))
    except AgentMeshError:
        printer.warn(f"not counted (Redis unavailable): {recipient}'s backlog in `agentmesh "
                     "status` is one too low")


def register(app: typer.Typer) -> None:
    app.command()(up)
    app.command()(down)
    app.command()(status)
    app.command()(send)

"""Commands of Bee consensus: the manager process, and `propose` for people and scripts."""

from __future__ import annotations

import time
from contextlib import closing
from typing import Annotated, Any

import typer

from agentmesh_cli import constants as C
from agentmesh_cli.cli import printer
from agentmesh_cli.cli.common import ConfigOption, json_object, mesh_from, role_logging
from agentmesh_cli.errors import ConfigError

EXIT_ACCEPTED, EXIT_REJECTED, EXIT_EXPIRED = 0, 1, 3
POLL_S = 0.005


def consensus(config: ConfigOption = None) -> None:
    """Run the consensus manager (supervisord runs one per mesh).

    Example: agentmesh consensus --config mesh.yaml
    """
    from agentmesh_cli.consensus.manager import ConsensusManager

    mesh = mesh_from(config)
    role_logging(mesh, C.PROGRAM_CONSENSUS)
    raise typer.Exit(ConsensusManager(mesh).run())


def propose(
    type_: Annotated[str, typer.Option("--type", help="decision | action | topology")] = "decision",
    content: Annotated[str, typer.Option(help="JSON object: what is proposed.")] = "{}",
    sender: Annotated[str, typer.Option("--from", help="Proposer id.")] = "cli",
    wait: Annotated[bool, typer.Option("--wait", help="Wait for the decision and print it.")] = False,
    timeout: Annotated[float | None, typer.Option(
        help="Seconds to wait (default: the proposal timeout plus 5 s).")] = None,
    config: ConfigOption = None,
) -> None:
    """Open a proposal; print its id, and with --wait its decision and vote tally.

    Exit code with --wait: 0 accepted, 1 rejected, 3 expired or no decision in time.

    Example: agentmesh propose --type decision --content '{"type": "approval", "priority": "high"}' --wait
    """
    from agentmesh_cli import events
    from agentmesh_cli.bus import Bus
    from agentmesh_cli.consensus.core import PROPOSAL_TYPES
    from agentmesh_cli.dozing import ringing
    from agentmesh_cli.drain import refuse_while_draining
    from agentmesh_cli.errors import BusError, WaitTimeout
    from agentmesh_cli.signing import mesh_signer
    from agentmesh_cli.store import Store
    from agentmesh_cli.waiting import Deadline, wait_until

    mesh = mesh_from(config)
    if type_ not in PROPOSAL_TYPES:
        raise ConfigError(f"--type must be one of {', '.join(PROPOSAL_TYPES)}, not {type_!r}")
    body = json_object(content, "--content")
    with closing(Store(mesh.redis_url, mesh.config.mesh, timeout=1.0)) as check:
        refuse_while_draining(check, "`propose`")
    proposal_id = events.new_proposal_id(sender)
    store = Store(mesh.redis_url, mesh.config.mesh)
    bus = Bus(mesh.config.kafka, client_id="agentmesh-propose", signer=mesh_signer(mesh))
    ringing(bus, store)  # a sleeping consensus manager is rung (dozing.py)
    event = events.proposal(sender, proposal_id, type_, body)
    started = time.monotonic()
    deadline = Deadline(timeout if timeout is not None else mesh.config.consensus.proposal_timeout + 5)
    bus.send(C.TOPIC_PROPOSALS, event, key=proposal_id)
    if bus.flush(10) or bus.delivery_failures:
        raise BusError(f"proposal not delivered to {mesh.config.kafka.bootstrap} (is the mesh up?)")
    printer.out(proposal_id)
    if not wait:
        return
    seen: dict[str, Any] | None = None

    def decided() -> dict[str, Any] | None:
        nonlocal seen
        seen = store.proposal(proposal_id)
        return seen if seen and seen["status"] != "pending" else None

    try:
        record = wait_until(decided, deadline, "the decision", interval=POLL_S)
    except WaitTimeout:
        printer.say(f"no decision on {proposal_id} within {deadline.timeout:.0f}s "
                    f"(status {seen['status'] if seen else 'not opened'})")
        raise typer.Exit(EXIT_EXPIRED) from None
    t = record["tally"]
    printer.out(
        f"{record['status']}: {t['for']} for, {t['against']} against, {t['needed']} needed of "
        f"{t['electorate']} (waggle intensity {record['waggle']['intensity']:.3f}, "
        f"{(time.monotonic() - started) * 1000:.0f} ms)")
    codes = {"accepted": EXIT_ACCEPTED, "rejected": EXIT_REJECTED}
    raise typer.Exit(codes.get(record["status"], EXIT_EXPIRED))


def register(app: typer.Typer) -> None:
    app.command()(consensus)
    app.command()(propose)

"""`agentmesh chaos`: the fault-injection suite (agentmesh_cli/chaos)."""

from __future__ import annotations

import json
import logging
import signal
from pathlib import Path
from types import FrameType
from typing import Annotated

import typer

from agentmesh_cli.cli import printer
from agentmesh_cli.cli.common import ConfigOption

QUIET_LOGGERS = ("agentmesh_cli.bus", "agentmesh_cli.reader", "agentmesh_cli.broker",
                 "agentmesh_cli.recovery", "agentmesh_cli.doorbell")  # faults make them talk


def chaos(
    faults: Annotated[str, typer.Option(
        help="Comma-separated, in order: all, agents, managers, services, inbox (kill -9 of the "
             "host's inbox reader, program inbox-reader, under probes and asks: every agent timed "
             "until it is served again; the embedded mesh then runs kafka.inbox_reader: host, and "
             "`all` includes it whenever the mesh runs one), gateway (kill -9 of "
             "the gateway under asks over HTTP, retried with their Idempotency-Key), llm (kill -9 "
             "of an llm agent mid-answer under chats over HTTP; the embedded mesh then runs one, "
             "its model a scripted server), replicas (kill -9 of replicas of the group Support "
             "mid-work and a scale down and up, under asks to the group over HTTP; the embedded "
             "mesh then runs Support as 3 replicas), infra, doze[:Agent] (on a quiet mesh whose agents "
             "all sleep: kill -9 of a sleeping agent, the first by default, as probes go to every "
             "agent; then kill -9 of redis, probes once they sleep again), stall[:Agent], garbage, "
             "restart (down with its drain, then up), or program names (agent-Sales, "
             "topology-manager, redis, kafka, ...).")] = "all",
    rate: Annotated[float, typer.Option(help="Probe messages per second, over all agents.", min=1)] = 200,
    ask_rate: Annotated[float, typer.Option(
        help="Asks per second (request and reply), over the agents whose roles answer one "
             "(inventory, fraud, sales); 0: none.", min=0)] = 20,
    pause: Annotated[float, typer.Option(help="Seconds between a recovery and the next fault.",
                                         min=0)] = 5,
    rounds: Annotated[int, typer.Option(help="Times the fault sequence runs.", min=0)] = 1,
    duration: Annotated[float, typer.Option(
        help="Then, for this many seconds, kill -9 a random program every --every seconds.",
        min=0)] = 0,
    every: Annotated[float, typer.Option(help="Seconds between random kills.", min=0.5)] = 5,
    seed: Annotated[int | None, typer.Option(help="Seed of the random phase.")] = None,
    timeout: Annotated[float, typer.Option(help="Seconds a fault may take to be recovered from.",
                                           min=1)] = 60,
    drain: Annotated[float, typer.Option(help="Seconds to wait at the end for every probe to be "
                                         "handled.", min=0)] = 60,
    agents: Annotated[int, typer.Option(help="Agents of the embedded mesh (demo roles); 64 or "
                                        "128 for a kill loop at scale (allow 2 s per agent to start).",
                                        min=4, max=128)] = 4,
    inbox_reader: Annotated[str | None, typer.Option(
        help="kafka.inbox_reader of the embedded mesh: agent (each agent fetches its own inbox), "
             "host (one inbox reader fetches for every agent, and every fault runs over it) or auto "
             "(host from 16 agents up). Default: host when --faults names inbox, else auto. With "
             "--config the mesh's own setting counts (a different one here is an error).",
        show_default=False)] = None,
    workdir: Annotated[Path | None, typer.Option(
        help="Run the embedded mesh in this folder and keep it (logs) instead of a temporary one.")] = None,
    config: ConfigOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as one JSON object.")] = False,
) -> None:
    """Inject faults under load; report what was lost or doubled and how fast the mesh recovered.

    Runs a workload while killing each kind of program in turn (the gateway while asks go
    through it over HTTP, an llm agent while it streams answers to chats, the host's inbox
    reader while every agent reads through it), restarting Redis
    and the broker, killing an agent and Redis while the agents sleep, stalling an agent and
    writing garbage to every topic; prints what was
    lost, handled twice and decided twice, and how fast each fault was detected and
    recovered from.

    Without --config on its own embedded mesh (in a temporary folder, stopped at the end);
    with --config on that mesh, which must be up.

    Exit code 0 only when no probe was lost, none was handled twice, every ask was
    answered, none twice (through the gateway too: each handled once by its agent; each
    chat of the llm fault answered once, its tool asked once; every sleeping agent of the doze
    fault woken; every agent served again after the inbox fault, none down with its reader),
    and no proposal was decided twice (docs/reliability.md).

    Example: agentmesh chaos
    Example: agentmesh chaos --faults agent-Sales,topology-manager --pause 2 --json
    Example: agentmesh chaos --faults agents,infra --duration 300 --every 3 --seed 7
    Example: agentmesh chaos --faults gateway
    Example: agentmesh chaos --faults llm
    Example: agentmesh chaos --faults replicas
    Example: agentmesh chaos --faults doze:Fraud
    Example: agentmesh chaos --faults inbox,agents --duration 30
    Example: agentmesh chaos --inbox-reader host
    """
    from agentmesh_cli.chaos.report import chaos_table
    from agentmesh_cli.chaos.runner import Settings, run

    if inbox_reader is not None and inbox_reader not in ("agent", "host", "auto"):
        printer.error(f"unknown inbox reader {inbox_reader!r}; use agent, host or auto")
        raise typer.Exit(2)
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.CRITICAL)
    signal.signal(signal.SIGTERM, _interrupt)  # tear the mesh down as on Ctrl+C
    settings = Settings(rate=rate, pause=pause, faults=faults, rounds=rounds, duration=duration,
                        every=every, seed=seed, timeout=timeout, drain=drain, agents=agents,
                        ask_rate=ask_rate, inbox_reader=inbox_reader)
    try:
        result = run(settings, config, workdir, _say)
    except KeyboardInterrupt:
        printer.styled([("interrupted", "yellow"), (": the mesh was stopped", "")], err=True)
        raise typer.Exit(130) from None
    if as_json:
        printer.out(json.dumps(result, indent=2))
    else:
        printer.show(chaos_table(result))
    raise typer.Exit(0 if result["ok"] else 1)


def _say(text: str) -> None:
    printer.say(text)


def _interrupt(_signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def register(app: typer.Typer) -> None:
    app.command()(chaos)

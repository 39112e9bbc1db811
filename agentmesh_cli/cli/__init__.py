"""The `agentmesh` command: one Typer app whose commands load lazily (cli/lazy.py). Parse,
call, print; an AgentMeshError becomes one red line and its exit code.

This module is imported by every `agentmesh ...` and every role process that supervisord
starts with `python -m agentmesh_cli`, before any command runs: it imports typer and the
table below, nothing of the commands (import-linter holds it to that).
"""

from __future__ import annotations

import logging
import os
import sys
from typing import NoReturn

# as in agent/__main__.py: httpx imports its own command-line client (click, rich, pygments)
# whenever they are installed; no command uses it, and `status --json` would pay ~35 ms for it
sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]

import typer  # noqa: E402  (after the httpx guard)

from agentmesh_cli.cli.lazy import Entry, LazyGroup  # noqa: E402
from agentmesh_cli.cli.printer import error  # noqa: E402
from agentmesh_cli.errors import AgentMeshError  # noqa: E402
from agentmesh_cli.logformat import TEXT_FORMAT, UNCAUGHT_LOGGER, role_program  # noqa: E402

# name -> (module under agentmesh_cli.cli, the summary `agentmesh --help` lists), in the
# order of that list. The summary is the first paragraph of the command's docstring
# (tests/unit/test_help.py checks both, and that every registered command is here).
COMMANDS: dict[str, Entry] = {name: Entry(module, summary) for name, module, summary in (
    ("up", "mesh",
     "Start the mesh (or apply a changed mesh.yaml) and wait until every program is ready."),
    ("down", "mesh",
     "Drain the mesh, then stop agents, managers, services and infra, then supervisord."),
    ("status", "mesh",
     "Show the mesh's processes, agents, topology, proposals, services and infra."),
    ("scale", "scale",
     "Run N replicas of a group in the running mesh (mesh.yaml stays the declared default)."),
    ("autoscale", "scale",
     "Run the autoscaler (supervisord runs one when a group has replicas: {min, max, ...})."),
    ("inbox-reader", "scale",
     "Run the host's inbox reader (supervisord runs one per host with kafka.inbox_reader: host)."),
    ("send", "mesh",
     "Inject one agent-to-agent message (for demos and scripts)."),
    ("ask", "ask",
     "Ask an agent and print its reply as one JSON object (type, from, payload, round_trip_ms)."),
    ("agent", "roles",
     "Run one agent process (supervisord runs one per agent of mesh.yaml)."),
    ("consensus", "consensus",
     "Run the consensus manager (supervisord runs one per mesh)."),
    ("propose", "consensus",
     "Open a proposal; print its id, and with --wait its decision and vote tally."),
    ("bench", "bench",
     "Measure a scenario next to two baselines taken in the same run on the same broker and Redis."),
    ("chaos", "chaos",
     "Inject faults under load; report what was lost or doubled and how fast the mesh recovered."),
    ("tail", "topics",
     "Print a topic's records from the beginning, one JSON line each, then exit (or follow)."),
    ("memory", "services",
     "Run the Memory service: users' messages over HTTP, kept in the mesh's Redis."),
    ("cognition", "services",
     "Run the Cognition service: context, search and analysis over HTTP, reading the Memory service."),
    ("gateway", "services",
     "Run the gateway: the mesh's front door over HTTP, Server-Sent Events and MCP."),
    ("token", "services",
     "Print a bearer token that lets its holder use memory, cognition and the gateway as USER only."),
    ("metrics", "metrics",
     "Serve every role's counters and gauges for Prometheus at GET /metrics."),
    ("logs", "logs",
     "Print the programs' logs merged in time order, each line prefixed with its program."),
    ("init", "init",
     "Write a commented starter mesh.yaml (four demo agents, every key at its default)."),
    ("topology", "roles",
     "Run the topology manager, or query its graph (route, export)."),
)}


class AgentmeshGroup(LazyGroup):
    entries = COMMANDS


app = typer.Typer(
    name="agentmesh",
    cls=AgentmeshGroup,
    help="Run a multi-agent mesh as supervised OS processes over Kafka and Redis.",
    epilog="Example: agentmesh init && agentmesh up && agentmesh logs -f",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root() -> None:
    # no options of its own: a callback makes typer build a group even though no command
    # is registered here (they are in COMMANDS)
    return None


# Commands that scripts call in loops. Once one has printed its answer, tearing the
# interpreter down (finalising redis-py's, pydantic's and librdkafka's modules and objects)
# took ~50 ms, a fifth of the command, for nothing: what they sent is flushed and confirmed
# before they print, and the system closes their sockets. So they end at once (`_end`).
QUICK_COMMANDS = frozenset({"token", "send", "ask", "propose", "status"})


def main() -> None:
    # user commands log warnings only; role processes set their own level and format (cli.common)
    logging.basicConfig(
        level=logging.WARNING,
        format=TEXT_FORMAT,
        stream=sys.stderr,
    )
    quick = len(sys.argv) > 1 and sys.argv[1] in QUICK_COMMANDS
    try:
        app()
    except AgentMeshError as exc:
        if role_program():  # a role process: its error is one more line of its log
            logging.getLogger(UNCAUGHT_LOGGER).error("%s", exc)
            sys.exit(exc.exit_code)
        error(str(exc))
        _end(exc.exit_code) if quick else sys.exit(exc.exit_code)
    except SystemExit as done:  # typer ends every command with one
        if quick and not role_program():
            _end(done.code)
        raise


def _end(code: int | str | None) -> NoReturn:
    """Exit now, without the interpreter's teardown: the output flushed, the logs closed."""
    if isinstance(code, str):  # sys.exit("message") prints it and exits 1
        print(code, file=sys.stderr)
        code = 1
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    logging.shutdown()
    os._exit(code or 0)

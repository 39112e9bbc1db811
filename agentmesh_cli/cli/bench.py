"""`agentmesh bench`: measure a scenario next to its baselines, taken in the same run on the
same broker and Redis (raw: the physical limit; floor: a bare Python loop)."""

from __future__ import annotations

import importlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from agentmesh_cli.cli import printer

if TYPE_CHECKING:
    from rich.table import Table

SCENARIOS = ("mesh", "topology", "consensus", "services", "startup", "ask", "slow", "gateway", "llm",
             "routing", "idle")
ALL = "all"
NOT_IN_ALL = ("routing",)  # about 20 minutes: run on its own


def _number(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.3f}".rstrip("0").rstrip(".") if abs(value) < 1000 else f"{value:,.0f}"
    if isinstance(value, list):
        return ", ".join(_number(v) for v in value)
    return str(value)


def _cells(value: Any, width: int) -> list[str]:
    """A figure's cells: a list of `width` values (one per column) each in its own cell."""
    if width > 1 and isinstance(value, list) and len(value) == width:
        return [_number(v) for v in value]
    return [_number(value), *[""] * (width - 1)]


def _rows(data: dict[str, Any], prefix: str = "", width: int = 1) -> list[tuple[str, list[str]]]:
    """A nested dict of figures as (dotted name, shown cells) rows; percentile dicts in one row."""
    rows: list[tuple[str, list[str]]] = []
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and "p50_ms" in value and "p99_ms" in value:
            shown = f"{value['p50_ms']:.2f} / {value['p99_ms']:.2f} / {value.get('max_ms', 0):.2f} ms"
            rows.append((f"{name} p50 / p99 / max", [shown, *[""] * (width - 1)]))
            rest = {k: v for k, v in value.items() if not k.endswith("_ms")}
            rows.extend(_rows(rest, f"{name}.", width))
        elif isinstance(value, dict):
            rows.extend(_rows(value, f"{name}.", width))
        else:
            rows.append((name, _cells(value, width)))
    return rows


def result_table(result: dict[str, Any]) -> Table:
    """One table for any scenario: its figures, the two baselines, the ratios, the targets.
    A result with `columns` (several runs side by side) has a value column each; its
    figures are lists, one value per column."""
    from rich.table import Table

    table = Table(title=f"agentmesh bench {result['scenario']}", title_justify="left")
    table.add_column("figure", no_wrap=True)
    columns = result.get("columns") or ["value"]
    for column in columns:
        table.add_column(column, justify="right")
    width = len(columns)
    for section in ("figures", "raw", "floor", "ratios"):
        rows = _rows(result.get(section) or {}, width=width)
        if not rows:
            continue
        table.add_section()
        for name, cells in rows:
            label = name if section == "figures" else f"[dim]{section}[/] {name}"
            table.add_row(label, *cells)
    targets = result.get("targets") or {}
    if targets:
        table.add_section()
        for name, target in targets.items():
            verdict = "[green]met[/]" if target["met"] else "[red]missed[/]"
            table.add_row(f"target {name} {target['target']}", f"{_number(target['value'])}  {verdict}",
                          *[""] * (width - 1))
    return table


def bench(
    scenario: Annotated[str, typer.Argument(
        help=f"One of: {', '.join(SCENARIOS)}, or {ALL} (each in turn but {', '.join(NOT_IN_ALL)}).")] = ALL,
    agents: Annotated[int, typer.Option(help="mesh: agent processes.", min=2)] = 4,
    duration: Annotated[float | None, typer.Option(
        help="mesh: seconds per phase (5); consensus: seconds of the paced phase (5); services: seconds "
             "per load phase (5); ask: seconds of each "
             "pipelined phase (2); slow: seconds of each measured window (10); gateway: seconds of each "
             "open-loop phase (3); routing: seconds of each latency job (12); idle: seconds of quiet "
             "measured (60).", min=0.5)] = None,
    events: Annotated[int, typer.Option(help="topology: messages in the backlog the manager drains.",
                                        min=1000)] = 200_000,
    full_mesh: Annotated[int, typer.Option(
        help="topology: agents of the full mesh that is decayed and pruned.", min=2)] = 1000,
    proposals: Annotated[int, typer.Option(
        help="consensus: proposals in the throughput run (3 votes each; as many votes at other "
             "electorate sizes).")] = 4000,
    voters: Annotated[str | None, typer.Option(
        help="consensus: registered voters (5), or several sizes run in turn and shown side by side "
             "with their ratios, e.g. 4,128.")] = None,
    samples: Annotated[int | None, typer.Option(
        help="consensus: latency samples (300); ask: round trips one at a time per run, agents and "
             "raw each (200); gateway: asks one at a time per round, each way (200); llm: direct SDK "
             "calls and asks one at a time per run, of each kind (200).", min=1)] = None,
    concurrency: Annotated[int | None, typer.Option(
        help="services: calls in flight under load (64); ask: asks in flight in the pipelined phase "
             "(64); slow: the agent's agents[].concurrency (1000).", min=1)] = None,
    rate: Annotated[int | None, typer.Option(
        help="services: calls/s of the paced phases (500); gateway: asks/s of the open-loop phases, "
             "direct and through the gateway (200).", min=1)] = None,
    followers: Annotated[int | None, typer.Option(
        help="services: SSE followers in the fan-out (100); gateway: SSE streams open at once, one "
             "conversation each (1000).", min=1)] = None,
    follower_events: Annotated[int | None, typer.Option(
        help="gateway: events appended to each follower's conversation (5).", min=1)] = None,
    history: Annotated[int, typer.Option(help="services: items in the history that is read.", min=1,
                                         max=1000)] = 200,
    repeats: Annotated[int | None, typer.Option(
        help="startup: up/down cycles (3); ask: runs (5); slow: runs (3); gateway: rounds (5); llm: "
             "runs (3); routing: runs, each on fresh meshes (5). Figures are medians over the runs.",
        min=1)] = None,
    quick: Annotated[bool, typer.Option(
        "--quick", help="routing: one short run of everything (about 2 minutes), to check it works.")
    ] = False,
    kill_replica: Annotated[int | None, typer.Option(
        help="routing: the replica killed in the kill trials, 1-3 (3: the slow one, the one kill the "
             "others can carry at 80% load).", min=1, max=3)] = None,
    config: Annotated[Path | None, typer.Option(
        "--config", help="mesh: use the broker and Redis of this running mesh (under a mesh name and "
                         "topic prefix of the bench's own) instead of starting throwaway ones; "
                         "idle: the mesh.yaml copied and run (default: the repository's).")] = None,
    sign: Annotated[bool | None, typer.Option(
        "--sign/--no-sign", help="mesh: sign the bench mesh's records (security.sign_envelopes); "
                                 "default: as --config's mesh, else on, as mesh.yaml's default. "
                                 "Run both to see what signing costs.")] = None,
    broker: Annotated[str | None, typer.Option(
        help="mesh: the throwaway broker, tansu (the mesh's own, default) or noida (noida-db: "
             "answers a waiting fetch at once, as a real Kafka does).")] = None,
    inbox_reader: Annotated[str | None, typer.Option(
        help="mesh, idle: kafka.inbox_reader of the bench mesh: agent (each agent fetches its inbox), "
             "host (one inbox reader fetches for them all) or auto (host from 16 agents up; "
             "the default).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    out: Annotated[Path | None, typer.Option(help="Also write the JSON to this file.")] = None,
) -> None:
    """Measure a scenario next to two baselines taken in the same run on the same broker and Redis.

    raw is a confluent-kafka producer -> consumer pair moving the same bytes (the physical
    limit); floor is a bare Python loop that decodes the same envelope and replies (the best
    a Python agent could do).

    Servers are started on free loopback ports and stopped after.

    Example: agentmesh bench mesh --agents 8 --duration 10
    Example: agentmesh bench ask --repeats 5
    Example: agentmesh bench consensus --voters 4,128
    Example: agentmesh bench slow --concurrency 1000 --duration 10
    Example: agentmesh bench gateway --rate 200 --followers 1000
    Example: agentmesh bench llm --samples 200 --repeats 3
    Example: agentmesh bench routing --json --out routing.json
    Example: agentmesh bench --json --out bench.json
    """
    if broker is not None and broker not in ("tansu", "noida"):
        printer.error(f"unknown broker {broker!r}; use tansu or noida")
        raise typer.Exit(2)
    if inbox_reader is not None and inbox_reader not in ("agent", "host", "auto"):
        printer.error(f"unknown inbox reader {inbox_reader!r}; use agent, host or auto")
        raise typer.Exit(2)
    if scenario != ALL and scenario not in SCENARIOS:
        printer.error(f"unknown scenario {scenario!r}; use one of {', '.join(SCENARIOS)} or {ALL}")
        raise typer.Exit(2)
    options: dict[str, dict[str, Any]] = {
        "mesh": {"agents": agents, "duration": duration,
                 "config": None if config is None else str(config), "sign": sign, "broker": broker,
                 "inbox_reader": inbox_reader},
        "topology": {"events": events, "full_mesh_agents": full_mesh},
        "consensus": {"proposals": proposals, "samples": samples, "voters": voters, "duration": duration},
        "services": {"duration": duration, "concurrency": concurrency, "rate": rate,
                     "followers": followers, "history": history},
        "startup": {"repeats": repeats},
        "ask": {"repeats": repeats, "samples": samples, "concurrency": concurrency, "duration": duration},
        "slow": {"repeats": repeats, "concurrency": concurrency, "duration": duration},
        "gateway": {"repeats": repeats, "rate": rate, "duration": duration, "samples": samples,
                    "followers": followers, "follower_events": follower_events},
        "llm": {"repeats": repeats, "samples": samples},
        "routing": {"repeats": repeats, "duration": duration, "quick": quick or None,
                    "kill_replica": kill_replica},
        "idle": {"window": duration, "config": None if config is None else str(config),
                 "inbox_reader": inbox_reader},
    }
    chosen = tuple(s for s in SCENARIOS if s not in NOT_IN_ALL) if scenario == ALL else (scenario,)
    results: dict[str, dict[str, Any]] = {}
    for name in chosen:
        shown = ", ".join(f"{k} {v}" for k, v in options[name].items() if v is not None) or "its defaults"
        printer.say(f"running {name}: {shown} (load average {os.getloadavg()[0]:.2f}) ...")
        module = importlib.import_module(f"agentmesh_cli.bench.{name}")
        # an option not given is left out: each scenario has its own default (its run())
        result = module.run(**{k: v for k, v in options[name].items() if v is not None})
        for note in result.get("notes", []):
            printer.note(note)
        results[name] = result
        if not as_json:
            printer.show(result_table(result))
    document: dict[str, Any] = results[scenario] if scenario != ALL else {"scenarios": results}
    if out is not None:
        out.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    if as_json:
        printer.out(json.dumps(document, indent=2))


def register(app: typer.Typer) -> None:
    app.command()(bench)

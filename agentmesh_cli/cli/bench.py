"""`agentmesh bench`: run a benchmark scenario on throwaway infrastructure."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Annotated, Any

import typer
from rich.table import Table

from agentmesh_cli.cli.common import console, console_err

SCENARIOS = ("consensus", "services")


def bench(
    scenario: Annotated[str, typer.Argument(help=f"One of: {', '.join(SCENARIOS)}.")] = "consensus",
    proposals: Annotated[int, typer.Option(
        help="consensus: proposals in the throughput run (3 votes each).")] = 4000,
    samples: Annotated[int, typer.Option(help="consensus: latency samples.")] = 300,
    duration: Annotated[float, typer.Option(help="services: seconds per load phase.", min=0.5)] = 5.0,
    concurrency: Annotated[int, typer.Option(help="services: calls in flight under load.", min=1)] = 64,
    rate: Annotated[int, typer.Option(help="services: calls/s of the paced phases.", min=1)] = 500,
    followers: Annotated[int, typer.Option(help="services: SSE followers in the fan-out.", min=1)] = 100,
    history: Annotated[int, typer.Option(help="services: items in the history that is read.", min=1,
                                         max=1000)] = 200,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Measure a scenario next to a baseline taken in the same run on the same infrastructure.

    Example: agentmesh bench consensus --proposals 8000 --json
    Example: agentmesh bench services --duration 10 --concurrency 32
    """
    if scenario not in SCENARIOS:
        console_err.print(f"[red]error:[/] unknown scenario {scenario!r}; use one of {', '.join(SCENARIOS)}")
        raise typer.Exit(2)
    if scenario == "consensus":
        from agentmesh_cli.bench import consensus

        console_err.print(f"running {scenario}: {proposals} proposals, {samples} latency samples ...")
        result = consensus.run(proposals, samples)
    else:
        from agentmesh_cli.bench import services

        console_err.print(f"running {scenario}: {duration:g} s per phase, {concurrency} in flight, "
                          f"paced at {rate}/s, {followers} followers ...")
        result = services.run(duration, concurrency, rate, followers, history)
        for note in result["notes"]:
            console_err.print(f"[yellow]note:[/] {note}")
    if as_json:
        print(json.dumps(result, indent=2))
        return
    console.print(TABLES[scenario](result))


def consensus_table(result: dict[str, Any]) -> Table:
    table = Table(title="agentmesh bench consensus", title_justify="left")
    table.add_column("figure")
    table.add_column("value", justify="right")
    table.add_column("baseline (raw, same run)", justify="right")
    lat, raw = result["decision_latency"], result["raw_round_trip"]
    table.add_row("votes/s through the manager", f"{result['votes_per_s']:,}", "")
    table.add_row("manager / broker CPU while voting",
                  f"{result['manager_cpu_share']:.0%} / {result['broker_cpu_share']:.0%}", "")
    for key in ("p50_ms", "p99_ms", "max_ms"):
        table.add_row(f"decision latency {key[:-3]}", f"{lat[key]:.2f} ms", f"{raw[key]:.2f} ms")
    table.add_row("p99 over raw", f"{result['p99_over_raw_ms']:+.2f} ms", "")
    return table


def _latency(figures: dict[str, Any]) -> str:
    return f"{figures['p50_ms']:.2f} / {figures['p99_ms']:.2f} ms"


def services_table(result: dict[str, Any]) -> Table:
    settings = result["settings"]
    table = Table(title=f"agentmesh bench services ({settings['concurrency']} in flight, "
                  f"paced at {settings['paced_rate']}/s; service figures from the lean load "
                  "generator unless marked httpx)", title_justify="left")
    table.add_column("figure")
    table.add_column("service", justify="right")
    table.add_column("raw redis-py (same run)", justify="right")
    pairs = [("store_input", "raw_store", "store_input"),
             (f"history read ({settings['history_items']} items)", "raw_history_read", "history_read")]
    for label, raw_key, key in pairs:
        service, raw = result[key], result[raw_key]
        table.add_row(f"{label} calls/s", f"{service['calls_per_s']:,}", f"{raw['calls_per_s']:,}")
        table.add_row(f"{label} p50 / p99 under load", _latency(service), _latency(raw))
        table.add_row(f"{label} p50 / p99 paced at {service['paced']['rate']} / {raw['paced']['rate']}/s",
                      _latency(service["paced"]), _latency(raw["paced"]))
        table.add_row(f"{label} CPU: server (service / valkey)", f"{service['server_cpu_share']:.0%}",
                      f"{raw['server_cpu_share']:.0%}")
        table.add_row(f"{label} CPU: load generator", f"{service['client_cpu_share']:.0%}",
                      f"{raw['client_cpu_share']:.0%}")
        table.add_row(f"{label} CPU per call: server / load generator",
                      f"{service['server_cpu_ms_per_call']:.2f} / {service['client_cpu_ms_per_call']:.2f} ms",
                      f"{raw['server_cpu_ms_per_call']:.2f} / {raw['client_cpu_ms_per_call']:.2f} ms")
        errors = service["errors"] + service["paced"]["errors"]
        if errors:
            table.add_row(f"{label} failed calls (not counted)", f"[red]{errors:,}[/]",
                          f"{raw['errors'] + raw['paced']['errors']:,}")
        lib = result.get(f"{key}_httpx")
        if lib:
            table.add_row(f"{label} through httpx: calls/s", f"{lib['calls_per_s']:,}", "")
            table.add_row(f"{label} through httpx: paced p50 / p99 at {lib['paced']['rate']}/s",
                          _latency(lib["paced"]), "")
            table.add_row(f"{label} through httpx: CPU per call server / httpx",
                          f"{lib['server_cpu_ms_per_call']:.2f} / {lib['client_cpu_ms_per_call']:.2f} ms", "")
    context = result.get("get_context")
    if context:
        table.add_row("get_context calls/s", f"{context['calls_per_s']:,}", "")
        table.add_row("get_context p50 / p99 under load", _latency(context), "")
        table.add_row(f"get_context p50 / p99 paced at {context['paced']['rate']}/s",
                      _latency(context["paced"]), "")
    fan = result["sse_fan_out"]
    table.add_row(f"SSE followers subscribed / refused of {fan['followers']}",
                  f"{fan['subscribed']} / {fan['refused']}", "")
    if "p50_ms" in fan:
        start = fan["from_call_start"]
        table.add_row("SSE delivery after the store returned: p50 / p99 / max",
                      f"{fan['p50_ms']:.2f} / {fan['p99_ms']:.2f} / {fan['max_ms']:.2f} ms", "")
        table.add_row("SSE delivery from the store call's start: p50 / p99 / max",
                      f"{start['p50_ms']:.2f} / {start['p99_ms']:.2f} / {start['max_ms']:.2f} ms", "")
    if "store_error" in fan:
        table.add_row("store_input while following", f"[red]{fan['store_error']}[/]", "")
    targets = result["targets"]
    table.add_row("target store_input >= 2,000 calls/s",
                  "met" if targets["store_input_calls_per_s_met"] else "[red]missed[/]", "")
    table.add_row("target store_input paced p99 < 10 ms",
                  "met" if targets["store_input_paced_p99_met"] else "[red]missed[/]", "")
    return table


TABLES: dict[str, Callable[[dict[str, Any]], Table]] = {
    "consensus": consensus_table,
    "services": services_table,
}


def register(app: typer.Typer) -> None:
    app.command()(bench)

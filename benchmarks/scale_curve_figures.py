"""The scale curve's figures: from the mesh scenario's results to the records of the JSON,
the medians over the runs of a size, one table row, and the plot. Pure (no process is
started here); benchmarks/scale_curve.py measures and calls it.

A run's record holds the figures of one run of the mesh scenario (or `mesh_error`); a
size's record holds the same keys, each the median over the runs that succeeded (dict by
dict, number by number), plus `runs` (every run's record), `runs_ok`, `runs_failed`,
and the size's single measures (decay, status). See scale_curve.py's docstring.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agentmesh_cli.bench.mesh import TARGETS

# the figures of a run whose median a size's record holds (each a number or a dict of them)
MEDIAN_KEYS = ("msgs_per_s", "floor_replies_per_s", "raw_records_per_s", "ratios", "peak_latency", "paced",
               "one_hop_p50_ms", "raw_one_hop_p50_ms", "floor_latency", "cpu_share", "agent_rss_mb",
               "peak_rss_mb")
CPU_KINDS = ("topology", "broker", "valkey", "agents", "inbox_reader")


def run_record(agents: int, mesh: dict[str, Any] | None, mesh_error: str,
               rss: dict[str, dict[str, float]]) -> dict[str, Any]:
    """The figures of one run of the mesh scenario (`mesh`, or None and why it failed),
    and the peak RSS of its processes by kind."""
    record: dict[str, Any] = {"peak_rss_mb": rss}
    if mesh is None:
        return {**record, "mesh_error": mesh_error}
    figures, raw, floor = mesh["figures"], mesh["raw"], mesh["floor"]
    cpu = {kind: figures.get(f"{kind}_cpu_share", 0.0) for kind in CPU_KINDS}  # of one core each
    cpu["per_agent"] = round(cpu["agents"] / agents, 4)
    cpu["total"] = round(sum(cpu[kind] for kind in CPU_KINDS), 3)
    return {
        **record,
        "msgs_per_s": figures["msgs_per_s"],
        "floor_replies_per_s": floor["replies_per_s"],
        "raw_records_per_s": raw["throughput"]["records_per_s"],
        "ratios": mesh["ratios"],
        "peak_latency": figures["peak_latency"],
        "paced": figures["paced"],
        "one_hop_p50_ms": figures["one_hop"]["p50_ms"],
        "raw_one_hop_p50_ms": raw["one_hop"]["p50_ms"],
        "floor_latency": floor["latency"],
        "cpu_share": cpu,
        "topology_keeps_up": figures["topology_keeps_up"],
        "topology_backlog": figures["topology_backlog"],
        "agent_rss_mb": figures["agent_rss_mb"],
        "targets": {name: {"value": t["value"], "met": t["met"]} for name, t in mesh["targets"].items()},
        "sign_envelopes": mesh["settings"]["sign_envelopes"],
        "mesh_notes": mesh["notes"],
    }


def median_of(values: list[Any]) -> Any:
    """The median of numbers; of dicts, key by key (a value some lack is the median of the
    others). Anything else: the first value."""
    values = [v for v in values if v is not None]
    if not values:
        return None
    if all(isinstance(v, dict) for v in values):
        keys = list(dict.fromkeys(k for v in values for k in v))
        return {k: median_of([v[k] for v in values if k in v]) for k in keys}
    if all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
        median = statistics.median(values)
        return median if isinstance(median, int) else round(median, 4)
    return values[0]


def size_record(agents: int, runs: list[dict[str, Any]], decay: dict[str, Any] | None = None,
                status: dict[str, Any] | None = None) -> dict[str, Any]:
    """A size's record: the medians of its runs that succeeded, every run, and the decay
    and status measures when they were taken. With no run that succeeded, `mesh_error`
    (the last run's) and the median peak RSS of the runs (how far they got)."""
    ok = [r for r in runs if "mesh_error" not in r]
    record: dict[str, Any] = {"agents": agents, "runs_ok": len(ok), "runs_failed": len(runs) - len(ok)}
    if not ok:
        record.update({"mesh_error": runs[-1]["mesh_error"] if runs else "no run",
                       "peak_rss_mb": median_of([r["peak_rss_mb"] for r in runs]) or {}})
    else:
        record.update({key: median_of([r[key] for r in ok]) for key in MEDIAN_KEYS})
        record["topology_keeps_up"] = all(r["topology_keeps_up"] for r in ok)
        # each target's median value, and in how many runs it was met
        record["targets"] = {name: {"value": median_of([r["targets"][name]["value"] for r in ok]),
                                    "met_runs": sum(bool(r["targets"][name]["met"]) for r in ok),
                                    "runs": len(ok)}
                             for name in ok[0]["targets"]}
        record["sign_envelopes"] = ok[0]["sign_envelopes"]
    if decay is not None:
        if "error" in decay:
            record["decay_error"] = decay["error"]
        else:
            record.update({"decay_ms": decay["decay_ms"], "decay_prune_ms": decay["decay_prune_ms"],
                           "full_mesh_edges": decay["edges_before"], "core_mb": decay["core_mb"]})
    if status is not None:
        record["status"] = status
    record["runs"] = runs
    return record


# -- the table ---------------------------------------------------------------------------

COLUMNS = ("agents", "msg/s", "floor/s", "ratio", "p99 peak", "p99 paced", "p50 1hop", "raw p50",
           "topo CPU", "broker", "valkey", "agents", "inbox rdr", "per agent", "decay ms", "agent RSS",
           "topo RSS", "status ms")
WIDTH = 9


def table_header() -> str:
    return "  ".join(f"{c:>{WIDTH}}" for c in COLUMNS)


def table_row(r: dict[str, Any], label: str) -> str:
    """One line of the table: a run's record or a size's medians, labelled `label`."""
    def get(*path: str, fmt: str = "{:.2f}") -> str:
        value: Any = r
        for key in path:
            if not isinstance(value, dict) or key not in value:
                return "-"
            value = value[key]
        return "-" if value is None else fmt.format(value)

    cells = (label, get("msgs_per_s", fmt="{:,.0f}"), get("floor_replies_per_s", fmt="{:,.0f}"),
             get("ratios", "msgs_per_s_to_floor"),
             get("peak_latency", "p99_ms", fmt="{:.1f}"), get("paced", "latency", "p99_ms", fmt="{:.1f}"),
             get("one_hop_p50_ms"), get("raw_one_hop_p50_ms"),
             *(get("cpu_share", kind) for kind in CPU_KINDS), get("cpu_share", "per_agent", fmt="{:.3f}"),
             get("decay_prune_ms"), get("peak_rss_mb", "agent", "mean", fmt="{:.0f}") + "/"
             + get("peak_rss_mb", "agent", "max", fmt="{:.0f}"),
             get("peak_rss_mb", "topology", "max", fmt="{:.0f}"),
             get("status", "status_refresh_ms", "p50_ms", fmt="{:.1f}"))
    line = "  ".join(f"{c:>{WIDTH}}" for c in cells)
    if "mesh_error" in r:
        line += f"\n{'':>{WIDTH}}  mesh scenario failed: {r['mesh_error']}"
    return line


# -- the plot ----------------------------------------------------------------------------

Getter = Callable[[dict[str, Any]], Any]


@dataclass
class Panel:
    title: str
    unit: str
    lines: list[tuple[str, Getter]]
    per_run: bool = False  # the figures come from the mesh runs: a dot per run too
    log: bool = False
    marks: list[tuple[float, str, str]] = field(default_factory=list)  # (y, label, colour) of dotted lines


def _value(get: Getter, record: dict[str, Any]) -> float | None:
    try:
        value = get(record)
    except (KeyError, TypeError):
        return None
    return value if isinstance(value, int | float) else None


def panels(cores: int) -> list[Panel]:
    """The panels, in order; a panel with no figure in the JSON is not drawn (--mesh-only)."""
    return [
        Panel("messages/s at the peak", "msg/s", [
            ("mesh", lambda r: r["msgs_per_s"]),
            ("floor (bare loops)", lambda r: r["floor_replies_per_s"]),
        ], per_run=True),
        Panel("mesh msg/s over the floor's", "ratio", [
            ("mesh / floor", lambda r: r["ratios"]["msgs_per_s_to_floor"]),
        ], per_run=True, marks=[(TARGETS["floor_ratio"], "target", "tab:red"), (1.0, "the floor", "grey")]),
        Panel("latency", "ms (log)", [
            ("p99 at the peak", lambda r: r["peak_latency"]["p99_ms"]),
            ("p99 paced at half the peak", lambda r: r["paced"]["latency"]["p99_ms"]),
            ("p50 one hop, low rate", lambda r: r["one_hop_p50_ms"]),
            ("p50 one hop, raw", lambda r: r["raw_one_hop_p50_ms"]),
        ], per_run=True, log=True),
        Panel("CPU at the peak (share of one core)", "cores", [
            ("topology manager", lambda r: r["cpu_share"]["topology"]),
            ("broker", lambda r: r["cpu_share"]["broker"]),
            ("valkey", lambda r: r["cpu_share"]["valkey"]),
            ("all agents", lambda r: r["cpu_share"]["agents"]),
            ("per agent", lambda r: r["cpu_share"]["per_agent"]),
            ("all together", lambda r: r["cpu_share"]["total"]),
            ("broker, idle supervised mesh", lambda r: r["status"]["idle_cpu_share"]["kafka"]),
        ], per_run=True, marks=[(cores, "whole machine", "grey")]),
        Panel("decay + prune of a full mesh", "ms (log)", [
            ("decay + prune", lambda r: r["decay_prune_ms"]),
            ("decay", lambda r: r["decay_ms"]),
        ], log=True),
        Panel("RSS per process (peak under load)", "MB", [
            ("agent (mean)", lambda r: r["peak_rss_mb"]["agent"]["mean"]),
            ("topology manager", lambda r: r["peak_rss_mb"]["topology"]["max"]),
            ("broker", lambda r: r["peak_rss_mb"]["broker"]["max"]),
            ("valkey", lambda r: r["peak_rss_mb"]["valkey"]["max"]),
        ], per_run=True),
        Panel("`status` refresh (idle mesh)", "ms", [
            ("p50", lambda r: r["status"]["status_refresh_ms"]["p50_ms"]),
            ("p99", lambda r: r["status"]["status_refresh_ms"]["p99_ms"]),
        ]),
    ]


def plot(data: dict[str, Any], png: Path) -> None:
    """The medians of each size against the number of agents (log 2), a faint dot per run
    where the figure comes from the mesh runs; the core alone (--simulate) on the decay panel."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = sorted(data["sizes"], key=lambda r: r["agents"])
    if not rows:
        raise SystemExit("no sizes in the JSON: nothing to plot")
    simulated = sorted((r for r in data.get("simulate", []) if "error" not in r), key=lambda r: r["agents"])
    drawn = [p for p in panels(data["machine"]["cores"])
             if any(_value(get, r) is not None for _, get in p.lines for r in rows)
             or (p.title.startswith("decay") and simulated)]
    columns = 4 if len(drawn) > 6 else 3
    fig, axes = plt.subplots((len(drawn) + columns - 1) // columns, columns, squeeze=False,
                             figsize=(4.7 * columns, 4 * ((len(drawn) + columns - 1) // columns)))
    failed = [r["agents"] for r in rows if "mesh_error" in r]
    for ax, panel in zip(axes.flat, drawn, strict=False):
        ticks = [r["agents"] for r in rows]
        for label, get in panel.lines:
            points = [(r["agents"], y) for r in rows if (y := _value(get, r)) is not None]
            if not points:
                continue
            (line,) = ax.plot(*zip(*points, strict=True), marker="o", label=label)
            if panel.per_run:
                dots = [(r["agents"], y) for r in rows for run in r.get("runs", [])
                        if (y := _value(get, run)) is not None]
                if dots:
                    ax.scatter(*zip(*dots, strict=True), s=12, alpha=0.35, color=line.get_color())
        for y, label, colour in panel.marks:
            ax.axhline(y, color=colour, linestyle=":", linewidth=1, label=label)
        if panel.title.startswith("decay") and simulated:
            sx = [r["agents"] for r in simulated]
            ax.plot(sx, [r["decay_ms"]["median"] for r in simulated], marker="s", linestyle="--",
                    label="core alone, simulated (median decay)")
            ticks += sx
        ax.set_xscale("log", base=2)
        ax.set_xticks(ticks, [f"{a:,}" for a in ticks])
        ax.minorticks_off()
        if panel.log:
            ax.set_yscale("log")
        else:
            ax.set_ylim(0, ax.get_ylim()[1] * 1.25)  # room above the lines for the legend
        if failed and panel.per_run:
            ax.plot(failed, [ax.get_ylim()[0]] * len(failed), "rx", markersize=9, clip_on=False,
                    label="every run failed (see JSON)")
        ax.set_title(panel.title, fontsize=10)
        ax.set_ylabel(panel.unit)
        ax.set_xlabel("agents")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7, loc="best", ncols=2 if len(panel.lines) > 4 else 1)
    for ax in list(axes.flat)[len(drawn):]:
        ax.set_visible(False)
    machine, settings = data["machine"], data["settings"]
    runs = settings.get("runs", 1)
    signing = {True: "signed", False: "unsigned"}.get(rows[0].get("sign_envelopes"), "")
    fig.suptitle(f"agentmesh scale curve: median of {runs} run{'s' if runs != 1 else ''} per size"
                 f"{', ' + signing if signing else ''}, {settings['duration_s']:g} s per phase; "
                 f"{machine['cores']} cores, {machine['date'][:10]}, "
                 f"load average {machine['load_average_start'][0]} at start", fontsize=11)
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=100)
    plt.close(fig)

"""The scale curve: how the mesh behaves at 4, 16, 64 and 128 agents on this machine, and
the topology core alone at 1,000 and 10,000 agents. Writes one JSON and draws one PNG.

    .venv/bin/python benchmarks/scale_curve.py [--sizes 4,16,64,128] [--duration S]
        [--out docs/scale-curve.json] [--png docs/scale-curve.png] [--plot-only]

Per size N, three measures, one after the other (never two at once: the machine has two
cores, and each measure would take the other's CPU):

1. the mesh scenario (`agentmesh_cli.bench.mesh.run`): its own broker, Valkey, topology
   manager and N relay agents; messages/s at the peak, p99 at the peak and paced at half
   of it, the CPU share of the topology manager, the broker and the agents, and the raw
   and floor baselines of the same run. Meanwhile a thread here samples the RSS of every
   process the scenario started (by pid, from psutil): agents, topology manager, broker,
   Valkey; their peaks are recorded (the scenario reports the agents' only);
2. decay + prune of a full mesh of N agents by the topology core, in a fresh process
   (`bench.topology.full_mesh_in_child`): a full mesh is the most a manager of N agents
   can have to decay;
3. `agentmesh up` of a supervised mesh of N idle relay agents (plus the default managers
   and services, on free ports in a temp folder), the time of one `status` refresh on it
   (`bench.procs.status_refresh_ms`, the dashboard's own collector), the idle RSS of every
   program, and `agentmesh down`. `status` needs supervisord, which the mesh scenario does
   not run; an idle mesh is the cheapest honest one, since a refresh reads the registry,
   the snapshot and supervisord, whose sizes grow with N, not with the traffic.

Then `python -m agentmesh_cli.bench.topology simulate AGENTS EVENTS` for each of
--simulate (a subprocess each, so that its memory is freed and its peak RSS is its own):
wall time, events/s, decay times and peak memory.

The JSON is rewritten after every measure, so a run that fails half-way keeps what it
measured. Everything started is stopped by the scenario code it calls (by pid); the
supervised mesh by `agentmesh down`, or by its supervisord's pid when `down` fails.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psutil
import yaml

REPO = Path(__file__).resolve().parents[1]
DEFAULT_SIZES = (4, 16, 64, 128)
DEFAULT_SIMULATE = (1000, 10_000)
SIMULATE_EVENTS = 1_000_000
RSS_SAMPLE_S = 0.5
UP_TIMEOUT_S = 300  # `up` of 128 agents starts 128 Python processes on two cores
STATUS_REPEATS = 10
IDLE_WINDOW_S = 3.0  # after `up`: the idle mesh's CPU is measured this long before `status`


# -- memory of the processes a measure starts ------------------------------------------

def process_kind(cmdline: list[str]) -> str:
    """Which part of a bench mesh a process is, from its command line."""
    if not cmdline:
        return "other"
    program = os.path.basename(cmdline[0])
    if program == "tansu":
        return "broker"
    if program.startswith("valkey-server"):
        return "valkey"
    if "agentmesh_cli.agent" in cmdline or ("agentmesh_cli" in cmdline and "agent" in cmdline):
        return "agent"
    if "agentmesh_cli" in cmdline and "topology" in cmdline:
        return "topology"
    if any(arg.startswith("agentmesh_cli.bench.") for arg in cmdline):
        return "baseline"  # the raw consumer and the floor loops
    return "other"  # e.g. a child forked but not yet exec'd: RssWatch ignores it


class RssWatch:
    """A thread that samples the RSS of every descendant of this process every
    RSS_SAMPLE_S and keeps each pid's peak; `summary()` gives them by kind."""

    def __init__(self) -> None:
        self.peaks: dict[int, tuple[str, float]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="rss-watch", daemon=True)
        self._known: dict[int, tuple[psutil.Process, str]] = {}

    def __enter__(self) -> RssWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _loop(self) -> None:
        me = psutil.Process()
        while not self._stop.wait(RSS_SAMPLE_S):
            try:
                children = me.children(recursive=True)
            except psutil.Error:
                continue
            for child in children:
                try:
                    if child.pid not in self._known:
                        kind = process_kind(child.cmdline())
                        if kind == "other":
                            # most likely forked and not yet exec'd (it still shows our own
                            # command line and pages): look again at the next sample
                            continue
                        self._known[child.pid] = (child, kind)
                    proc, kind = self._known[child.pid]
                    rss = proc.memory_info().rss / 2**20
                except psutil.Error:
                    continue  # it ended between the listing and the look
                if rss > self.peaks.get(child.pid, ("", 0.0))[1]:
                    self.peaks[child.pid] = (kind, rss)

    def summary(self) -> dict[str, dict[str, float]]:
        """kind -> {processes, max, mean} of the per-process peaks, in MB."""
        by_kind: dict[str, list[float]] = {}
        for kind, rss in self.peaks.values():
            by_kind.setdefault(kind, []).append(rss)
        return {kind: {"processes": len(values), "max": round(max(values), 1),
                       "mean": round(statistics.fmean(values), 1)}
                for kind, values in sorted(by_kind.items())}


# -- the three measures per size ---------------------------------------------------------

MeshPoint = tuple[dict[str, Any] | None, dict[str, dict[str, float]], str]


def mesh_point(agents: int, duration: float) -> MeshPoint:
    """The mesh scenario at `agents` (None and the error's text when it failed), and the
    peak RSS of its processes by kind (also of a failed run: how far it got)."""
    from agentmesh_cli.bench import mesh

    with RssWatch() as watch:
        try:
            result: dict[str, Any] | None = mesh.run(agents=agents, duration=duration)
            error = ""
        except Exception as exc:  # a size the machine cannot carry is a point of the curve
            result, error = None, f"{type(exc).__name__}: {exc}"
    return result, watch.summary(), error


def attempt(what: str, measure: Any, *args: Any) -> dict[str, Any]:
    """`measure(*args)`, or {"error": ...} when it raised: one failed measure does not end
    the curve, and the JSON says what failed."""
    try:
        result: dict[str, Any] = measure(*args)
        return result
    except Exception as exc:
        print(f"{what} failed: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        return {"error": f"{type(exc).__name__}: {exc}"}


def decay_point(agents: int) -> dict[str, Any]:
    from agentmesh_cli.bench.topology import full_mesh_in_child

    return full_mesh_in_child(agents)


def _status_mesh(root: Path, agents: int, notes: list[str]) -> Any:
    """mesh.yaml of the repo's mesh with `agents` idle relay agents instead of its four,
    no demo workload, on free ports and embedded infra in `root`."""
    from agentmesh_cli.bench.mesh import RELAY_ROLE, relay_names
    from agentmesh_cli.bench.startup import mesh_copy

    data = yaml.safe_load((REPO / "mesh.yaml").read_text(encoding="utf-8"))
    partitions = max(int(data.get("kafka", {}).get("partitions", 16)), agents)
    data.setdefault("kafka", {})["partitions"] = partitions
    data["workload"] = {**(data.get("workload") or {}), "order_rate": 0, "lead_rate": 0, "refund_rate": 0}
    data["agents"] = [{"name": name, "role": RELAY_ROLE} for name in relay_names(agents, partitions)]
    template = root / "template.yaml"
    template.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    mesh_root = root / "mesh"
    mesh_root.mkdir()
    return mesh_copy(template, mesh_root, notes)


def status_point(agents: int, repeats: int = STATUS_REPEATS) -> dict[str, Any]:
    """`up` of a supervised mesh of `agents` idle relays, status refresh, idle RSS, `down`."""
    from agentmesh_cli.bench.procs import memory_by_program, status_refresh_ms
    from agentmesh_cli.bench.startup import Cycle, _env, _supervisord_pid, _tree
    from agentmesh_cli.constants import AGENT_PROGRAM_PREFIX

    notes: list[str] = []
    with tempfile.TemporaryDirectory(prefix="agentmesh-scale-") as tmp:
        mesh = _status_mesh(Path(tmp), agents, notes)
        env = _env()
        cycle = Cycle(mesh, env)
        try:
            started = time.perf_counter()
            result = subprocess.run([*cycle.command("up"), "--timeout", str(UP_TIMEOUT_S)],
                                    capture_output=True, text=True, env=env, cwd=mesh.root,
                                    timeout=UP_TIMEOUT_S + 60)
            up_s = time.perf_counter() - started
            if result.returncode != 0:
                tail = (result.stdout + result.stderr).splitlines()[-30:]
                raise RuntimeError(f"agentmesh up of {agents} agents exited {result.returncode}:\n"
                                   + "\n".join(tail))
            check = cycle.check()
            # an idle mesh still polls the broker (every agent's fetch wait): its CPU, which
            # also lets the last starts settle before the refresh is timed
            idle_cpu = _cpu_shares(check["pids"], IDLE_WINDOW_S)
            refresh = status_refresh_ms(mesh, repeats)
            memory = memory_by_program(mesh)
            watched = sorted(_tree([*check["pids"].values(), _supervisord_pid(mesh)]) - {0})
        except BaseException:
            cycle.clean_up()
            raise
        try:
            down = cycle.down(watched)
        except BaseException:
            cycle.clean_up()
            raise
    agent_rss = [m["rss_mb"] for name, m in memory.items() if name.startswith(AGENT_PROGRAM_PREFIX)]
    others = {name: m["rss_mb"] for name, m in memory.items() if not name.startswith(AGENT_PROGRAM_PREFIX)}
    return {"status_refresh_ms": refresh, "up_s": round(up_s, 3), "down_s": round(down["down_s"], 3),
            "idle_cpu_share": idle_cpu,
            "programs": check["programs"], "all_running": check["all_running"],
            "agents_registered": check["agents_registered"],
            "idle_rss_mb": {"agents": {"max": round(max(agent_rss), 1),
                                       "mean": round(statistics.fmean(agent_rss), 1)},
                            **others},
            "notes": notes}


def _cpu_shares(pids: dict[str, int], seconds: float) -> dict[str, float]:
    """Share of one core each program used over `seconds`; the agents summed as `agents`."""
    from agentmesh_cli.bench.infra import cpu_seconds
    from agentmesh_cli.constants import AGENT_PROGRAM_PREFIX

    def sample() -> dict[str, float]:
        used: dict[str, float] = {}
        for name, pid in pids.items():
            kind = "agents" if name.startswith(AGENT_PROGRAM_PREFIX) else name
            try:
                used[kind] = used.get(kind, 0.0) + cpu_seconds(pid)
            except OSError:  # gone: it counts for nothing
                pass
        return used

    before, started = sample(), time.monotonic()
    time.sleep(seconds)
    after, elapsed = sample(), time.monotonic() - started
    shares = {kind: round((after[kind] - before.get(kind, 0.0)) / elapsed, 3) for kind in sorted(after)}
    return {**shares, "total": round(sum(shares.values()), 3)}


def simulate_point(agents: int, events: int) -> dict[str, Any]:
    """The topology core alone in a fresh process: its JSON, plus the wall time."""
    started = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "agentmesh_cli.bench.topology", "simulate", str(agents),
                          str(events)], capture_output=True, text=True, check=True, timeout=1800)
    wall = time.perf_counter() - started
    result: dict[str, Any] = json.loads(out.stdout)
    return {"wall_s": round(wall, 2), **result}


# -- one row per size ------------------------------------------------------------------

def size_record(agents: int, mesh: dict[str, Any] | None, mesh_error: str, rss: dict[str, dict[str, float]],
                decay: dict[str, Any], status: dict[str, Any] | None) -> dict[str, Any]:
    """The figures of one size that the curve plots, plus the scenario's ratios, targets
    and notes. A measure that failed leaves its figures out and says why."""
    record: dict[str, Any] = {"agents": agents, "peak_rss_mb": rss}
    if mesh is None:
        record["mesh_error"] = mesh_error
    else:
        figures, raw, floor = mesh["figures"], mesh["raw"], mesh["floor"]
        shares = {k: figures[f"{k}_cpu_share"] for k in ("topology", "broker", "agents")}
        record.update({
            "msgs_per_s": figures["msgs_per_s"],
            "floor_replies_per_s": floor["replies_per_s"],
            "raw_records_per_s": raw["throughput"]["records_per_s"],
            "peak_latency": figures["peak_latency"],
            "paced": figures["paced"],
            "one_hop_p50_ms": figures["one_hop"]["p50_ms"],
            "raw_one_hop_p50_ms": raw["one_hop"]["p50_ms"],
            "cpu_share": {**shares, "total": round(sum(shares.values()), 3)},  # of one core each
            "topology_keeps_up": figures["topology_keeps_up"],
            "topology_backlog": figures["topology_backlog"],
            "agent_rss_mb": figures["agent_rss_mb"],
            "ratios": mesh["ratios"],
            "targets": {name: {"value": t["value"], "met": t["met"]} for name, t in mesh["targets"].items()},
            "mesh_notes": mesh["notes"],
        })
    if "error" in decay:
        record["decay_error"] = decay["error"]
    else:
        record.update({"decay_ms": decay["decay_ms"], "decay_prune_ms": decay["decay_prune_ms"],
                       "full_mesh_edges": decay["edges_before"], "core_mb": decay["core_mb"]})
    if status is not None:
        record["status"] = status
    return record


COLUMNS = ("agents", "msg/s", "floor/s", "p99 peak", "p99 paced", "topo CPU", "broker CPU",
           "agents CPU", "decay ms", "agent RSS", "topo RSS", "status ms")


def table_row(r: dict[str, Any]) -> str:
    def get(*path: str, fmt: str = "{:.2f}") -> str:
        value: Any = r
        for key in path:
            if not isinstance(value, dict) or key not in value:
                return "-"
            value = value[key]
        return fmt.format(value)

    cells = (str(r["agents"]), get("msgs_per_s", fmt="{:,}"), get("floor_replies_per_s", fmt="{:,}"),
             get("peak_latency", "p99_ms", fmt="{:.1f}"), get("paced", "latency", "p99_ms", fmt="{:.1f}"),
             get("cpu_share", "topology"), get("cpu_share", "broker"), get("cpu_share", "agents"),
             get("decay_prune_ms"), get("peak_rss_mb", "agent", "mean", fmt="{:.0f}") + "/"
             + get("peak_rss_mb", "agent", "max", fmt="{:.0f}"),
             get("peak_rss_mb", "topology", "max", fmt="{:.0f}"),
             get("status", "status_refresh_ms", "p50_ms", fmt="{:.1f}"))
    line = "  ".join(f"{c:>10}" for c in cells)
    if "mesh_error" in r:
        line += f"\n{'':>10}  mesh scenario failed: {r['mesh_error']}"
    return line


# -- the plot ------------------------------------------------------------------------------

def plot(data: dict[str, Any], png: Path) -> None:
    """Six small panels against the number of agents (log 2): msg/s, p99, CPU, decay,
    RSS per process, status refresh."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = sorted(data["sizes"], key=lambda r: r["agents"])
    if not rows:
        raise SystemExit("no sizes in the JSON: nothing to plot")
    x = [r["agents"] for r in rows]

    def series(get: Any) -> list[float | None]:
        out = []
        for r in rows:
            try:
                out.append(get(r))
            except (KeyError, TypeError):
                out.append(None)
        return out

    fig, axes = plt.subplots(2, 3, figsize=(13, 7.5))
    panels = [
        ("messages/s (peak)", "msg/s", [
            ("mesh", series(lambda r: r["msgs_per_s"])),
            ("floor (bare loops)", series(lambda r: r["floor_replies_per_s"])),
        ]),
        ("latency p99", "ms", [
            ("at the peak", series(lambda r: r["peak_latency"]["p99_ms"])),
            ("paced at half the peak", series(lambda r: r["paced"]["latency"]["p99_ms"])),
        ]),
        ("CPU (share of one core; 2 cores)", "cores", [
            ("topology manager", series(lambda r: r["cpu_share"]["topology"])),
            ("broker", series(lambda r: r["cpu_share"]["broker"])),
            ("all agents", series(lambda r: r["cpu_share"]["agents"])),
            ("the three together", series(lambda r: r["cpu_share"]["total"])),
            ("broker, idle supervised mesh", series(lambda r: r["status"]["idle_cpu_share"]["kafka"])),
        ]),
        ("decay + prune of a full mesh", "ms", [
            ("decay + prune", series(lambda r: r["decay_prune_ms"])),
            ("decay", series(lambda r: r["decay_ms"])),
        ]),
        ("RSS per process (peak under load)", "MB", [
            ("agent (mean)", series(lambda r: r["peak_rss_mb"]["agent"]["mean"])),
            ("topology manager", series(lambda r: r["peak_rss_mb"]["topology"]["max"])),
            ("broker", series(lambda r: r["peak_rss_mb"]["broker"]["max"])),
            ("valkey", series(lambda r: r["peak_rss_mb"]["valkey"]["max"])),
        ]),
        ("`status` refresh (idle mesh)", "ms", [
            ("p50", series(lambda r: r["status"]["status_refresh_ms"]["p50_ms"])),
            ("p99", series(lambda r: r["status"]["status_refresh_ms"]["p99_ms"])),
        ]),
    ]
    simulated = sorted((r for r in data.get("simulate", []) if "error" not in r), key=lambda r: r["agents"])
    for ax, (title, unit, lines) in zip(axes.flat, panels, strict=True):
        ticks = list(x)
        for label, ys in lines:
            points = [(a, y) for a, y in zip(x, ys, strict=True) if y is not None]
            if points:
                ax.plot(*zip(*points, strict=True), marker="o", label=label)
        if title.startswith("CPU"):
            ax.axhline(2.0, color="grey", linestyle=":", linewidth=1, label="whole machine")
        failed = [r["agents"] for r in rows if "mesh_error" in r]
        if failed and title.startswith(("messages", "latency", "CPU")):
            ax.plot(failed, [0] * len(failed), "rx", markersize=9, clip_on=False,
                    label="mesh scenario failed (see JSON)")
        if title.startswith("decay") and simulated:
            # the core alone at 1,000 and 10,000 agents: median decay over its synthetic stream
            sx = [r["agents"] for r in simulated]
            ax.plot(sx, [r["decay_ms"]["median"] for r in simulated], marker="s", linestyle="--",
                    label="core alone, simulated (median decay)")
            ax.set_yscale("log")
            ticks += sx
        ax.set_xscale("log", base=2)
        ax.set_xticks(ticks, [f"{a:,}" for a in ticks])
        ax.minorticks_off()
        ax.set_title(title, fontsize=10)
        ax.set_ylabel(unit)
        ax.set_xlabel("agents")
        if ax.get_yscale() == "linear":
            ax.set_ylim(bottom=0)
        if title.startswith("CPU"):
            ax.set_ylim(0, 2.7)  # room above the machine's 2 cores for the legend
        ax.grid(True, alpha=0.3)
        # the CPU panel's lines fill its lower half: its legend goes above them
        ax.legend(fontsize=6 if title.startswith("CPU") else 7,
                  loc="upper left" if title.startswith("CPU") else "best",
                  ncols=2 if title.startswith("CPU") else 1)
    machine = data["machine"]
    fig.suptitle(f"agentmesh scale curve: {machine['cores']} cores, {machine['date'][:10]}, "
                 f"load average {machine['load_average_start'][0]} at start", fontsize=11)
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=100)
    plt.close(fig)


# -- the run ------------------------------------------------------------------------------

def _machine() -> dict[str, Any]:
    return {"cores": os.cpu_count(), "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
            "python": platform.python_version(), "platform": platform.platform(),
            "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "load_average_start": [round(v, 2) for v in os.getloadavg()]}


def _write(data: dict[str, Any], out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")


def measure(sizes: list[int], duration: float, simulate: list[int], events: int, status: bool,
            out: Path) -> dict[str, Any]:
    data: dict[str, Any] = {
        "machine": _machine(),
        "settings": {"sizes": sizes, "duration_s": duration, "simulate_agents": simulate,
                     "simulate_events": events, "status_repeats": STATUS_REPEATS,
                     "rss_sample_s": RSS_SAMPLE_S,
                     "command": " ".join(["benchmarks/scale_curve.py", *sys.argv[1:]])},
        "sizes": [],
        "simulate": [],
    }
    print("  ".join(f"{c:>10}" for c in COLUMNS), flush=True)
    for agents in sizes:
        load = round(os.getloadavg()[0], 2)
        mesh, rss, mesh_error = mesh_point(agents, duration)
        decay = attempt(f"decay of {agents}", decay_point, agents)
        point = attempt(f"status of {agents}", status_point, agents) if status else None
        record = size_record(agents, mesh, mesh_error, rss, decay, point)
        record["load_average"] = [load, round(os.getloadavg()[0], 2)]
        data["sizes"].append(record)
        _write(data, out)
        print(table_row(record), flush=True)
    for agents in simulate:
        result = attempt(f"simulate {agents}", simulate_point, agents, events)
        data["simulate"].append({"agents": agents, "events": events, **result})
        _write(data, out)
        if "error" in result:
            continue
        print(f"simulate {agents:,} agents, {events:,} events: {result['wall_s']} s wall, "
              f"{result['events_per_s']:,} events/s, decay median {result['decay_ms']['median']} ms, "
              f"{result['peak_edges']:,} edges at most, peak RSS {result['peak_rss_mb']:,} MB", flush=True)
    data["machine"]["load_average_end"] = [round(v, 2) for v in os.getloadavg()]
    _write(data, out)
    return data


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=_ints, default=list(DEFAULT_SIZES),
                        help="agents per mesh, comma-separated (default 4,16,64,128)")
    parser.add_argument("--duration", type=float, default=5.0,
                        help="seconds per phase of the mesh scenario (default 5)")
    parser.add_argument("--simulate", type=_ints, default=list(DEFAULT_SIMULATE),
                        help="agents of the topology core alone, comma-separated; '' to skip "
                             "(default 1000,10000)")
    parser.add_argument("--events", type=int, default=SIMULATE_EVENTS,
                        help=f"messages of each simulation (default {SIMULATE_EVENTS:,})")
    parser.add_argument("--no-status", action="store_true",
                        help="skip the supervised mesh (status refresh, idle RSS, up/down times)")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "scale-curve.json")
    parser.add_argument("--png", type=Path, default=REPO / "docs" / "scale-curve.png")
    parser.add_argument("--plot-only", action="store_true", help="redraw the PNG from the JSON at --out")
    args = parser.parse_args(argv)
    if args.plot_only:
        data = json.loads(args.out.read_text(encoding="utf-8"))
    else:
        data = measure(args.sizes, args.duration, args.simulate, args.events, not args.no_status, args.out)
    plot(data, args.png)
    print(f"wrote {args.out} and {args.png}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

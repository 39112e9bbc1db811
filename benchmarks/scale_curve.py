"""The scale curve: how the mesh behaves at 4, 16, 64 and 128 agents on this machine, and
the topology core alone at 1,000 and 10,000 agents. Writes one JSON and draws one PNG.

    .venv/bin/python benchmarks/scale_curve.py [--sizes 4,16,64,128] [--runs 5] [--duration S]
        [--sign/--no-sign] [--broker tansu|noida] [--inbox-reader agent|host] [--skip-decay] [--skip-status]
        [--skip-simulate] [--mesh-only] [--out docs/scale-curve.json]
        [--png docs/scale-curve.png] [--plot-only]

Per size N, one measure after the other (never two at once: the machine has two cores,
and each measure would take the other's CPU):

1. the mesh scenario (`agentmesh_cli.bench.mesh.run`), --runs times, SETTLE_S apart: each
   run its own broker, Valkey, topology manager and N relay agents; messages/s at the
   peak, p99 at the peak and paced at half of it, the one-hop p50, the CPU share of the
   topology manager, the broker, Valkey and the agents, and the raw and floor baselines
   of the same run. Meanwhile a thread here samples the RSS of every process the run
   started (by pid, from psutil): agents, topology manager, broker, Valkey; their peaks
   are recorded (the scenario reports the agents' only);
2. once (--skip-decay): decay + prune of a full mesh of N agents by the topology core, in
   a fresh process (`bench.topology.full_mesh_in_child`): a full mesh is the most a
   manager of N agents can have to decay;
3. once (--skip-status): `agentmesh up` of a supervised mesh of N idle relay agents (plus
   the default managers and services, on free ports in a temp folder), the time of one
   `status` refresh on it (`bench.procs.status_refresh_ms`, the dashboard's own
   collector), the idle RSS of every program, and `agentmesh down`. `status` needs
   supervisord, which the mesh scenario does not run; an idle mesh is the cheapest honest
   one, since a refresh reads the registry, the snapshot and supervisord, whose sizes
   grow with N, not with the traffic.

Then (--skip-simulate) `python -m agentmesh_cli.bench.topology simulate AGENTS EVENTS`
for each of --simulate (a subprocess each, so that its memory is freed and its peak RSS
is its own): wall time, events/s, decay times and peak memory. --mesh-only: step 1 alone.

The JSON: `machine`, `settings`, `sizes` (a record per size), `simulate`, `wall_s`. A
size's record has the keys one run had before --runs, each now the median over the runs
that succeeded (scale_curve_figures.py): msgs_per_s, floor_replies_per_s,
raw_records_per_s, ratios (msgs_per_s_to_floor, _to_raw, one_hop_p50_to_raw),
peak_latency, paced, one_hop_p50_ms, raw_one_hop_p50_ms, floor_latency, cpu_share
(topology, broker, valkey, agents, per_agent, and total: the four together), agent_rss_mb,
peak_rss_mb; then topology_keeps_up (in every run), targets ({value: the median,
met_runs, runs}), sign_envelopes, runs_ok, runs_failed, wall_s of each step, the decay
and status figures, and `runs`: every run's own record (the same figures, plus
elapsed_s, load_average, topology_backlog, mesh_notes; or mesh_error). When no run of a
size succeeded, its record has mesh_error. A JSON of before --runs still plots.

The JSON is rewritten after every run and measure, so a curve that fails or is stopped
half-way keeps what it measured. Everything started is stopped by the scenario code it
calls (by pid); the supervised mesh by `agentmesh down`, or by its supervisord's pid when
`down` fails.
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil
import yaml
from scale_curve_figures import plot, run_record, size_record, table_header, table_row

if TYPE_CHECKING:
    from agentmesh_cli.embedded import BrokerKind

REPO = Path(__file__).resolve().parents[1]
DEFAULT_SIZES = (4, 16, 64, 128)
DEFAULT_RUNS = 5
SETTLE_S = 2.0  # between two runs of a size: the last one's processes have gone, its sockets close
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


def mesh_point(agents: int, duration: float, sign: bool | None = None,
               broker: BrokerKind = "tansu", inbox_reader: str = "auto") -> MeshPoint:
    """The mesh scenario at `agents` (None and the error's text when it failed), and the
    peak RSS of its processes by kind (also of a failed run: how far it got)."""
    from agentmesh_cli.bench import mesh

    with RssWatch() as watch:
        try:
            result: dict[str, Any] | None = mesh.run(agents=agents, duration=duration, sign=sign,
                                                     broker=broker, inbox_reader=inbox_reader)
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
    from agentmesh_cli.bench.mesh import RELAY_ROLE
    from agentmesh_cli.bench.mesh_relays import relay_names
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


# -- the run ------------------------------------------------------------------------------

def _machine() -> dict[str, Any]:
    return {"cores": os.cpu_count(), "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
            "python": platform.python_version(), "platform": platform.platform(),
            "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "load_average_start": [round(v, 2) for v in os.getloadavg()]}


def _write(data: dict[str, Any], out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")


@dataclass(frozen=True)
class Plan:
    """What a curve measures (the command line's options)."""

    sizes: list[int]
    duration: float = 5.0
    runs: int = DEFAULT_RUNS
    decay: bool = True
    status: bool = True
    simulate: list[int] = field(default_factory=lambda: list(DEFAULT_SIMULATE))
    events: int = SIMULATE_EVENTS
    sign: bool | None = None  # None: as mesh.yaml's default (on)
    broker: BrokerKind = "tansu"
    inbox_reader: str = "auto"  # kafka.inbox_reader of the bench meshes


def _mesh_runs(plan: Plan, agents: int, data: dict[str, Any], index: int,
               out: Path) -> list[dict[str, Any]]:
    """`plan.runs` runs of the mesh scenario at `agents`, one after the other; the size's
    record (data["sizes"][index]) and the JSON rewritten after each."""
    runs: list[dict[str, Any]] = []
    for n in range(1, plan.runs + 1):
        if n > 1:
            time.sleep(SETTLE_S)
        load, started = round(os.getloadavg()[0], 2), time.perf_counter()
        mesh, rss, mesh_error = mesh_point(agents, plan.duration, plan.sign, plan.broker, plan.inbox_reader)
        run = {"run": n, **run_record(agents, mesh, mesh_error, rss),
               "elapsed_s": round(time.perf_counter() - started, 1),
               "load_average": [load, round(os.getloadavg()[0], 2)]}
        runs.append(run)
        data["sizes"][index] = size_record(agents, runs)
        _write(data, out)
        print(table_row(run, f"{agents} #{n}"), flush=True)
    return runs


def _timed(what: str, step: Any, *args: Any) -> tuple[dict[str, Any], float]:
    started = time.perf_counter()
    result = attempt(what, step, *args)
    return result, round(time.perf_counter() - started, 1)


def measure(plan: Plan, out: Path) -> dict[str, Any]:
    data: dict[str, Any] = {
        "machine": _machine(),
        "settings": {"sizes": plan.sizes, "runs": plan.runs, "duration_s": plan.duration,
                     "decay": plan.decay, "status": plan.status, "simulate_agents": plan.simulate,
                     "simulate_events": plan.events, "status_repeats": STATUS_REPEATS,
                     "sign_envelopes": plan.sign, "broker": plan.broker, "inbox_reader": plan.inbox_reader,
                     "rss_sample_s": RSS_SAMPLE_S, "settle_s": SETTLE_S,
                     "command": " ".join(["benchmarks/scale_curve.py", *sys.argv[1:]])},
        "sizes": [],
        "simulate": [],
    }
    curve_started = time.perf_counter()
    print(table_header(), flush=True)
    for agents in plan.sizes:
        load = round(os.getloadavg()[0], 2)
        index = len(data["sizes"])
        data["sizes"].append({"agents": agents})
        started = time.perf_counter()
        runs = _mesh_runs(plan, agents, data, index, out)
        wall = {"mesh_runs": round(time.perf_counter() - started, 1)}
        decay = status = None
        if plan.decay:
            decay, wall["decay"] = _timed(f"decay of {agents}", decay_point, agents)
        if plan.status:
            status, wall["status"] = _timed(f"status of {agents}", status_point, agents)
        record = size_record(agents, runs, decay, status)
        record["wall_s"] = wall
        record["load_average"] = [load, round(os.getloadavg()[0], 2)]
        data["sizes"][index] = record
        _write(data, out)
        print(table_row(record, f"{agents} med"), flush=True)
    for agents in plan.simulate:
        result, wall_s = _timed(f"simulate {agents}", simulate_point, agents, plan.events)
        data["simulate"].append({"agents": agents, "events": plan.events, **result})
        _write(data, out)
        if "error" in result:
            continue
        print(f"simulate {agents:,} agents, {plan.events:,} events: {wall_s} s wall, "
              f"{result['events_per_s']:,} events/s, decay median {result['decay_ms']['median']} ms, "
              f"{result['peak_edges']:,} edges at most, peak RSS {result['peak_rss_mb']:,} MB", flush=True)
    data["machine"]["load_average_end"] = [round(v, 2) for v in os.getloadavg()]
    data["wall_s"] = round(time.perf_counter() - curve_started, 1)
    _write(data, out)
    print(f"the curve took {data['wall_s']:,.0f} s", flush=True)
    return data


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=_ints, default=list(DEFAULT_SIZES),
                        help="agents per mesh, comma-separated (default 4,16,64,128)")
    parser.add_argument("--runs", type=int, default=DEFAULT_RUNS,
                        help=f"runs of the mesh scenario per size; the figures are their medians "
                             f"(default {DEFAULT_RUNS})")
    parser.add_argument("--duration", type=float, default=5.0,
                        help="seconds per phase of the mesh scenario (default 5)")
    parser.add_argument("--sign", action=argparse.BooleanOptionalAction, default=None,
                        help="sign the bench mesh's records (security.sign_envelopes); default: on, "
                             "as mesh.yaml's default")
    parser.add_argument("--broker", choices=("tansu", "noida"), default="tansu",
                        help="the mesh scenario's broker (default tansu, the mesh's own)")
    parser.add_argument("--simulate", type=_ints, default=list(DEFAULT_SIMULATE),
                        help="agents of the topology core alone, comma-separated; '' to skip "
                             "(default 1000,10000)")
    parser.add_argument("--events", type=int, default=SIMULATE_EVENTS,
                        help=f"messages of each simulation (default {SIMULATE_EVENTS:,})")
    parser.add_argument("--inbox-reader", choices=("agent", "host", "auto"), default="auto",
                        help="kafka.inbox_reader of the bench meshes")
    parser.add_argument("--skip-decay", action="store_true", help="skip decay + prune of a full mesh")
    parser.add_argument("--skip-status", "--no-status", action="store_true",
                        help="skip the supervised mesh (status refresh, idle CPU and RSS, up/down times)")
    parser.add_argument("--skip-simulate", action="store_true", help="skip the topology core alone")
    parser.add_argument("--mesh-only", action="store_true",
                        help="only the mesh scenario: --skip-decay --skip-status --skip-simulate")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "scale-curve.json")
    parser.add_argument("--png", type=Path, default=REPO / "docs" / "scale-curve.png")
    parser.add_argument("--plot-only", action="store_true", help="redraw the PNG from the JSON at --out")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    if args.plot_only:
        data = json.loads(args.out.read_text(encoding="utf-8"))
    else:
        plan = Plan(args.sizes, args.duration, args.runs, decay=not (args.skip_decay or args.mesh_only),
                    status=not (args.skip_status or args.mesh_only),
                    simulate=[] if args.skip_simulate or args.mesh_only else args.simulate,
                    events=args.events, sign=args.sign, broker=args.broker, inbox_reader=args.inbox_reader)
        data = measure(plan, args.out)
    plot(data, args.png)
    print(f"wrote {args.out} and {args.png}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Idle scenario: what a mesh that has nothing to do costs, and how fast it answers the
first message after a quiet spell.

The default mesh (a throwaway copy of mesh.yaml on free loopback ports, or `--config`'s
file copied the same way) with its workload rates at 0 runs under supervisord twice in
the same run: as configured (readers sleep when idle: `kafka.idle_sleep`, doze.py), and
with `kafka.idle_sleep: false` as the baseline (every reader fetching all the time, as
before). For each:

- `cpu`: the CPU of every program (and its children) over `window` seconds of quiet,
  by pid, in percent of one core; `broker` and `mesh` (all programs) besides;
- `ask_busy_ms`: asks of Inventory (`check_stock`, through the asker as `agentmesh ask`
  does) one right after the other, the agent awake: round trip p50;
- `ask_after_quiet_ms`: asks each after `gap` s of quiet (the agent asleep): p50, and
  the first ask to Inventory after the whole CPU window (the "quiet minute"; the asker,
  made after the window, first asks Fraud once, so that its own start is not counted).

raw: the embedded broker and Valkey alone over the same window, nothing connected.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil
import yaml

from agentmesh_cli import constants as C
from agentmesh_cli.asker import Asker
from agentmesh_cli.bench.infra import cpu_seconds, free_port, ratio
from agentmesh_cli.bench.startup import REPO_MESH, Cycle, _env, _supervisord_pid, _tree, mesh_copy
from agentmesh_cli.embedded import start_broker, start_valkey, stop
from agentmesh_cli.mesh import Mesh, load_mesh

ASKS = 20  # busy asks, and asks after a gap
GAPS = 5  # asks after a quiet gap
SETTLE_S = 5.0  # after `up`, before the window: the readers fall asleep in about a second
TARGET_BROKER = 3.0  # % of a core, the default mesh at rest
TARGET_MESH = 8.0
TARGET_FIRST = 2.0  # the first ask after quiet, against the busy one


def _cpu(pids: dict[str, list[int]]) -> dict[str, float]:
    """CPU seconds so far of each program's processes (gone ones count 0)."""
    seconds = {}
    for name, group in pids.items():
        total = 0.0
        for pid in group:
            try:
                total += cpu_seconds(pid)
            except OSError:
                pass
        seconds[name] = total
    return seconds


def cpu_over(pids: dict[str, int], window: float) -> dict[str, float]:
    """Percent of one core each program (with its children) used over `window` seconds."""
    groups: dict[str, list[int]] = {}
    for name, pid in pids.items():
        try:
            groups[name] = [pid, *(child.pid for child in psutil.Process(pid).children(recursive=True))]
        except psutil.Error:
            continue
    before, started = _cpu(groups), time.perf_counter()
    time.sleep(window)
    after, took = _cpu(groups), time.perf_counter() - started
    return {name: round((after[name] - before[name]) / took * 100, 2) for name in sorted(groups)}


def _ask(asker: Asker, to: str = "Inventory") -> float:
    started = time.perf_counter()
    if to == "Inventory":
        asker.ask(to, "check_stock", {"items": {}}, timeout=10)
    else:
        asker.ask(to, "risk_assessment", {"amount": 1.0}, timeout=10)
    return (time.perf_counter() - started) * 1000


def _quiet_mesh(template: Path, root: Path, sleep: bool, notes: list[str],
                inbox_reader: str | None = None) -> Mesh:
    mesh = mesh_copy(template, root, notes)
    data = yaml.safe_load(mesh.config_file.read_text(encoding="utf-8"))
    data["workload"] = {**(data.get("workload") or {}), "order_rate": 0, "lead_rate": 0, "refund_rate": 0}
    data["kafka"]["idle_sleep"] = sleep
    if inbox_reader is not None:
        data["kafka"]["inbox_reader"] = inbox_reader
    mesh.config_file.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return load_mesh(mesh.config_file)


def one_mesh(template: Path, sleep: bool, window: float, gap: float, notes: list[str],
             inbox_reader: str | None = None) -> dict[str, Any]:
    """`up` the quiet mesh, measure it, `down` it (also on error)."""
    with tempfile.TemporaryDirectory(prefix="agentmesh-bench-idle-") as tmp:
        mesh = _quiet_mesh(template, Path(tmp), sleep, notes, inbox_reader)
        cycle = Cycle(mesh, _env())
        try:
            cycle.up()
            pids = cycle.check()["pids"]
            if "agent-Inventory" not in pids:
                raise_missing(mesh)
            time.sleep(SETTLE_S)
            cpu = cpu_over(pids, window)
            asker = Asker(mesh, sender=C.CLI_COUNTER_OWNER)
            try:
                _ask(asker, "Fraud")  # the asker's own first round trip; Inventory sleeps on
                first = _ask(asker)  # the first message to it after the quiet window
                busy = [_ask(asker) for _ in range(ASKS)]
                after_gap = []
                for _ in range(GAPS):
                    time.sleep(gap)
                    after_gap.append(_ask(asker))
            finally:
                asker.close()
            watched = sorted(_tree([*pids.values(), _supervisord_pid(mesh)]) - {0})
        except BaseException:
            cycle.clean_up()
            raise
        cycle.down(watched)
    broker = cpu.get(C.PROGRAM_KAFKA, 0.0)
    return {
        "cpu": cpu,
        "broker_cpu_pct": broker,
        "mesh_cpu_pct": round(sum(cpu.values()), 2),
        "ask_busy_ms": round(statistics.median(busy), 2),
        "ask_after_gap_ms": round(statistics.median(after_gap), 2),
        "ask_after_quiet_window_ms": round(first, 2),
    }


def raise_missing(mesh: Mesh) -> None:
    from agentmesh_cli.errors import BenchError

    raise BenchError(f"{mesh.config_file} runs no agent Inventory: the idle bench asks it")


def raw(window: float) -> dict[str, Any]:
    """The embedded broker and Valkey alone, nothing connected, over the same window."""
    with tempfile.TemporaryDirectory(prefix="agentmesh-bench-idle-raw-") as tmp:
        broker = start_broker(free_port())
        try:
            valkey = start_valkey(free_port(), Path(tmp))
            try:
                cpu = cpu_over({"kafka": broker.pid, "redis": valkey.pid}, window)
            finally:
                stop(valkey)
        finally:
            stop(broker)
    return {"broker_cpu_pct": cpu.get("kafka", 0.0), "redis_cpu_pct": cpu.get("redis", 0.0)}


def run(window: float = 60.0, gap: float = 3.0, config: str | None = None,
        inbox_reader: str | None = None) -> dict[str, Any]:
    """`inbox_reader`: kafka.inbox_reader of both meshes (default: as the template says)."""
    notes: list[str] = []
    template = Path(config) if config else REPO_MESH
    dozing = one_mesh(template, True, window, gap, notes, inbox_reader)
    fetching = one_mesh(template, False, window, gap, notes, inbox_reader)
    baseline = raw(window)
    first = max(dozing["ask_after_quiet_window_ms"], dozing["ask_after_gap_ms"])
    targets = {
        "broker_idle_cpu_pct": {"target": f"< {TARGET_BROKER}", "value": dozing["broker_cpu_pct"],
                                "met": dozing["broker_cpu_pct"] < TARGET_BROKER},
        "mesh_idle_cpu_pct": {"target": f"< {TARGET_MESH}", "value": dozing["mesh_cpu_pct"],
                              "met": dozing["mesh_cpu_pct"] < TARGET_MESH},
        "first_ask_after_quiet_vs_busy": {"target": f"<= {TARGET_FIRST}x",
                                          "value": ratio(first, dozing["ask_busy_ms"]),
                                          "met": first <= TARGET_FIRST * dozing["ask_busy_ms"]},
    }
    notes.append("an ask's round trip is two hops: the request to the agent (asleep or not) "
                 "and its reply to the asker's reader (always fetching)")
    return {
        "scenario": "idle",
        "settings": {"window_s": window, "gap_s": gap, "asks": ASKS, "gaps": GAPS, "mesh": template.name,
                     "inbox_reader": inbox_reader or "as the mesh says"},
        "figures": {"sleeping": dozing, "always_fetching": fetching},
        "raw": baseline,
        "floor": {},
        "ratios": {
            "mesh_cpu_sleeping_vs_fetching": ratio(dozing["mesh_cpu_pct"], fetching["mesh_cpu_pct"]),
            "broker_cpu_sleeping_vs_fetching": ratio(dozing["broker_cpu_pct"], fetching["broker_cpu_pct"]),
            "ask_after_quiet_sleeping_vs_fetching": ratio(first, max(fetching["ask_after_quiet_window_ms"],
                                                                      fetching["ask_after_gap_ms"])),
        },
        "targets": targets,
        "notes": notes,
    }

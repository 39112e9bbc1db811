"""Startup scenario: `agentmesh up` of the default mesh to all-ready and `agentmesh down` to
nothing left, on a throwaway copy of mesh.yaml (free loopback ports, its own folder), next
to the embedded broker and Valkey started alone (raw) and N bare Python processes that
only connect (floor).

- `up_s`: from the start of `agentmesh up` until it returns, which it does once every
  tier was ready in turn and every program is RUNNING (lifecycle.py); checked afterwards
  from outside: supervisord calls every program RUNNING and every agent is registered.
  `gates`: when the last program of each tier was reported ready (`up` prints one line
  per ready program when its stderr is not a terminal), from the same start.
- `down_s`: from the start of `agentmesh down` until every pid supervisord ran (and
  supervisord itself) is gone and every port of the mesh is free again; `down_command_s`
  is when the command itself returned.
- memory of every agent right after `up` (psutil RSS and USS), and the FORBIDDEN packages
  it loaded: native ones from /proc/PID/maps on every run, and every import (pure Python
  too) from one extra, untimed audit run under PYTHONPROFILEIMPORTTIME=1, which
  supervisord passes on to its programs, so their logs hold their import lines.
- `status_refresh`: one `agentmesh status` frame on the running mesh (bench.procs).
- `cli_help_ms`, `cli_token_ms`: `agentmesh --help` and `agentmesh token --user x`, exec to
  exit, median of 5, before the mesh starts (bench/cli_start.py); `supervisorctl --help` and
  `python -c pass` in the same rounds are their baselines (under floor.cli).

raw: the broker and Valkey started at once as processes until the broker answers a
metadata request and Valkey PING (what `up`'s infra gate waits for), and stopped again.
floor: as many bare Python processes as the mesh has Python programs, started at once,
each importing confluent_kafka, redis and orjson, asking the broker for metadata and
writing a ready key to Valkey; the time until every key is there, and until all have
exited after SIGTERM.
"""

from __future__ import annotations

import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psutil
import redis
import yaml

from agentmesh_cli import constants as C
from agentmesh_cli import environment
from agentmesh_cli.bench import cli_start
from agentmesh_cli.bench.infra import free_port
from agentmesh_cli.bench.procs import (
    forbidden_in,
    forbidden_modules,
    imported_modules,
    memory_mb,
    status_refresh_ms,
)
from agentmesh_cli.embedded import start_broker, start_valkey, stop
from agentmesh_cli.errors import BenchError
from agentmesh_cli.lifecycle import port_free
from agentmesh_cli.mesh import Mesh, load_mesh
from agentmesh_cli.replicas import Groups, running_agents
from agentmesh_cli.store import Store
from agentmesh_cli.supervisor.control import Supervisor
from agentmesh_cli.supervisor.render import program_specs
from agentmesh_cli.waiting import wait_until

REPO_MESH = Path(__file__).resolve().parents[2] / "mesh.yaml"
UP_TIMEOUT_S = 60
GONE_TIMEOUT_S = 30  # after `down`, how long the pids and ports get to go
CLI_REPEATS = 5  # rounds of the command-line timings (bench/cli_start.py)
READY_LINE = re.compile(r"^ready\s+(\S+)")  # `up`'s progress on a non-terminal
# variables that would point the throwaway mesh at another one (or another host's share)
FOREIGN_ENV = (environment.CONFIG, environment.HOST, environment.DISTRIBUTED_MODE,
               *(environment.service_url_variable(s) for s in C.SERVICE_PROGRAMS),
               *(environment.service_port_variable(s) for s in C.SERVICE_PROGRAMS))
TIER_ORDER = ("infra", "services", "managers", "agents")

# the floor process: the imports and connections of a Python role, nothing else
FLOOR_CODE = """
import os, signal, sys, time
import confluent_kafka, orjson, redis
bootstrap, url, key = sys.argv[1:4]
stopping = []
signal.signal(signal.SIGTERM, lambda *_: stopping.append(1))
producer = confluent_kafka.Producer({"bootstrap.servers": bootstrap})
producer.list_topics(timeout=10)  # the broker answered a metadata request
envelope = orjson.dumps({"v": 1, "id": key, "type": "ready", "from_agent_id": key,
                         "to_agent_id": "", "ts": int(time.time() * 1000), "payload": {}, "meta": {}})
redis.Redis.from_url(url).set(key, envelope)
while not stopping:
    time.sleep(0.05)
"""


def _median(values: list[float]) -> float:
    return round(statistics.median(values), 3)


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in environment.current().items() if k not in FOREIGN_ENV}
    return {**env, "COLUMNS": "160", **extra}


def mesh_copy(template: Path, root: Path, notes: list[str]) -> Mesh:
    """mesh.yaml of `template` in `root`, on free loopback ports and embedded infra."""
    data = yaml.safe_load(template.read_text(encoding="utf-8")) or {}
    kafka, store = data.setdefault("kafka", {}), data.setdefault("redis", {})
    if kafka.get("bootstrap_servers", "embedded") != "embedded" or store.get("url", "embedded") != "embedded":
        notes.append(f"{template.name} names an external broker or Redis: the copy runs embedded ones")
    if data.pop("hosts", None) is not None:
        notes.append(f"{template.name} spreads programs over hosts: the copy runs all of them here")
    kafka.update(bootstrap_servers="embedded", port=free_port())
    store.update(url="embedded", port=free_port())
    services = data.setdefault("services", {})
    for name in C.SERVICE_PROGRAMS:
        services[name] = {**(services.get(name) or {}), "port": free_port()}
    data["metrics"] = {**(data.get("metrics") or {}), "port": free_port()}
    data["gateway"] = {**(data.get("gateway") or {}), "port": free_port()}
    path = root / "mesh.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return load_mesh(path)


def _ports(mesh: Mesh) -> list[int]:
    cfg = mesh.config
    return [cfg.kafka.port, cfg.redis.port, cfg.services.memory.port, cfg.services.cognition.port,
            cfg.metrics.port, cfg.gateway.port]


def _supervisord_pid(mesh: Mesh) -> int:
    try:
        return int((mesh.state_dir / C.SUPERVISORD_PID).read_text().strip() or 0)
    except (OSError, ValueError):
        return 0


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _tree(pids: list[int]) -> set[int]:
    """The pids and every descendant of them."""
    found = set(pids)
    for pid in pids:
        try:
            found.update(child.pid for child in psutil.Process(pid).children(recursive=True))
        except psutil.Error:
            pass
    return found


class Cycle:
    """One `up` and `down` of the mesh copy, timed from outside."""

    def __init__(self, mesh: Mesh, env: dict[str, str]) -> None:
        self.mesh = mesh
        self.env = env
        self.tiers = {spec.name: spec.tier for spec in program_specs(mesh, sys.executable)}

    def command(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "agentmesh_cli", *args, "--config", str(self.mesh.config_file)]

    def up(self) -> dict[str, Any]:
        """Run `up`; its time, the time each program was reported ready, what it printed."""
        ready_at: dict[str, float] = {}
        output: list[str] = []
        started = time.perf_counter()
        proc = subprocess.Popen([*self.command("up"), "--timeout", str(UP_TIMEOUT_S)],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=self.env,
                                text=True, cwd=self.mesh.root)
        assert proc.stdout is not None
        for line in proc.stdout:  # read as printed: a ready line's time is its arrival
            match = READY_LINE.match(line)
            if match:
                ready_at.setdefault(match.group(1), time.perf_counter() - started)
            elif not line.startswith("import time:"):  # the audit run's own imports
                output.append(line)
        code = proc.wait()
        took = time.perf_counter() - started
        if code != 0:
            raise BenchError(f"agentmesh up exited {code}:\n{''.join(output[-40:])}")
        gates: dict[str, float] = {}
        for name, at in ready_at.items():
            tier = self.tiers.get(name)
            if tier is not None:
                gates[tier] = max(gates.get(tier, 0.0), at)
        return {"up_s": took, "gates": {f"{t}_s": round(gates[t], 3) for t in TIER_ORDER if t in gates}}

    def check(self) -> dict[str, Any]:
        """From outside, once `up` returned: programs RUNNING, agents registered, pids."""
        with Supervisor(self.mesh) as sup:
            infos = sup.processes()
        store = Store(self.mesh.redis_url, self.mesh.config.mesh, timeout=2.0)
        try:
            registered = set(store.agents())
            wanted = set(running_agents(self.mesh.config, Groups(store).counts()))  # a group's replicas
        finally:
            store.close()
        return {
            "programs": len(infos),
            "all_running": all(p["statename"] == "RUNNING" for p in infos),
            "agents_registered": wanted <= registered,
            "pids": {p["name"]: int(p["pid"]) for p in infos if p["pid"]},
        }

    def down(self, pids: list[int]) -> dict[str, float]:
        """Run `down`; when it returned and when every pid was gone and every port free."""
        ports = _ports(self.mesh)
        started = time.perf_counter()
        result = subprocess.run(self.command("down"), capture_output=True, text=True, env=self.env,
                                timeout=120, cwd=self.mesh.root)
        returned = time.perf_counter() - started
        if result.returncode != 0:
            raise BenchError(f"agentmesh down exited {result.returncode}:\n{result.stdout}{result.stderr}")
        wait_until(lambda: not any(_alive(pid) for pid in pids) and all(port_free(p) for p in ports),
                   GONE_TIMEOUT_S, "the mesh's processes to exit and its ports to be free")
        return {"down_command_s": returned, "down_s": time.perf_counter() - started}

    def clean_up(self) -> None:
        """After a failure: `down`, and supervisord ended by its pid if `down` could not."""
        subprocess.run(self.command("down"), capture_output=True, env=self.env, timeout=120,
                       cwd=self.mesh.root)
        pid = _supervisord_pid(self.mesh)
        if pid and _alive(pid):
            os.kill(pid, signal.SIGTERM)  # supervisord stops its programs as it exits


def _one_cycle(cycle: Cycle, audit: bool = False, status: bool = False) -> dict[str, Any]:
    """up, the checks and measures on the running mesh, down. Everything is stopped on error."""
    try:
        run = cycle.up()
        run.update(cycle.check())
        agents = {name: pid for name, pid in run["pids"].items() if name.startswith(C.AGENT_PROGRAM_PREFIX)}
        run["agent_memory"] = {name: memory_mb(pid) for name, pid in sorted(agents.items())}
        run["memory"] = {name: memory_mb(pid) for name, pid in sorted(run["pids"].items())}
        run["forbidden"] = sorted({m for pid in agents.values() for m in forbidden_modules(pid)})
        if status:
            run["status_refresh"] = status_refresh_ms(cycle.mesh, repeats=5)
        watched = sorted(_tree([*run["pids"].values(), _supervisord_pid(cycle.mesh)]) - {0})
    except BaseException:
        cycle.clean_up()
        raise
    try:
        run.update(cycle.down(watched))
    except BaseException:
        cycle.clean_up()
        raise
    if audit:
        run["imports"] = {name: imported_modules((cycle.mesh.logs_dir / f"{name}.log").read_text(
            errors="replace")) for name in agents}
    return run


def raw_and_floor(workers: int, notes: list[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The baselines: broker + Valkey alone, then `workers` bare Python processes on them."""
    with tempfile.TemporaryDirectory(prefix="agentmesh-startup-raw-") as tmp:
        root = Path(tmp)
        kafka_port, redis_port = free_port(), free_port()
        started = time.perf_counter()
        procs: dict[str, subprocess.Popen[bytes]] = {}
        took: dict[str, float] = {}
        errors: list[BaseException] = []

        def start(name: str, starter: Any) -> None:
            try:
                procs[name] = starter()
                took[name] = time.perf_counter() - started
            except BaseException as exc:  # re-raised below, after the other one is stopped
                errors.append(exc)

        with (root / "broker.log").open("wb") as log:
            starters = {"broker": lambda: start_broker(kafka_port, log),
                        "valkey": lambda: start_valkey(redis_port, root)}
            threads = [threading.Thread(target=start, args=item) for item in starters.items()]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
        try:
            if errors:
                raise errors[0]
            raw = {"up_s": round(max(took.values()), 3), "broker_ready_s": round(took["broker"], 3),
                   "valkey_ready_s": round(took["valkey"], 3)}
            floor = _floor(f"127.0.0.1:{kafka_port}", f"redis://127.0.0.1:{redis_port}/0", workers, notes)
        finally:
            stopping = time.perf_counter()
            for proc in procs.values():
                proc.terminate()
            for proc in procs.values():
                stop(proc)
            stopped = time.perf_counter() - stopping
        ports_free = port_free(kafka_port) and port_free(redis_port)
        raw["down_s"] = round(stopped, 3)
        if not ports_free:
            notes.append("raw: a port of the broker or Valkey was still taken after they exited")
    return raw, floor


def _floor(bootstrap: str, redis_url: str, workers: int, notes: list[str]) -> dict[str, Any]:
    client = redis.Redis.from_url(redis_url)
    keys = [f"startup-floor:{i}" for i in range(workers)]
    procs: list[subprocess.Popen[bytes]] = []
    try:
        started = time.perf_counter()
        procs = [subprocess.Popen([sys.executable, "-c", FLOOR_CODE, bootstrap, redis_url, key],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=_env())
                 for key in keys]
        wait_until(lambda: client.exists(*keys) == workers, 60, "the floor processes")
        up_s = time.perf_counter() - started
        rss = [memory_mb(proc.pid).get("rss_mb", 0.0) for proc in procs]
        stopping = time.perf_counter()
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            proc.wait(30)
        down_s = time.perf_counter() - stopping
    finally:
        for proc in procs:
            stop(proc)
        client.close()
    if any(proc.returncode != 0 for proc in procs):
        notes.append("floor: a process exited non-zero")
    return {"processes": workers, "up_s": round(up_s, 3), "down_s": round(down_s, 3),
            "rss_mb": {"max": max(rss), "mean": round(statistics.fmean(rss), 1)}}


def _stats(values: list[float]) -> dict[str, float]:
    return {"max": round(max(values), 1), "mean": round(statistics.fmean(values), 1)} if values else {}


def run(repeats: int = 3, config: str | None = None, audit: bool = True) -> dict[str, Any]:
    """`repeats` timed up/down cycles of a copy of `config` (default: the repo's mesh.yaml),
    one untimed import audit cycle before them, and the two baselines."""
    notes: list[str] = []
    template = Path(config) if config else REPO_MESH
    load = [round(x, 2) for x in os.getloadavg()]
    if environment.current().get("PYTHONDONTWRITEBYTECODE"):
        notes.append("PYTHONDONTWRITEBYTECODE is set: every Python program compiles agentmesh_cli "
                     "from source at each start (no __pycache__), which a normal install does not")
    with tempfile.TemporaryDirectory(prefix="agentmesh-startup-") as tmp:
        mesh = mesh_copy(template, Path(tmp), notes)
        cli = cli_start.run(mesh.config_file, _env(), CLI_REPEATS)  # first: nothing else runs yet
        cycle = Cycle(mesh, _env())
        startsecs = mesh.config.supervisor.startsecs
        audited: dict[str, set[str]] = {}
        if audit:
            audit_cycle = Cycle(mesh, _env(PYTHONPROFILEIMPORTTIME="1"))
            audited = _one_cycle(audit_cycle, audit=True)["imports"]
        runs = [_one_cycle(cycle, status=(i == repeats - 1)) for i in range(repeats)]
    python_programs = sum(1 for name in runs[-1]["pids"] if name not in (C.PROGRAM_KAFKA, C.PROGRAM_REDIS))
    raw, floor = raw_and_floor(python_programs, notes)

    agent_rss = [m["rss_mb"] for r in runs for m in r["agent_memory"].values() if m]
    agent_uss = [m["uss_mb"] for r in runs for m in r["agent_memory"].values() if m]
    forbidden = sorted({m for r in runs for m in r["forbidden"]}
                       | {m for modules in audited.values() for m in forbidden_in(modules)})
    if audit and not all("confluent_kafka" in {m.split(".")[0] for m in mods} for mods in audited.values()):
        notes.append("import audit: an agent log holds no import lines of confluent_kafka; "
                     "the audit did not see that agent's imports")
    up_runs = [round(r["up_s"], 3) for r in runs]
    down_runs = [round(r["down_s"], 3) for r in runs]
    gates = {name: _median([r["gates"][name] for r in runs if name in r["gates"]])
             for name in runs[-1]["gates"]}
    figures: dict[str, Any] = {
        "up_s": _median(up_runs),
        "down_s": _median(down_runs),
        "up_runs": up_runs,
        "down_runs": down_runs,
        "down_command_runs": [round(r["down_command_s"], 3) for r in runs],
        "gates": gates,
        "programs": runs[-1]["programs"],
        "all_running": all(r["all_running"] for r in runs),
        "agents_registered": all(r["agents_registered"] for r in runs),
        "agent_rss_mb": _stats(agent_rss),
        "agent_uss_mb": _stats(agent_uss),
        "agent_forbidden_modules": forbidden,
        "rss_mb_by_program": {name: m["rss_mb"] for name, m in runs[-1]["memory"].items() if m},
        "status_refresh": runs[-1]["status_refresh"],
        **cli["figures"],
    }
    if audit:
        figures["agent_imported_modules"] = max(len(mods) for mods in audited.values()) if audited else 0
    notes.append(f"`up` returns only when every program is RUNNING, i.e. stayed up supervisor.startsecs "
                 f"({startsecs} s) after its start: the agents, started last, put that much at the end")
    if not figures["all_running"] or not figures["agents_registered"]:
        notes.append("after `up` returned, a program was not RUNNING or an agent not registered")
    notes.append(f"load average at start {load}, at end {[round(x, 2) for x in os.getloadavg()]} "
                 f"({os.cpu_count()} cores)")
    rss_max = figures["agent_rss_mb"].get("max", 0.0)
    return {
        "scenario": "startup",
        "settings": {"repeats": repeats, "config": str(template), "audit": audit,
                     "up_timeout_s": UP_TIMEOUT_S, "startsecs": startsecs, "cli_repeats": CLI_REPEATS},
        "figures": figures,
        "raw": raw,
        "floor": {**floor, "cli": cli["floor"]},
        "ratios": {
            "up_over_raw": round(figures["up_s"] / raw["up_s"], 3),
            "up_over_floor": round(figures["up_s"] / floor["up_s"], 3),
            "down_over_raw": round(figures["down_s"] / raw["down_s"], 3) if raw["down_s"] else None,
            "down_over_floor": round(figures["down_s"] / floor["down_s"], 3) if floor["down_s"] else None,
            "agent_rss_over_floor": round(rss_max / floor["rss_mb"]["max"], 3),
            **cli["ratios"],
        },
        "targets": {
            "up_s": {"target": "<= 10 s", "value": figures["up_s"], "met": figures["up_s"] <= 10},
            "down_s": {"target": "<= 5 s", "value": figures["down_s"], "met": figures["down_s"] <= 5},
            "agent_rss_mb": {"target": "<= 60 MB (max)", "value": rss_max, "met": 0 < rss_max <= 60},
            "agent_forbidden_modules": {"target": "none", "value": len(forbidden), "met": not forbidden},
            **cli["targets"],
        },
        "notes": notes,
    }

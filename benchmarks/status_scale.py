"""How long `agentmesh status` takes to collect its frame on a supervised mesh of N agents
(default 128), against the reads it needs done by hand in the same run.

    .venv/bin/python benchmarks/status_scale.py [--agents 128] [--runs 20] [--paused] [--json OUT]
    .venv/bin/python benchmarks/status_scale.py --config path/to/mesh.yaml   # a running mesh

Without --config it writes a mesh.yaml in a temp folder (the repo's, on free ports, its
agents replaced by N idle agents of the demo roles, workload rates 0, a partition per
agent as the scale curve's), runs `agentmesh up`, measures, runs `agentmesh down` and
checks that every pid it ran is gone (supervisord ended by its pid if `down` could not).

Three figures per run, interleaved so that a busy moment of the machine falls on all, each
as wall time and as this process's CPU time (all its threads):

- status --json: `status.collect(mesh)`, what `status --json` and `--once` call (a new
  collector, new connections), less the time it slept in its CPU window. After a first,
  untimed, call each run goes on from what the previous one left in the state folder (CPU
  samples, the main log's offset), as a script polling `status --json` does, so the window
  is seldom waited: `windows waited` counts the runs that did.
- dashboard frame: `StatusCollector.collect()` of one collector kept across runs (its
  first call untimed), a frame of the live dashboard.
- baseline: the same reads by hand, one after the other, with new connections and no
  framework: one Redis pipeline for the registry, the counter owners, the snapshot, the
  history, the proposals' index, the replica state and the services' clients, a second
  for every counters hash and the proposals; one supervisord multicall (getState, getPID,
  getAllProcessInfo, readLog of what the log gained); /proc/PID/stat and statm of every
  pid; GET /health of each service and the gateway; a broker metadata request from a new
  admin client (reconnect.backoff.ms 1, as status's probe). Each part is timed too.

An idle mesh of 128 agents keeps two cores busy by itself (load average ~20 here), so the
wall times are mostly waits for a CPU. --paused measures a second time with the agents'
processes stopped (SIGSTOP, by pid, SIGCONT after): what the collection costs on a machine
the agents leave alone. The load average is printed with every figure.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import subprocess
import tempfile
import time
import xmlrpc.client
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from unittest import mock

import psutil
import redis
import yaml
from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient
from supervisor.xmlrpc import SupervisorTransport

from agentmesh_cli import constants as C
from agentmesh_cli import status
from agentmesh_cli.bench.startup import Cycle, _env, _supervisord_pid, _tree, mesh_copy
from agentmesh_cli.broker import admin_config
from agentmesh_cli.mesh import Mesh, load_mesh
from agentmesh_cli.services.probe import gateway_url, service_url

REPO = Path(__file__).resolve().parents[1]
DEMO_ROLES = ("inventory", "fraud", "sales", "support")
UP_TIMEOUT_S = 300  # `up` of 128 agents starts 128 Python processes on two cores
SETTLE_S = 3.0  # agents paused: their last runnable moments pass
SETTLE_PER_AGENT_S = 0.25  # after `up`: its own load passes (32 s at 128 agents)
TICKS, PAGE = os.sysconf("SC_CLK_TCK"), os.sysconf("SC_PAGE_SIZE")


def write_mesh(root: Path, agents: int) -> Mesh:
    """The repo's mesh.yaml with `agents` idle agents of the demo roles, on free ports."""
    data = yaml.safe_load((REPO / "mesh.yaml").read_text(encoding="utf-8"))
    data.setdefault("kafka", {})["partitions"] = max(int(data["kafka"].get("partitions", 16)), agents)
    data["workload"] = {**(data.get("workload") or {}), "order_rate": 0, "lead_rate": 0, "refund_rate": 0}
    data["agents"] = [{"name": f"{DEMO_ROLES[i % 4].capitalize()}{i:03d}", "role": DEMO_ROLES[i % 4]}
                      for i in range(agents)]
    template = root / "template.yaml"
    template.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    (root / "mesh").mkdir()
    return mesh_copy(template, root / "mesh", [])


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


@contextmanager
def running(mesh: Mesh) -> Iterator[None]:
    """`agentmesh up` of `mesh`; afterwards `down`, and every pid it ran checked gone."""
    cycle = Cycle(mesh, _env())
    watched: list[int] = []
    try:
        started = time.perf_counter()
        result = subprocess.run([*cycle.command("up"), "--timeout", str(UP_TIMEOUT_S)], capture_output=True,
                                text=True, env=cycle.env, cwd=mesh.root, timeout=UP_TIMEOUT_S + 60)
        if result.returncode != 0:
            raise RuntimeError(f"agentmesh up exited {result.returncode}:\n"
                               + "\n".join((result.stdout + result.stderr).splitlines()[-30:]))
        check = cycle.check()
        print(f"up: {time.perf_counter() - started:.1f} s, {check['programs']} programs, all running: "
              f"{check['all_running']}, agents registered: {check['agents_registered']}", flush=True)
        watched = sorted(_tree([*check["pids"].values(), _supervisord_pid(mesh)]) - {0})
        time.sleep(max(SETTLE_S, SETTLE_PER_AGENT_S * len(mesh.config.agents)))
        yield
    except BaseException:
        cycle.clean_up()
        raise
    try:
        down = cycle.down(watched)  # waits until every watched pid is gone and the ports are free
    except BaseException:
        cycle.clean_up()
        raise
    left = [pid for pid in watched if _alive(pid)]
    print(f"down: {down['down_s']:.1f} s; of the {len(watched)} pids it ran, left: {left or 'none'}")


@contextmanager
def agents_paused(mesh: Mesh) -> Iterator[int]:
    """Every agent program's process stopped (SIGSTOP by pid) inside; SIGCONT after."""
    with supervisor_proxy(mesh) as proxy:
        pids = [int(p["pid"]) for p in proxy.supervisor.getAllProcessInfo()
                if p["pid"] and p["name"].startswith(C.AGENT_PROGRAM_PREFIX)]
    stopped: list[int] = []
    try:
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
            stopped.append(pid)
        time.sleep(SETTLE_S)  # their last runnable moments pass
        yield len(stopped)
    finally:
        for pid in stopped:
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass


@contextmanager
def supervisor_proxy(mesh: Mesh) -> Iterator[Any]:
    transport = SupervisorTransport(None, None, f"unix://{mesh.socket}")
    try:
        yield xmlrpc.client.ServerProxy("http://agentmesh", transport=transport)
    finally:
        transport.close()


class Timings:
    """Wall and CPU milliseconds of a kind of run; `windows` the CPU windows slept."""

    def __init__(self) -> None:
        self.wall: list[float] = []
        self.cpu: list[float] = []
        self.windows = 0

    def time(self, fn: Callable[[], Any], slept: Callable[[], float] = lambda: 0.0) -> Any:
        started, cpu = time.perf_counter(), time.process_time()
        value = fn()
        pause = slept()
        self.wall.append((time.perf_counter() - started - pause) * 1000)
        self.cpu.append((time.process_time() - cpu) * 1000)
        self.windows += pause > 0
        return value

    def figures(self) -> dict[str, Any]:
        return {**quantiles(self.wall), "cpu_p50_ms": quantiles(self.cpu)["p50_ms"], "windows": self.windows,
                "wall_ms": [round(ms, 2) for ms in self.wall], "cpu_ms": [round(ms, 2) for ms in self.cpu]}


class SleepMeter:
    """The time slept in status's CPU window, while it patches time.sleep."""

    def __init__(self) -> None:
        self.slept = 0.0
        self._sleep = time.sleep

    def sleep(self, seconds: float) -> None:
        started = time.perf_counter()
        self._sleep(seconds)
        self.slept += time.perf_counter() - started

    def one_shot(self, mesh: Mesh) -> dict[str, Any]:
        self.slept = 0.0
        with mock.patch.object(status.time, "sleep", self.sleep):
            return status.collect(mesh)


class Baseline:
    """The reads of a status frame by hand: redis-py, xmlrpc, /proc, http.client, AdminClient."""

    def __init__(self, mesh: Mesh) -> None:
        self.mesh = mesh
        self.keys = mesh.keys
        self.health = [service_url(mesh, name) + "/health" for name in C.SERVICE_PROGRAMS]
        if mesh.config.gateway.enabled:
            self.health.append(gateway_url(mesh) + "/health")
        self.log_offset = 0
        self.parts: dict[str, list[float]] = {}

    def _timed(self, part: str, fn: Callable[[], Any]) -> Any:
        started = time.perf_counter()
        value = fn()
        self.parts.setdefault(part, []).append((time.perf_counter() - started) * 1000)
        return value

    def run(self) -> None:
        self._timed("redis", self._redis)
        pids = self._timed("supervisord", self._supervisord)
        self._timed("/proc", lambda: self._proc(pids))
        self._timed("health", self._health)
        self._timed("broker", self._broker)

    def _redis(self) -> None:
        k = self.keys
        client = redis.Redis.from_url(self.mesh.redis_url, decode_responses=True)
        try:
            pipe = client.pipeline(transaction=False)
            pipe.ping()
            pipe.hgetall(k.agents)
            pipe.smembers(k.counter_owners)
            pipe.get(k.topology_snapshot)
            pipe.lrange(k.topology_history, 0, C.TOPOLOGY_HISTORY_KEPT - 1)
            pipe.zrevrange(k.proposals, 0, status.RECENT_PROPOSALS - 1)
            pipe.hgetall(k.replicas)
            pipe.smembers(k.retiring)
            pipe.hgetall(k.service_clients)
            _ping, registry, owners, snapshot, history, ids, _counts, _retiring, clients = pipe.execute()
            pipe = client.pipeline(transaction=False)
            for owner in sorted(owners):
                pipe.hgetall(k.counters(owner))
            if ids:
                pipe.mget([k.proposal(i) for i in ids])
            replies = pipe.execute()
            for raw in [*registry.values(), *clients.values(), *history, snapshot or "null"]:
                json.loads(raw)
            for raw in (replies[-1] if ids else []):
                json.loads(raw or "null")
        finally:
            client.close()

    def _supervisord(self) -> list[int]:
        calls = [{"methodName": f"supervisor.{m}", "params": p}
                 for m, p in (("getState", []), ("getPID", []), ("getAllProcessInfo", []),
                              ("readLog", [self.log_offset, 0]))]
        with supervisor_proxy(self.mesh) as proxy:
            _state, _pid, infos, log = proxy.system.multicall(calls)
        self.log_offset += len(log.encode())
        return [int(p["pid"]) for p in infos if p["pid"]]

    def _proc(self, pids: list[int]) -> list[tuple[float, float, int]]:
        """(start, CPU seconds, RSS bytes) of each pid."""
        read = []
        for pid in pids:
            try:
                with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                with open(f"/proc/{pid}/statm", encoding="ascii") as f:
                    rss = int(f.read().split()[1]) * PAGE
            except OSError:
                continue
            read.append((int(fields[19]) / TICKS, (int(fields[11]) + int(fields[12])) / TICKS, rss))
        return read

    def _health(self) -> None:
        for url in self.health:
            host, port = url.split("//", 1)[1].split("/", 1)[0].rsplit(":", 1)
            connection = http.client.HTTPConnection(host, int(port), timeout=0.5)
            try:
                connection.request("GET", "/health")
                connection.getresponse().read()
            except OSError:
                pass
            finally:
                connection.close()

    def _broker(self) -> None:
        conf = {**admin_config(self.mesh.config.kafka, "agentmesh-baseline"), "reconnect.backoff.ms": 1}
        try:
            AdminClient(conf).list_topics(timeout=0.5)
        except KafkaException:
            pass  # no answer in 0.5 s: status's probe gives up as soon


def quantiles(samples: list[float]) -> dict[str, float]:
    """p50 and p95 by nearest rank, min and max, in ms."""
    ordered = sorted(samples)

    def rank(q: float) -> float:
        return round(ordered[max(0, min(len(ordered) - 1, round(q * len(ordered)) - 1))], 1)

    return {"p50_ms": rank(0.50), "p95_ms": rank(0.95), "min_ms": round(ordered[0], 1),
            "max_ms": round(ordered[-1], 1), "runs": len(ordered)}


def measure(mesh: Mesh, runs: int) -> dict[str, Any]:
    meter, baseline = SleepMeter(), Baseline(mesh)
    one_shot, frames, base = Timings(), Timings(), Timings()
    load_before = os.getloadavg()
    broker_down = 0
    meter.one_shot(mesh)  # untimed: leaves the samples and the log's offset the runs go on from
    with status.StatusCollector(mesh) as collector:
        collector.collect()  # untimed: opens the connections, primes the CPU samples
        baseline.run()
        baseline.parts.clear()
        for _ in range(runs):
            data = one_shot.time(lambda: meter.one_shot(mesh), lambda: meter.slept)
            frame = frames.time(collector.collect)
            base.time(baseline.run)
            broker_down += sum(not d["infra"]["broker"]["reachable"] for d in (data, frame))
    return {
        "agents": sum(len(a.get("members") or [a]) for a in frame["agents"]),
        "programs": len(frame["programs"]),
        "errors": frame["errors"],
        "broker_unanswered": broker_down,
        "status_json": one_shot.figures(),
        "frame": frames.figures(),
        "baseline": base.figures(),
        "baseline_parts": {part: quantiles(values)["p50_ms"] for part, values in baseline.parts.items()},
        "loadavg": {"before": [round(x, 2) for x in load_before],
                    "after": [round(x, 2) for x in os.getloadavg()]},
        "cpus": os.cpu_count(),
    }


def report(result: dict[str, Any], title: str) -> str:
    load = result["loadavg"]
    lines = [f"{title}: {result['agents']} agents, {result['programs']} programs; load average "
             f"{load['before'][0]} before, {load['after'][0]} after ({result['cpus']} CPUs)",
             f"  {'':26} {'p50 ms':>8} {'p95 ms':>8} {'min':>8} {'max':>8} {'CPU p50':>8}"]
    for key, label in (("status_json", "status --json (no window)"), ("frame", "dashboard frame"),
                       ("baseline", "baseline (reads by hand)")):
        q = result[key]
        lines.append(f"  {label:26} {q['p50_ms']:8.1f} {q['p95_ms']:8.1f} {q['min_ms']:8.1f} "
                     f"{q['max_ms']:8.1f} {q['cpu_p50_ms']:8.1f}")
    base = result["baseline"]["p50_ms"]
    lines.append(f"  p50 over the baseline's: status --json {result['status_json']['p50_ms'] / base:.2f}, "
                 f"frame {result['frame']['p50_ms'] / base:.2f}; CPU windows waited: "
                 f"{result['status_json']['windows']} of {result['status_json']['runs']}; broker "
                 f"unanswered in {result['broker_unanswered']} frames")
    lines.append("  baseline parts, p50 ms: " + ", ".join(
        f"{part} {ms:.1f}" for part, ms in result["baseline_parts"].items()))
    if result["errors"]:
        lines.append(f"  errors in the last frame: {result['errors']}")
    return "\n".join(lines)


def measure_all(mesh: Mesh, runs: int, paused: bool) -> dict[str, Any]:
    results = {"running": measure(mesh, runs)}
    print(report(results["running"], "agents running"), flush=True)
    if paused:
        with agents_paused(mesh) as count:
            results["paused"] = measure(mesh, runs)
        print(report(results["paused"], f"{count} agents paused"), flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--agents", type=int, default=128)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--paused", action="store_true",
                        help="measure a second time with the agents' processes stopped")
    parser.add_argument("--config", help="measure this running mesh (no up, no down)")
    parser.add_argument("--json", dest="out", help="also write the figures to this file")
    args = parser.parse_args()
    if args.config:
        results = measure_all(load_mesh(args.config), args.runs, args.paused)
    else:
        with tempfile.TemporaryDirectory(prefix="agentmesh-status-") as tmp:
            mesh = write_mesh(Path(tmp), args.agents)
            with running(mesh):
                results = measure_all(mesh, args.runs, args.paused)
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()

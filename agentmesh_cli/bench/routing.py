"""Routing scenario (issue 21): the routing models of docs/routing.md in the real mesh.

A group `Pool` of three replicas (`Server`, bench/routing_roles.py: concurrency 1, mean
service times 10, 20 and 40 ms, exponential by default: capacities 100, 50 and 25 msg/s,
175 in all) and one load generator agent per model (`Load-<model>`, each with a mesh.yaml
of its own that differs in `routing` alone), each asking the group open loop: Poisson
arrivals, each ask a new conversation, timed from its scheduled time to its reply.

- Latency: per run a fresh broker, Valkey and agents; at each load (50%, 80%, 95% of 175
  msg/s) each model in turn (the order rotated per run) runs one job of `seconds`, its
  first `Plan.warmup_s` not counted; the same seed gives every model of a run the same arrivals.
  p50 / p99 per model and load are the medians over the runs; the ratio physarum p99 /
  p2c_ewma p99 is taken from those medians.
- Kill: per run another fresh mesh; each kill model in turn runs a job at 80% load; at
  `before_s` the bench kills replica `kill_replica` with SIGKILL (by pid), spawns it again
  `dead_s` later. The asks' timeout (60 s) outlasts the dead time, so a request routed to
  the dead replica waits in its inbox and is handled after the restart: every ask must be
  answered, the group's ledger must count no request handled twice. Figures per trial
  (bench/routing_figures.py): the dead replica's share of new conversations from 2 s after
  the kill until the restart; seconds from the restart to the end of the first 5 s window in
  which its share is at least 90% of its fair share (its capacity's share: 25/175 for
  Pool-3) and of its own share before the kill. The sender's router state (published each
  second, Groups.routing) is sampled for the plots.
- CPU: routing's cost per message in process (bench/routing_cpu.py), against an ask to a
  fixed name.
"""

from __future__ import annotations

import os
import statistics
from dataclasses import dataclass, replace
from typing import Any

from agentmesh_cli.bench.infra import ratio
from agentmesh_cli.bench.routing_cpu import routing_cpu
from agentmesh_cli.bench.routing_figures import kill_trial, latency, median, series, throughput
from agentmesh_cli.bench.routing_jobs import GROUP, REPLICAS, ROLES, Job, Jobs, KillTrial, routing_mesh
from agentmesh_cli.bench.routing_roles import SERVICE_MS
from agentmesh_cli.errors import BenchError
from agentmesh_cli.replicas import Groups

CAPACITIES = {name: 1000.0 / ms for name, ms in zip(REPLICAS, SERVICE_MS, strict=True)}
CAPACITY = sum(CAPACITIES.values())
FAIR = {name: round(c / CAPACITY, 4) for name, c in CAPACITIES.items()}  # the capacity's share
WEIGHTS = {name: c / min(CAPACITIES.values()) for name, c in CAPACITIES.items()}  # 4:2:1
MODELS: dict[str, dict[str, Any]] = {
    "physarum": {"model": "physarum"},
    "p2c_ewma": {"model": "p2c_ewma"},
    "round_robin": {"model": "round_robin", "weights": WEIGHTS},  # weighted by declared capacity
    "round_robin_plain": {"model": "round_robin"},  # a reference only: it overloads Pool-3
}
DEFAULT_MODELS = ("physarum", "p2c_ewma", "round_robin")
KILL_MODELS = ("physarum", "p2c_ewma")
LOADS = (0.5, 0.8, 0.95)
KILL_LOAD = 0.8
ASK_TIMEOUT_S = 60.0
TARGET_P99_RATIO, TARGET_DEAD_SHARE, TARGET_BACK_S = 1.1, 0.02, 30.0
SUMMED = ("asks", "failed", "handled", "handled_twice", "duplicates", "late_replies", "expired_requests")


@dataclass(frozen=True)
class Plan:
    runs: int = 5
    seconds: float = 12.0  # each latency job
    before_s: float = 10.0  # a kill trial: from its start to the kill
    dead_s: float = 12.0  # from the kill to the restart
    after_s: float = 35.0  # from the restart to the end
    kill_replica: int = 3
    cpu_messages: int = 20_000
    cpu_repeats: int = 5
    probe_s: float = 3.0  # each replica asked alone at twice its capacity: its measured capacity
    warmup_s: float = 2.0  # the start of each job not counted


# a check that it all works (make test runs it), not figures: each latency job counts 1 s
QUICK = Plan(runs=1, seconds=2.0, before_s=3.0, dead_s=3.0, after_s=6.0, cpu_messages=2000, cpu_repeats=1,
             probe_s=1.0, warmup_s=1.0)


def load_key(load: float) -> str:
    return f"{round(load * 100)}%"


def _rotated(items: tuple[str, ...], by: int) -> list[str]:
    return [items[(i + by) % len(items)] for i in range(len(items))]


def _capacities(jobs: Jobs, model: str, plan: Plan, service: str) -> dict[str, dict[str, Any]]:
    """Each replica asked by its name (no routing) at twice its nominal capacity: replica ->
    the job's figures, with the replies per second it managed (its measured capacity)."""
    out: dict[str, dict[str, Any]] = {}
    for name in REPLICAS:
        job = jobs.run(model, 2 * CAPACITIES[name], plan.probe_s, f"probe:{name}", service, to=name)
        out[name] = {**latency(job.log, 0.0, REPLICAS), **job.counted, "msg_s": throughput(job.log)}
    return out


def _latency_run(jobs: Jobs, run: int, models: tuple[str, ...], loads: tuple[float, ...], plan: Plan,
                 service: str) -> dict[str, dict[str, Any]]:
    """One run of the latency matrix: (load key, model) -> that job's figures."""
    out: dict[str, dict[str, Any]] = {}
    for load in loads:
        for model in _rotated(models, run):
            job = jobs.run(model, load * CAPACITY, plan.seconds, f"latency:{run}:{load}", service)
            out[f"{load_key(load)}/{model}"] = {**latency(job.log, plan.warmup_s, REPLICAS), **job.counted}
    return out


def _kill_run(jobs: Jobs, run: int, models: tuple[str, ...], plan: Plan, service: str) -> dict[str, Any]:
    """One run of the kill trials: model -> (figures, series)."""
    replica = REPLICAS[plan.kill_replica - 1]
    seconds = plan.before_s + plan.dead_s + plan.after_s
    out: dict[str, Any] = {}
    for model in _rotated(models, run):
        trial = KillTrial(jobs.running, replica, model, plan.before_s, plan.before_s + plan.dead_s)
        job = jobs.run(model, KILL_LOAD * CAPACITY, seconds, f"kill:{run}", service, trial=trial)
        if trial.killed is None or trial.restarted is None:
            raise BenchError(f"the kill trial of {model} ended before its kill and restart")
        jobs.running.wait_ready(replica)  # before the next trial
        out[model] = (_trial_figures(job, trial, replica, seconds, plan.warmup_s),
                      {"run": run, "kill_s": round(trial.killed, 3), "restart_s": round(trial.restarted, 3),
                       "ready_s": trial.ready, "seconds": seconds,
                       "per_second": series(job.log, seconds, REPLICAS), "snapshots": trial.snapshots})
    return out


def _trial_figures(job: Job, trial: KillTrial, replica: str, seconds: float,
                   warmup_s: float) -> dict[str, Any]:
    assert trial.killed is not None and trial.restarted is not None
    figures = kill_trial(job.log, replica, FAIR[replica], trial.killed, trial.restarted, seconds, warmup_s,
                         REPLICAS)
    answered = latency(job.log, warmup_s, REPLICAS)
    return {**figures, "restart_ready_s": trial.ready, "p50_ms": answered["p50_ms"],
            "p99_ms": answered["p99_ms"], "asks": len(job.log), "failed": job.log.failed(), **job.counted}


def _summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One (load, model)'s latency figures over the runs: medians, the largest max, sums."""
    def mid(name: str) -> float:
        return round(statistics.median(r[name] for r in runs), 3)

    return {"p50_ms": mid("p50_ms"), "p99_ms": mid("p99_ms"), "max_ms": max(r["max_ms"] for r in runs),
            "p50_ms_runs": [r["p50_ms"] for r in runs], "p99_ms_runs": [r["p99_ms"] for r in runs],
            "shares": {n: round(statistics.median(r["shares"][n] for r in runs), 4) for n in REPLICAS},
            "send_lag_p99_ms": mid("send_lag_p99_ms"),
            "asks": sum(r["asks"] for r in runs), "failed": sum(r["failed"] for r in runs),
            "handled_twice": sum(r["handled_twice"] for r in runs)}


def _kill_summary(trials: list[dict[str, Any]]) -> dict[str, Any]:
    def mid(name: str) -> float | None:
        return median([t[name] for t in trials])

    return {"dead_share": mid("dead_share"), "dead_share_runs": [t["dead_share"] for t in trials],
            "dead_share_first_2s": mid("dead_share_first_2s"), "share_before": mid("share_before"),
            "back_to_fair_s": mid("back_to_fair_s"),
            "back_to_fair_s_runs": [t["back_to_fair_s"] for t in trials],
            "back_to_before_s": mid("back_to_before_s"),
            "back_to_before_s_runs": [t["back_to_before_s"] for t in trials],
            "share_last_10s": mid("share_last_10s"), "restart_ready_s": mid("restart_ready_s"),
            "p50_ms": mid("p50_ms"), "p99_ms": mid("p99_ms"),
            **{name: sum(t[name] for t in trials) for name in SUMMED}}


def run(repeats: int | None = None, duration: float | None = None, quick: bool = False,
        kill_replica: int | None = None, models: tuple[str, ...] = DEFAULT_MODELS,
        kill_models: tuple[str, ...] = KILL_MODELS, loads: tuple[float, ...] = LOADS,
        service: str = "exp") -> dict[str, Any]:
    """The routing scenario, in the bench result shape (cli/bench.py), plus `series` for the
    plots (benchmarks/plot_routing.py). `quick`: one short run of everything (tests)."""
    plan = QUICK if quick else Plan()
    plan = replace(plan, runs=repeats or plan.runs, seconds=duration or plan.seconds,
                   kill_replica=kill_replica or plan.kill_replica)
    unknown = sorted((set(models) | set(kill_models)) - set(MODELS))
    if unknown or not 1 <= plan.kill_replica <= len(REPLICAS) or service not in ("exp", "fixed"):
        raise BenchError(f"bench routing: models among {', '.join(MODELS)}, kill_replica 1..{len(REPLICAS)}, "
                         f"service exp or fixed (got {unknown or ''} {plan.kill_replica} {service})")
    load_start = round(os.getloadavg()[0], 2)
    matrix: list[dict[str, dict[str, Any]]] = []
    trials: list[dict[str, Any]] = []
    cpu: dict[str, Any] = {}
    probes: dict[str, dict[str, Any]] = {}
    cfg = None
    for r in range(plan.runs):
        with routing_mesh({m: MODELS[m] for m in models}) as running:
            cfg = running.bench.mesh.config
            jobs = Jobs(running, ASK_TIMEOUT_S)
            try:
                if r == 0:
                    probes = _capacities(jobs, models[0], plan, service)
                matrix.append(_latency_run(jobs, r, models, loads, plan, service))
            finally:
                jobs.close()
            if r == 0:  # in this process, while the agents idle; the table on this mesh's Valkey
                routings = {m: MODELS[m] for m in models}
                cpu = {"router_alone": routing_cpu(routings, GROUP, f"{ROLES}:Server", REPLICAS,
                                                   plan.cpu_messages, plan.cpu_repeats, None),
                       "with_table": routing_cpu(routings, GROUP, f"{ROLES}:Server", REPLICAS,
                                                 max(500, plan.cpu_messages // 5), plan.cpu_repeats,
                                                 Groups(running.store))}
        if kill_models:
            with routing_mesh({m: MODELS[m] for m in kill_models}) as running:
                jobs = Jobs(running, ASK_TIMEOUT_S)
                try:
                    trials.append(_kill_run(jobs, r, kill_models, plan, service))
                finally:
                    jobs.close()
    assert cfg is not None
    mesh = {"fetch_wait_ms": cfg.kafka.fetch_wait * 1000, "sign_envelopes": cfg.security.sign_envelopes,
            "partitions": cfg.kafka.partitions}
    return _result(plan, models, kill_models, loads, service, matrix, trials, cpu, probes, load_start, mesh)


def _result(plan: Plan, models: tuple[str, ...], kill_models: tuple[str, ...], loads: tuple[float, ...],
            service: str, matrix: list[dict[str, dict[str, Any]]], trials: list[dict[str, Any]],
            cpu: dict[str, Any], probes: dict[str, dict[str, Any]], load_start: float,
            mesh: dict[str, Any]) -> dict[str, Any]:
    latency_figures = {load_key(load): {m: _summary([run[f"{load_key(load)}/{m}"] for run in matrix])
                                        for m in models} for load in loads}
    kill_figures = {m: _kill_summary([t[m][0] for t in trials]) for m in kill_models}
    jobs = [job for run in matrix for job in run.values()] + [t[m][0] for t in trials for m in kill_models] \
        + list(probes.values())
    totals = {"asks": sum(j["asks"] for j in jobs), "failed": sum(j["failed"] for j in jobs),
              "unhandled": sum(max(0, j["asks"] - j["handled"]) for j in jobs),
              "handled_twice": sum(j["handled_twice"] for j in jobs),
              "duplicates_recognised": sum(j["duplicates"] for j in jobs),
              "replies_twice": sum(j["late_replies"] for j in jobs)}
    ratios: dict[str, Any] = {}
    for m in models:
        if m != "p2c_ewma" and "p2c_ewma" in models:
            ratios[f"p99_{m}_to_p2c_ewma"] = {
                k: ratio(v[m]["p99_ms"], v["p2c_ewma"]["p99_ms"]) for k, v in latency_figures.items()}
            # run by run (the same arrivals, minutes apart at most): the machine's slow spells
            # fall on both of a pair more often than on both medians
            paired = {k: [ratio(run[f"{k}/{m}"]["p99_ms"], run[f"{k}/p2c_ewma"]["p99_ms"]) for run in matrix]
                      for k in latency_figures}
            ratios[f"p99_{m}_to_p2c_ewma_paired"] = {k: round(statistics.median(v), 3)
                                                     for k, v in paired.items()}
            ratios[f"p99_{m}_to_p2c_ewma_paired_runs"] = paired
    base = cpu.get("router_alone", {}).get("per_message_us", {}).get("fixed_name", 0.0)
    ratios["routing_cpu_to_fixed_name"] = {m: ratio(us, base) for m, us in
                                           cpu.get("router_alone", {}).get("per_message_us", {}).items()
                                           if m != "fixed_name"}
    measured = {name: p["msg_s"] for name, p in probes.items()}
    ratios["capacity_to_nominal"] = {name: ratio(v, CAPACITIES[name]) for name, v in measured.items()}
    targets = _targets(latency_figures, kill_figures, totals)
    replica = REPLICAS[plan.kill_replica - 1]
    notes = [
        f"load average {load_start} at start, {round(os.getloadavg()[0], 2)} at end (2-core machine: "
        "figures move with what else runs)",
        f"replicas {', '.join(f'{n} {ms:g} ms' for n, ms in zip(REPLICAS, SERVICE_MS, strict=True))} mean "
        f"service ({service}), concurrency 1: capacity {CAPACITY:g} msg/s; fair share = capacity share "
        f"({', '.join(f'{n} {s:.3f}' for n, s in FAIR.items())})",
        f"latency: median of {plan.runs} runs, each on a fresh mesh, each model {plan.seconds:g} s per load "
        f"in turn (first {plan.warmup_s:g} s not counted), open-loop Poisson asks timed from their "
        "scheduled time",
        f"kill: {replica} killed -9 {plan.before_s:g} s into a {KILL_LOAD:.0%} load job, spawned again "
        f"{plan.dead_s:g} s later, {plan.after_s:g} s more; dead share from 2 s after the kill to the "
        "restart; back = end of the first 5 s window (from the restart) with a share >= 0.9 x the aim",
        "baseline of the latency figures: p2c_ewma, interleaved in the same runs; of the CPU: an ask to a "
        "fixed agent name (Dispatch.target returns it); raw: each replica's capacity, asked alone by its "
        f"name at twice its nominal capacity for {plan.probe_s:g} s (first run)",
    ]
    notes += [f"target {name} {t['target']}: {'met' if t['met'] else 'MISSED'} ({t['value']})"
              for name, t in targets.items()]
    return {
        "scenario": "routing",
        "settings": {"runs": plan.runs, "seconds": plan.seconds, "warmup_s": plan.warmup_s,
                     "loads": list(loads),
                     "rates_msg_s": [round(load * CAPACITY, 2) for load in loads], "models": list(models),
                     "routing": {m: MODELS[m] for m in models}, "service_ms": list(SERVICE_MS),
                     "service": service, "capacity_msg_s": CAPACITY, "fair_shares": FAIR,
                     "ask_timeout_s": ASK_TIMEOUT_S,
                     "kill": {"replica": replica, "load": KILL_LOAD, "before_s": plan.before_s,
                              "dead_s": plan.dead_s, "after_s": plan.after_s, "models": list(kill_models)},
                     "cpu_messages": plan.cpu_messages, "probe_s": plan.probe_s, **mesh},
        "figures": {"latency": latency_figures, "kill": kill_figures, "asks": totals,
                    "routing_cpu_us": {k: v["per_message_us"] for k, v in cpu.items()}},
        "raw": {"capacity_msg_s": measured, "capacity_total_msg_s": round(sum(measured.values()), 2)},
        "floor": {"routing_cpu_fixed_name_us": base},
        "ratios": ratios,
        "targets": targets,
        "notes": notes,
        "series": {"kill": {m: [t[m][1] for t in trials] for m in kill_models}, "cpu": cpu},
    }


def _targets(latency_figures: dict[str, dict[str, Any]], kill_figures: dict[str, dict[str, Any]],
             totals: dict[str, int]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    at80 = latency_figures.get(load_key(KILL_LOAD), {})
    if "physarum" in at80 and "p2c_ewma" in at80:
        value = ratio(at80["physarum"]["p99_ms"], at80["p2c_ewma"]["p99_ms"])
        out["p99_physarum_to_p2c_ewma_at_80%"] = {"target": f"<= {TARGET_P99_RATIO}", "value": value,
                                                  "met": 0 < value <= TARGET_P99_RATIO}
    if "physarum" in kill_figures:
        dead, back = kill_figures["physarum"]["dead_share"], kill_figures["physarum"]["back_to_fair_s"]
        out["dead_share_physarum"] = {"target": f"< {TARGET_DEAD_SHARE}", "value": dead,
                                      "met": dead is not None and dead < TARGET_DEAD_SHARE}
        out["back_to_fair_share_physarum_s"] = {"target": f"<= {TARGET_BACK_S:g} s", "value": back,
                                                "met": back is not None and back <= TARGET_BACK_S}
    bad = totals["failed"] + totals["unhandled"] + totals["handled_twice"]
    out["lost_or_handled_twice"] = {"target": "0", "value": bad, "met": bad == 0}
    return out


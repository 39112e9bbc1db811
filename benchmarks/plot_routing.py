"""Plots of `agentmesh bench routing`: reads the bench's JSON, writes three PNGs.

    agentmesh bench routing --json --out routing.json
    .venv/bin/python benchmarks/plot_routing.py routing.json [more.json ...] [--out docs/images]

Several JSON files (runs of the same settings) are drawn as one: their runs pooled.

- routing-p99.png: p99 latency against load, per model (the median over the runs, a dot per run);
- routing-kill-shares.png: each replica's share of the new conversations second by second in
  the kill trials (all runs pooled, over 2 s), one panel per model, the kill, the restart and
  the fair shares marked: the tubes thicken and thin;
- routing-conductance.png: physarum's conductance and choice probability per replica, from
  the sender's router state published each second (every run, the first one bold).

matplotlib comes with the `bench` extra (`pip install -e '.[bench]'`); nothing else needs it.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
COLORS = {"Pool-1": "tab:blue", "Pool-2": "tab:orange", "Pool-3": "tab:green"}
MODEL_COLORS = {"physarum": "tab:green", "p2c_ewma": "tab:blue", "round_robin": "tab:gray",
                "round_robin_plain": "tab:red"}
SMOOTH_S = 2  # seconds the kill shares are pooled over


def p99_plot(result: dict[str, Any], out: Path, plt: Any) -> None:
    latency = result["figures"]["latency"]
    loads = list(latency)
    xs = [float(k.rstrip("%")) for k in loads]
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    models = result["settings"]["models"]
    for n, model in enumerate(models):
        color = MODEL_COLORS.get(model)
        ax.plot(xs, [latency[k][model]["p99_ms"] for k in loads], marker="o", color=color, label=model)
        for x, k in zip(xs, loads, strict=True):
            runs = latency[k][model]["p99_ms_runs"]
            shift = (n - (len(models) - 1) / 2) * 0.8  # each model's dots beside the others'
            ax.scatter([x + shift] * len(runs), runs, s=10, color=color, alpha=0.5)
    ax.set_yscale("log")
    ax.set_xlabel(f"load, % of {result['settings']['capacity_msg_s']:g} msg/s")
    ax.set_ylabel("p99 latency, ms (log)")
    ax.set_xticks(xs)
    ax.set_title(f"p99 by model and load (median of {result['settings']['runs']} runs, dots: each run)")
    ax.legend()
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "routing-p99.png", dpi=110)
    plt.close(fig)


def _pooled_shares(trials: list[dict[str, Any]],
                   replicas: list[str]) -> tuple[list[float], dict[str, list[float]]]:
    """Shares per second, the counts of every run added up and pooled over SMOOTH_S seconds."""
    bins = min(len(t["per_second"][replicas[0]]) for t in trials)
    counts = {r: [sum(t["per_second"][r][i] for t in trials) for i in range(bins)] for r in replicas}
    xs: list[float] = []
    shares: dict[str, list[float]] = {r: [] for r in replicas}
    for i in range(bins - SMOOTH_S + 1):
        window = {r: sum(counts[r][i:i + SMOOTH_S]) for r in replicas}
        total = sum(window.values()) or 1
        xs.append(i + SMOOTH_S / 2)
        for r in replicas:
            shares[r].append(window[r] / total)
    return xs, shares


def kill_plot(result: dict[str, Any], out: Path, plt: Any) -> None:
    kill = result["series"]["kill"]
    replicas = list(result["settings"]["fair_shares"])
    fair = result["settings"]["fair_shares"]
    models = [m for m in kill if kill[m]]
    fig, axes = plt.subplots(len(models), 1, figsize=(7.5, 2.9 * len(models)), sharex=True, squeeze=False)
    for ax, model in zip(axes[:, 0], models, strict=True):
        trials = kill[model]
        xs, shares = _pooled_shares(trials, replicas)
        ax.stackplot(xs, *(shares[r] for r in replicas), labels=replicas,
                     colors=[COLORS.get(r) for r in replicas], alpha=0.75)
        edge = 0.0
        for r in replicas:  # where each tube would end at its fair share
            edge += fair[r]
            ax.axhline(edge, color="black", lw=0.6, ls=":")
        first = trials[0]
        ax.axvline(first["kill_s"], color="red", lw=1.2, label="kill -9")
        ax.axvline(first["restart_s"], color="black", lw=1.2, label="restart")
        ax.set_ylim(0, 1)
        ax.set_ylabel("share of new conversations")
        ax.set_title(f"{model}: {result['settings']['kill']['replica']} killed at "
                     f"{result['settings']['kill']['load']:.0%} load ({len(trials)} runs pooled, "
                     f"{SMOOTH_S} s; dotted: fair shares)")
    axes[0, 0].legend(loc="lower left", fontsize=8, ncol=5)
    axes[-1, 0].set_xlabel("seconds from the start of the job")
    fig.tight_layout()
    fig.savefig(out / "routing-kill-shares.png", dpi=110)
    plt.close(fig)


def conductance_plot(result: dict[str, Any], out: Path, plt: Any) -> None:
    trials = result["series"]["kill"].get("physarum") or []
    if not trials:
        return
    replicas = list(result["settings"]["fair_shares"])
    fig, axes = plt.subplots(2, 1, figsize=(7.5, 5.6), sharex=True)
    for n, trial in enumerate(trials):
        snaps = trial["snapshots"]
        ts = [s["t"] for s in snaps]
        for r in replicas:
            width, alpha = (1.8, 1.0) if n == 0 else (0.7, 0.35)
            label = r if n == 0 else None
            for ax, field in zip(axes, ("conductance", "probability"), strict=True):
                ax.plot(ts, [s["replicas"].get(r, {}).get(field) for s in snaps], color=COLORS.get(r),
                        lw=width, alpha=alpha, label=label)
    for ax in axes:
        ax.axvline(trials[0]["kill_s"], color="red", lw=1.2)
        ax.axvline(trials[0]["restart_s"], color="black", lw=1.2)
        ax.grid(True, alpha=0.3)
    axes[0].set_ylabel("conductance D")
    axes[1].set_ylabel("choice probability p")
    axes[1].set_xlabel("seconds from the start of the job (red: kill -9, black: restart)")
    axes[0].set_title("physarum: the sender's router state, published each second (first run bold)")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "routing-conductance.png", dpi=110)
    plt.close(fig)


def pooled(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Several results of the same settings as one: their runs pooled (p99 the median of all)."""
    first = results[0]
    if len(results) == 1:
        return first
    def runs(k: str, m: str) -> list[float]:
        return [x for r in results for x in r["figures"]["latency"][k][m]["p99_ms_runs"]]

    latency = {k: {m: {"p99_ms_runs": runs(k, m)} for m in by_model}
               for k, by_model in first["figures"]["latency"].items()}
    for by_model in latency.values():
        for figures in by_model.values():
            figures["p99_ms"] = statistics.median(figures["p99_ms_runs"])
    kill = {m: [t for r in results for t in r["series"]["kill"][m]] for m in first["series"]["kill"]}
    return {"settings": {**first["settings"], "runs": sum(r["settings"]["runs"] for r in results)},
            "figures": {"latency": latency}, "series": {"kill": kill}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("json", type=Path, nargs="+", help="the output of `agentmesh bench routing --json`")
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "images", help="folder for the PNGs")
    args = ap.parse_args()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    result = pooled([json.loads(path.read_text(encoding="utf-8")) for path in args.json])
    args.out.mkdir(parents=True, exist_ok=True)
    p99_plot(result, args.out, plt)
    kill_plot(result, args.out, plt)
    conductance_plot(result, args.out, plt)
    print(f"wrote routing-p99.png, routing-kill-shares.png, routing-conductance.png in {args.out}")


if __name__ == "__main__":
    main()

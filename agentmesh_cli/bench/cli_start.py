"""The command line's own start, for `bench startup`: how long `agentmesh --help` and
`agentmesh token --user x` take from exec to exit, next to `supervisorctl --help` (another
Python command line, of a tool the mesh already installs) and `python -c pass` (the
interpreter alone) timed in the same rounds.

Scripts call `token`, `send`, `propose` and `status --json` in loops, and a person waits for
every `--help`: what a command imports before it does anything is paid at each call. Each
command runs once untimed (bytecode cached, the mesh copy's secrets made), then `repeats`
rounds of all four in turn, so that a busy moment of the machine falls on all of them.
Medians; the runs are kept. Run without PYTHONDONTWRITEBYTECODE, so bytecode is cached as
in a normal install. Not a test: timing assertions on a shared machine mean nothing.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from agentmesh_cli.errors import BenchError

HELP_TARGET_MS = 150
TOKEN_TARGET_MS = 300


def _script(name: str, module: str) -> list[str]:
    """The installed console script beside this interpreter (what a user runs), else -m."""
    script = Path(sys.executable).parent / name
    return [str(script)] if script.exists() else [sys.executable, "-m", module]


def _wall_ms(command: list[str], env: dict[str, str], cwd: Path) -> float:
    started = time.perf_counter()
    result = subprocess.run(command, env=env, cwd=cwd, capture_output=True, text=True, timeout=60)
    took = (time.perf_counter() - started) * 1000
    if result.returncode != 0:
        raise BenchError(f"{' '.join(command)} exited {result.returncode}:\n{result.stderr[-2000:]}")
    return took


def _median(values: list[float]) -> float:
    return round(statistics.median(values), 1)


def run(config: Path, env: dict[str, str], repeats: int = 5) -> dict[str, Any]:
    """The CLI's figures, its baselines (under `floor`), ratios and targets, in the scenario's
    shape for startup.run to merge: {"figures", "floor", "ratios", "targets"}."""
    agentmesh = _script("agentmesh", "agentmesh_cli")
    commands = {
        "help": [*agentmesh, "--help"],
        "token": [*agentmesh, "token", "--user", "x", "--config", str(config)],
        "supervisorctl_help": [*_script("supervisorctl", "supervisor.supervisorctl"), "--help"],
        "python": [sys.executable, "-c", "pass"],
    }
    cwd = config.parent
    # as a normal install runs: bytecode written once and read after (the scenario's other
    # figures keep the caller's environment, and note it when this variable is set)
    env = {k: v for k, v in env.items() if k != "PYTHONDONTWRITEBYTECODE"}
    for command in commands.values():
        _wall_ms(command, env, cwd)  # untimed: bytecode compiled and cached, secrets made
    runs: dict[str, list[float]] = {name: [] for name in commands}
    for _ in range(repeats):
        for name, command in commands.items():
            runs[name].append(_wall_ms(command, env, cwd))
    ms = {name: _median(values) for name, values in runs.items()}
    shown = {name: [round(v, 1) for v in values] for name, values in runs.items()}
    baseline = ms["supervisorctl_help"]
    return {
        "figures": {"cli_help_ms": ms["help"], "cli_token_ms": ms["token"],
                    "cli_help_runs": shown["help"], "cli_token_runs": shown["token"]},
        "floor": {"supervisorctl_help_ms": baseline, "supervisorctl_help_runs": shown["supervisorctl_help"],
                  "python_ms": ms["python"]},
        "ratios": {"cli_help_over_supervisorctl": round(ms["help"] / baseline, 3),
                   "cli_token_over_supervisorctl": round(ms["token"] / baseline, 3)},
        "targets": {
            "cli_help_ms": {"target": f"<= {HELP_TARGET_MS} ms", "value": ms["help"],
                            "met": ms["help"] <= HELP_TARGET_MS},
            "cli_token_ms": {"target": f"<= {TOKEN_TARGET_MS} ms", "value": ms["token"],
                             "met": ms["token"] <= TOKEN_TARGET_MS},
        },
    }

"""The doze fault's pure parts (chaos/sleepers.py): which probe a wake is timed from, the
row judged, its note, and the longest gap of the probe stream."""

from __future__ import annotations

import math
import statistics
from typing import Any

from agentmesh_cli import constants as C


def first_probe_after(agents: list[str], agent: str, seq: int) -> int:
    """The seq of the first probe to `agent` after its probe `seq` (-1: none yet), the probes
    going to `agents` in turn."""
    return agents.index(agent) if seq < 0 else seq + len(agents)


def wake_summary(wake_ms: dict[str, float]) -> tuple[float | None, float | None]:
    """(p50, max) of the wake times, None without any."""
    times = sorted(wake_ms.values())
    return (statistics.median(times), times[-1]) if times else (None, None)


def doze_row(victim: str | None, asleep_after_s: float, sleepers: list[str], woke: dict[str, float],
             twice: int | None, back: bool, believed: list[str], gap: tuple[float, float]) -> dict[str, Any]:
    """A doze row, judged (pure): ok when every sleeper woke, none handled twice (unknown
    when Redis could not be read: the run's own figure judges it), and the killed agent is
    back. `victim`: the agent killed asleep (None: Redis); `believed`: the agents the
    `asleep` hash lists (at the row's end; for Redis's, when the probes resumed); `gap`: the
    probe stream's longest, and when (longest_gap)."""
    p50, top = wake_summary(woke)
    not_woken = [a for a in sleepers if a not in woke]
    return {
        "killed": victim or C.PROGRAM_REDIS, "asleep_after_s": asleep_after_s,
        "sleepers": sleepers, "wake_ms": woke, "wake_p50_ms": p50, "wake_max_ms": top,
        "not_woken": not_woken, "handled_twice": twice,
        "stale_entry": victim is not None and victim in believed,
        "believed_asleep": believed if victim is None else None,
        "sender_gap_ms": gap[0], "sender_gap_at_s": gap[1],
        "ok": not not_woken and twice in (0, None) and back,
    }


def doze_note(row: dict[str, Any]) -> str:
    """One line for the row's note (pure)."""
    p50, top = row["wake_p50_ms"], row["wake_max_ms"]
    woke = (f"{len(row['wake_ms'])} of {len(row['sleepers'])} sleepers woke, first probe to handled "
            f"p50 {p50:.0f} ms, max {top:.0f} ms" if p50 is not None and top is not None
            else f"none of {len(row['sleepers'])} sleepers woke")
    parts = [f"all asleep after {row['asleep_after_s']:.1f} s", woke]
    if row["not_woken"]:
        parts.append(f"[red]not woken: {', '.join(row['not_woken'])}[/]")
    if row["killed"] != C.PROGRAM_REDIS:
        parts.append(f"{row['killed']} killed asleep" + (
            ", its stale asleep entry rung in vain" if row["stale_entry"] else ""))
    else:
        parts.append(f"{len(row['believed_asleep'])} of {len(row['sleepers'])} in the asleep hash "
                     "when the probes resumed")
    twice = "unknown" if row["handled_twice"] is None else f"{row['handled_twice']}"
    parts.append(f"handled twice {twice}; probe stream's longest gap {row['sender_gap_ms']:.0f} ms "
                 f"(+{row['sender_gap_at_s']:.1f} s)")
    return "; ".join(parts)


def longest_gap(produced_at: Any, start: int, end: int) -> tuple[float, float]:
    """The longest time between two probes produced one after the other (seqs start..end-1),
    in ms, and when it began (s after the first): did the sender wait on a ring (at once), or
    was it the machine (a restart's CPU)?"""
    times = [t for t in produced_at[start:end] if not math.isnan(t)]
    if len(times) < 2:
        return 0.0, 0.0
    width, at = max((b - a, a) for a, b in zip(times, times[1:], strict=False))
    return round(width * 1000, 1), round(at - times[0], 2)

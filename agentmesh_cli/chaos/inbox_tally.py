"""The inbox fault's pure parts (chaos/inbox.py): the asks of a window of time, the row
judged, its note, and the restarts read off supervisord's spawn counts."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from agentmesh_cli import constants as C
from agentmesh_cli.chaos.sleep_tally import wake_summary


def asks_in(sent_at: Mapping[int, float], replies: Mapping[int, set[str]], since: float,
            until: float) -> dict[str, int]:
    """The asks confirmed by the broker whose request was produced in [since, until]
    (monotonic), answered, and answered twice (two replies with different ids)."""
    seqs = [seq for seq, at in sent_at.items() if since <= at <= until]
    return {"sent": len(seqs),
            "answered": sum(1 for seq in seqs if replies.get(seq)),
            "answered_twice": sum(1 for seq in seqs if len(replies.get(seq, ())) > 1)}


def restarts_between(before: Mapping[str, int] | None, after: Mapping[str, int] | None, target: str,
                     agents: Iterable[str]) -> tuple[int | None, list[str] | None]:
    """Spawns of `target` between two readings of supervisord's spawn counts, and the agent
    programs spawned again meanwhile (None, None: the log could not be read)."""
    if before is None or after is None:
        return None, None
    again = [C.agent_program(a) for a in agents
             if after.get(C.agent_program(a), 0) > before.get(C.agent_program(a), 0)]
    return after.get(target, 0) - before.get(target, 0), again


def inbox_row(agents: list[str], served: dict[str, float], back_s: float | None, subscribed: int | None,
              local: int, asks: dict[str, int], twice: int | None, duplicates: int | None,
              restarts: int | None, agents_restarted: list[str] | None) -> dict[str, Any]:
    """An inbox row, judged (pure). `served`: per agent, ms from the kill until its ledger
    held a probe produced after it; `back_s`: when the new inbox reader's ready record
    carried its pid (None: never); `subscribed`: subscriptions the new reader counted (None:
    Redis unread), of `local` agents that read through it; `asks`: asks_in around the
    outage; `twice`, `duplicates`: the agents' handled_twice and recognised-duplicate growth
    over the row; `restarts`: supervisord's spawns of the inbox reader meanwhile (1: the
    kill's own), `agents_restarted`: agent programs spawned again meanwhile (None: its log
    could not be read). Ok when it came back once, every agent was served again and
    subscribed again, every ask was answered once, nothing handled twice, and no agent
    went down with its reader. Unknowns (None) leave the judging to the run's figures."""
    p50, top = wake_summary(served)
    return {
        "back_s": back_s, "agents": len(agents), "served_ms": served, "served_p50_ms": p50,
        "served_max_ms": top, "not_served": [a for a in agents if a not in served],
        "subscribed": subscribed, "local_agents": local, "asks": asks,
        "handled_twice": twice, "duplicates": duplicates,
        "restarts": restarts, "agents_restarted": agents_restarted,
        "ok": (back_s is not None and len(served) == len(agents) and twice in (0, None)
               and (subscribed is None or subscribed >= local)
               and asks["answered"] == asks["sent"] and asks["answered_twice"] == 0
               and restarts in (1, None) and not agents_restarted),
    }


def inbox_note(row: dict[str, Any]) -> str:
    """One line for the row's note (pure)."""
    p50, top, n = row["served_p50_ms"], row["served_max_ms"], row["agents"]
    served = (f"{len(row['served_ms'])} of {n} agents served again, kill to a later probe handled "
              f"p50 {p50:.0f} ms, max {top:.0f} ms" if p50 is not None and top is not None
              else f"none of {n} agents served again")
    parts = [served]
    if row["not_served"]:
        parts.append(f"[red]not served: {', '.join(row['not_served'])}[/]")
    parts.append("[red]no new inbox reader ready[/]" if row["back_s"] is None
                 else f"new reader ready after {row['back_s']:.2f} s")
    if row["subscribed"] is not None:
        low = row["subscribed"] < row["local_agents"]
        parts.append(("[red]" if low else "") + f"{row['subscribed']} subscriptions of "
                     f"{row['local_agents']} agents" + ("[/]" if low else ""))
    asks = row["asks"]
    if asks["sent"]:
        parts.append(f"asks around the outage {asks['answered']} of {asks['sent']} answered, "
                     f"{asks['answered_twice']} twice")
    twice = "unknown" if row["handled_twice"] is None else f"{row['handled_twice']}"
    dups = "" if row["duplicates"] is None else f" ({row['duplicates']} redeliveries skipped)"
    parts.append(f"handled twice {twice}{dups}")
    if row["restarts"] is None:
        parts.append("restarts unknown")
    else:
        again = row["agents_restarted"] or []
        mine = f"{row['restarts']}" if row["restarts"] == 1 else f"[red]{row['restarts']}[/]"
        parts.append(f"restarts: {C.PROGRAM_INBOX} {mine}, agents {len(again)}"
                     + (f" [red]({', '.join(again)})[/]" if again else ""))
    return "; ".join(parts)

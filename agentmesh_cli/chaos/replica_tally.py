"""The replicas fault's pure parts (chaos/replicas.py): the conversations its asks go in,
which replica has asks in flight, whom a kill takes, what a conversation's log says, the
verdict and the note."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from agentmesh_cli.convlog import EVENT_MESSAGE


@dataclass(frozen=True)
class Answer:
    """What became of one ask so far."""

    conversation: str
    replica: str | None  # the replica that answered it (None: not answered, yet or ever)
    done: bool
    started: float = 0.0  # monotonic, its first attempt
    answered_at: float = 0.0  # monotonic


@dataclass
class ReplicaKill:
    replica: str
    pid: int
    at: float  # monotonic
    in_flight: int  # asks of its conversations waiting for their answer then
    messages_in: int  # its counter then: a growth is the new process at work
    detect_s: float | None = None
    recover_s: float | None = None
    given_up: bool = False

    @property
    def settled(self) -> bool:
        return self.recover_s is not None or self.given_up

    def figures(self) -> dict[str, Any]:
        return {"replica": self.replica, "in_flight": self.in_flight, "detect_s": self.detect_s,
                "recover_s": self.recover_s}


def conversation_of(seq: int, prefix: str, open_: int, each: int) -> str:
    """Ask `seq`'s conversation: `open_` conversations at a time take the asks in turn, `each`
    asks apiece, each followed by a new one; their starts are staggered, so that some are
    always midway. New conversations keep coming (each placed by the group's router) and
    each lives on across kills and scaling (held to its replica by the sticky table)."""
    slot, turn = seq % open_, seq // open_
    return f"{prefix}{(turn + slot * each // open_) // each}-{slot}"


def in_flight_by_replica(answers: Sequence[Answer]) -> Counter[str]:
    """Asks not done yet, per replica their conversation sticks to (the one that answered its
    latest answered ask); asks of a conversation nobody answered yet are not counted."""
    stuck = {a.conversation: a.replica for a in answers if a.replica is not None}
    return Counter(stuck[a.conversation] for a in answers if not a.done and a.conversation in stuck)


def choose_victim(running: Sequence[str], in_flight: Mapping[str, int], rng: random.Random,
                  patient: bool) -> str | None:
    """The replica to kill: one with asks in flight when any; else, unless `patient` (it may
    wait for one a little longer), any of those running; None when there is none to kill."""
    busy = sorted(r for r in running if in_flight.get(r, 0) > 0)
    if busy:
        return rng.choice(busy)
    if patient or not running:
        return None
    return rng.choice(sorted(running))


def moved(answers: Iterable[Answer]) -> int:
    """Conversations answered by more than one replica: moved, because their replica left."""
    by: dict[str, set[str]] = {}
    for a in answers:
        if a.replica is not None:
            by.setdefault(a.conversation, set()).add(a.replica)
    return sum(1 for replicas in by.values() if len(replicas) > 1)


def waited_for_return(answers: Iterable[Answer], replica: str, back: float) -> int:
    """Asks sent before `replica` was scaled up again (`back`) and answered by it after: they
    waited for a replica that had been scaled away, instead of being handed over or routed
    to a replica that ran."""
    return sum(1 for a in answers if a.replica == replica and a.started < back <= a.answered_at)


def tally_conversation(events: Iterable[tuple[str, str, Any]], replicas: set[str],
                       asked: tuple[str, str]) -> tuple[int, int, int]:
    """In one conversation's log: (the requests to the group's replicas, those answered twice:
    two replies with different ids, the asks `asked` (agent, type) made twice: the replicas'
    asks of it beyond one per request). The log keeps an envelope once per id, so a handler
    run again after a crash adds nothing when it sends under the same derived ids."""
    requests: set[str] = set()
    replies: dict[str, set[str]] = {}
    asks: set[str] = set()
    for _, event, data in events:
        if event != EVENT_MESSAGE or not isinstance(data, dict):
            continue
        sender, to, answers = data.get("from"), data.get("to"), data.get("in_reply_to")
        if sender in replicas and answers is not None:
            replies.setdefault(str(answers), set()).add(str(data.get("id")))
        elif sender in replicas and (to, data.get("type")) == asked:
            asks.add(str(data.get("id")))
        elif to in replicas and answers is None:
            requests.add(str(data.get("id")))
    twice = sum(1 for request in requests if len(replies.get(request, ())) > 1)
    return len(requests), twice, max(0, len(asks) - len(requests))


def judge_replicas(client: Mapping[str, Any], group: Mapping[str, Any], logs: Mapping[str, int],
                   unrecorded: int, scaling: Mapping[str, Any],
                   kills: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The replicas row's figures and verdict (pure). `client`: what the asker saw
    (http_asks.ask_figures); `group`: the replicas' counter deltas summed (`handled`: requests
    from the gateway, `expired`: requests dropped past their deadline), `per_replica`, and the
    asked agent's `asked_handled_twice`; `logs`: the conversations' logs read; `unrecorded`:
    answered requests missing from the group's ledger; `scaling`: the scale-down and -up.

    Ok: every ask answered, none lost or failed; the replicas handled the asks answered, none
    twice, none under another id (`handled` + `unrecorded` = answered); an answered request
    missing from the ledger is one whose replica was killed between its reply and its ledger
    write and dropped the copy it read again as expired (so at most `expired` of them); no
    request answered twice, nor its ask of another agent made or handled twice; and the group
    scaled down and back up."""
    figures = {**client, "handled": group["handled"], "handled_twice": group["handled_twice"],
               "duplicates": group["duplicates"], "cached_replies": group["cached_replies"],
               "expired": group["expired"], "per_replica": dict(group["per_replica"]),
               "asked_handled_twice": group["asked_handled_twice"], "unrecorded": unrecorded,
               "conversations": logs["conversations"], "moved": logs["moved"],
               "answered_twice": logs["answered_twice"], "asked_twice": logs["asked_twice"],
               "scale": dict(scaling), "kills": [dict(k) for k in kills]}
    once = client["sent"] == client["answered"] == group["handled"] + unrecorded
    bad = ("lost", "failed", "handled_twice", "answered_twice", "asked_twice", "asked_handled_twice")
    figures["ok"] = (once and all(figures[name] == 0 for name in bad) and unrecorded <= group["expired"]
                     and bool(scaling["done"]))
    return figures


def _kills_text(kills: Sequence[Mapping[str, Any]]) -> str:
    recovers = [k["recover_s"] for k in kills if k["recover_s"] is not None]
    busy = sum(1 for k in kills if k["in_flight"] > 0)
    text = f"{len(kills)} kills ({busy} with asks in flight)"
    if recovers:
        text += f", recovered in {min(recovers):.2f} to {max(recovers):.2f} s"
    if len(recovers) < len(kills):
        text += f", {len(kills) - len(recovers)} not recovered"
    return text


def _scale_text(s: Mapping[str, Any]) -> str:
    if not s["leaving"]:
        return "not scaled"
    n = s["replicas"]
    how = f"killed {s['killed_retiring']} times as it retired" if s["killed_retiring"] else "retired"
    text = (f"scaled {n} -> {n - 1} -> {n} ({s['leaving']} {how}, {s['handed_over']} messages handed "
            f"over; down {_secs(s['down_s'])}, up {_secs(s['up_s'])}; {s['waited_for_return']} asks "
            f"waited for {s['leaving']} to come back)")
    if s.get("probes_left"):
        text += (f"; {s['probes_left']} probes to {s['leaving']} unhandled when it left, handed over "
                 "(the probe figures count them as lost to it)")
    return text + "".join(f"; scale failed: {e}" for e in s["errors"])


def _secs(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} s"


def replicas_note(f: Mapping[str, Any]) -> str:
    causes = ", ".join(f"{n} {cause}" for cause, n in f["retry_causes"].items())
    spread = ", ".join(f"{r} {n}" for r, n in sorted(f["per_replica"].items()))
    return (f"{_kills_text(f['kills'])}; {_scale_text(f['scale'])}; "
            f"{f['sent']} asks over HTTP in {f['conversations']} conversations: {f['answered']} answered, "
            f"{f['retried']} retried ({f['retries']} retries{': ' + causes if causes else ''}), "
            f"{f['lost']} lost, {f['failed']} failed; {f['handled']} handled ({spread}), "
            f"{f['handled_twice']} twice, {f['unrecorded']} answered but not in the group's ledger "
            f"({f['expired']} expired copies dropped), {f['duplicates']} copies skipped, "
            f"{f['cached_replies']} answered again from the reply cache; {f['answered_twice']} answered "
            f"twice, {f['asked_twice']} asks of another agent made twice, {f['asked_handled_twice']} "
            f"handled twice by it; {f['moved']} conversations moved to another replica")

"""A chaos result as one rich table (pure: result dict -> renderable): a row per fault (the
random phase folded into one row per program), then the summary figures with what each
must be."""

from __future__ import annotations

import statistics
from collections import defaultdict
from typing import Any

from rich.table import Table

OK, BAD = "[green]ok[/]", "[bold red]FAILED[/]"


def _s(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _check(good: bool, rule: str) -> str:
    return f"{rule}: {OK if good else BAD}"


def fault_rows(faults: list[dict[str, Any]]) -> list[tuple[str, str, str, str, str]]:
    """(fault, detect s, recover s, lost, note): one row per fault of the sequence, one per
    program for the random phase (max detect, median / max recover)."""
    rows = []
    for f in faults:
        if f["phase"] == "sequence":
            note = f["note"] or f["recovered_by"]
            # the gateway, llm, replicas, doze and inbox faults: their verdict first
            judged = f.get("asks") or f.get("chats") or f.get("replicas") or f.get("doze") or f.get("inbox")
            if judged is not None:
                note = f"{OK if judged['ok'] else BAD}: {note}"
            rows.append((f["fault"], _s(f["detect_s"]), _s(f["recover_s"]), str(f["lost"]), note))
    random: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for f in faults:
        if f["phase"] == "random":
            random[f["fault"]].append(f)
    for label, group in sorted(random.items()):
        detects = [f["detect_s"] for f in group if f["detect_s"] is not None]
        recovers = [f["recover_s"] for f in group if f["recover_s"] is not None]
        unrecovered = len(group) - len(recovers)
        recover = (f"{statistics.median(recovers):.2f} / {max(recovers):.2f}" if recovers else "-")
        note = f"max detect, median / max recover of {len(group)}"
        if unrecovered:
            note += f"; [red]{unrecovered} not recovered[/]"
        rows.append((f"random: {label} x{len(group)}", _s(max(detects, default=None)), recover,
                     str(sum(f["lost"] for f in group)), note))
    return rows


def gateway_lines(gateway: dict[str, Any] | None) -> list[tuple[str, int, str]]:
    """The summary lines of the gateway fault's asks over HTTP (none when it did not run)."""
    if gateway is None:
        return []
    return [
        ("gateway asks sent (HTTP)", gateway["sent"],
         f"{gateway['retried']:,} retried with their Idempotency-Key ({gateway['retries']:,} retries)"),
        ("gateway asks answered", gateway["answered"],
         f"{gateway['handled']:,} handled by the agents, {gateway['failed']:,} failed"),
        ("gateway asks lost", gateway["lost"], _check(gateway["lost"] == 0, "must be 0")),
        ("gateway asks handled twice", gateway["handled_twice"],
         _check(gateway["ok"], "must be 0, and each answered one handled once")),
    ]


def llm_lines(llm: dict[str, Any] | None) -> list[tuple[str, int, str]]:
    """The summary lines of the llm fault's chats (none when it did not run)."""
    if llm is None:
        return []
    return [
        ("llm chats sent (HTTP)", llm["sent"],
         f"{llm['kills']} kills of the llm agent, {llm['kills_mid_answer']} while a chat streamed; "
         f"{llm['retried']:,} retried with their Idempotency-Key"),
        ("llm chats answered", llm["answered"],
         f"{llm['failed']:,} failed, {llm['without_tool']:,} without the tool's result, "
         f"{llm['restreamed']:,} streamed again from the start"),
        ("llm chats lost", llm["lost"], _check(llm["lost"] == 0, "must be 0")),
        ("llm chats handled twice", llm["handled_twice"] + llm["answered_twice"],
         _check(llm["ok"], "must be 0, and each answered one handled once")),
        ("llm tool requests handled twice", llm["tool_handled_twice"] + llm["tool_asked_twice"],
         _check(llm["tool_handled_twice"] + llm["tool_asked_twice"] == 0,
                f"must be 0 ({llm['tool_requests']:,} handled, {llm['tool_cached_replies']:,} "
                "asked again and answered from the reply cache)")),
    ]


def replicas_lines(replicas: dict[str, Any] | None) -> list[tuple[str, int, str]]:
    """The summary lines of the replicas fault's asks to the group (none when it did not run)."""
    if replicas is None:
        return []
    twice = replicas["handled_twice"] + replicas["answered_twice"] + replicas["asked_twice"]
    scaled = "done" if replicas["scaled"] else "[red]not done[/]"
    return [
        ("replica asks sent (HTTP)", replicas["sent"],
         f"{replicas['kills']} kills of replicas, scaled down and up "
         f"({scaled}, {replicas['handed_over']:,} handed over); "
         f"{replicas['retried']:,} retried with their Idempotency-Key"),
        ("replica asks answered", replicas["answered"],
         f"{replicas['handled']:,} handled by the replicas, {replicas['failed']:,} failed, "
         f"{replicas['moved']:,} conversations moved"),
        ("replica asks lost", replicas["lost"], _check(replicas["lost"] == 0, "must be 0")),
        ("replica asks handled twice", twice,
         _check(replicas["ok"], f"must be 0, and each answered one handled once ({replicas['duplicates']:,} "
                "copies skipped by the group's ledger)")),
    ]


def doze_lines(dozing: dict[str, Any] | None) -> list[tuple[str, int, str]]:
    """The summary lines of the doze fault's sleepers (none when it did not run)."""
    if dozing is None:
        return []
    c = dozing["counters"]
    trip = ("" if dozing["wake_p50_ms"] is None else
            f"first probe sent to first handled: p50 {dozing['wake_p50_ms']:.0f} ms, "
            f"max {dozing['wake_max_ms']:.0f} ms; ")
    return [
        ("sleeping agents woken (doze)", dozing["woken"],
         f"{trip}over the run {c['doze_sleeps']:,} sleeps, woken {c['doze_rung']:,} by a ring, "
         f"{c['doze_probe_found']:,} by their probe, {c['doze_deaf']:,} deaf (Redis away)"),
        ("sleeping agents not woken", dozing["not_woken"], _check(dozing["not_woken"] == 0, "must be 0")),
    ]


def inbox_lines(inbox: dict[str, Any] | None) -> list[tuple[str, int, str]]:
    """The summary lines of the inbox fault's kills of the host's inbox reader (none when it
    did not run)."""
    if inbox is None:
        return []
    trip = ("" if inbox["served_p50_ms"] is None else
            f"; kill to a later probe handled: p50 {inbox['served_p50_ms']:.0f} ms, "
            f"max {inbox['served_max_ms']:.0f} ms")
    restarts = "unknown" if inbox["restarts"] is None else f"{inbox['restarts']:,}"
    again = inbox["agents_restarted"]
    return [
        ("agents served again (inbox reader killed)", inbox["served"],
         f"{inbox['kills']} kills, {restarts} restarts of it per supervisord's log{trip}"),
        ("agents not served again", inbox["not_served"], _check(inbox["not_served"] == 0, "must be 0")),
        ("asks around an inbox reader's kill", inbox["asks_sent"],
         _check(inbox["asks_answered"] == inbox["asks_sent"] and inbox["asks_answered_twice"] == 0,
                f"each answered once ({inbox['asks_answered']:,} answered, "
                f"{inbox['asks_answered_twice']:,} twice)")),
        *([] if again is None else [
            ("agents down with their inbox reader", again, _check(again == 0, "must be 0"))]),
    ]


def chaos_table(result: dict[str, Any]) -> Table:
    s, probes, props, status = result["settings"], result["probes"], result["proposals"], result["status"]
    where = "embedded mesh" if result["embedded"] else f"mesh {result['mesh']}"
    if s.get("inbox_reader") == "host":
        where += " (one inbox reader per host)"
    table = Table(title=f"agentmesh chaos: {where}, {len(result['agents'])} agents, probes at "
                  f"{s['rate']:g}/s, {result['duration_s']:.0f} s", title_justify="left")
    table.add_column("fault / figure")
    table.add_column("detect s", justify="right")
    table.add_column("recover s", justify="right")
    table.add_column("lost / count", justify="right")
    table.add_column("how it was judged / what it must be")
    for row in fault_rows(result["faults"]):
        table.add_row(*row)
    table.add_section()
    lost, twice, asks = probes["lost"], result["duplicates_handled"], result["asks"]
    trip = ("" if asks["p50_ms"] is None else
            f", round trip p50 {asks['p50_ms']:.0f} ms, p99 {asks['p99_ms']:.0f} ms")
    figures = [
        ("probes sent (confirmed by the broker)", probes["sent"],
         f"of {probes['produced']:,} produced ({probes['refused']:,} refused by the client, "
         f"{probes['unconfirmed']:,} never confirmed"
         + (f", {probes['held']:,} held from a replica being scaled away" if probes.get("held") else "")
         + ")"),
        ("probes handled", probes["handled"], "the agents' exact handled_from:chaos"),
        ("probes lost", lost, _check(lost == 0, "must be 0")),
        ("duplicates handled", twice, _check(twice == 0, "must be 0")),
        ("duplicates recognised and skipped", result["duplicates_recognised"], "redeliveries: dedup at work"),
        ("asks sent (confirmed by the broker)", asks["sent"],
         f"to {', '.join(asks['agents']) or 'no agent that answers'}{trip}"),
        ("asks answered", asks["answered"], f"{asks['error_replies']} error replies"),
        ("asks lost", asks["lost"], _check(asks["lost"] == 0, "must be 0")),
        ("asks answered twice", asks["answered_twice"], _check(asks["answered_twice"] == 0, "must be 0")),
        *gateway_lines(result.get("gateway")),
        *llm_lines(result.get("llm")),
        *replicas_lines(result.get("replicas")),
        *doze_lines(result.get("doze")),
        *inbox_lines(result.get("inbox")),
        ("proposals opened", props["opened"],
         _check(props["opened_more_than_once"] == 0, f"{props['opened_more_than_once']} opened twice")),
        ("proposals decided", props["decided"],
         _check(props["decided_more_than_once"] == 0, f"{props['decided_more_than_once']} decided twice")),
        ("proposals undecided past their timeout", props["overdue"],
         _check(props["overdue"] == 0, f"must be 0 ({props['pending']} pending in time)")),
        ("dead letters", result["dead_letters"], "garbage and unreadable records, counted"),
        ("demo messages handled", result["demo_messages_in"], "the roles' own traffic"),
        ("status frames contradicting supervisord", status["disagreements"],
         _check(status["disagreements"] == 0 and status["failed"] == 0,
                f"of {status['samples']} ({status['failed']} failed, slowest {status['slowest_s']:.1f} s)")),
    ]
    for name, value, rule in figures:
        table.add_row(name, "", "", f"{value:,}", rule)
    table.add_section()
    table.add_row("[bold]result[/]", "", "", "", OK if result["ok"] else BAD)
    return table

"""`agentmesh chaos`, the replicas fault's pure parts: its place in the fault plan, the mesh
it runs on, its conversations, whom a kill takes, what a conversation's log says, the
verdict, the note and the table."""

from __future__ import annotations

import io
import random
from typing import Any

import pytest
from rich.console import Console

from agentmesh_cli.chaos.faults import GATEWAY, KILL, LLM, REPLICAS, Fault, plan_faults
from agentmesh_cli.chaos.figures import judge as judge_result
from agentmesh_cli.chaos.figures import replicas_figures
from agentmesh_cli.chaos.mesh import mesh_data
from agentmesh_cli.chaos.replica_tally import (
    Answer,
    choose_victim,
    conversation_of,
    in_flight_by_replica,
    judge_replicas,
    moved,
    replicas_note,
    tally_conversation,
    waited_for_return,
)
from agentmesh_cli.chaos.replicas import wants_replicas
from agentmesh_cli.chaos.report import chaos_table
from agentmesh_cli.config import parse_config
from agentmesh_cli.errors import ConfigError
from tests.helpers.tables import CHAOS_AGENTS, quiet_chaos_result

REPLICAS_OF = ["Support-1", "Support-2", "Support-3"]
AGENTS = ["Sales", *REPLICAS_OF, "Inventory", "Fraud"]  # the concrete agents of the chaos mesh
PROGRAMS = sorted(["kafka", "redis", "memory", "cognition", "metrics", "gateway", "topology-manager",
                   "consensus-manager", *(f"agent-{a}" for a in AGENTS)])


def test_all_runs_the_replicas_fault_after_the_llm_fault_before_the_infra() -> None:
    plan = plan_faults("all", [*PROGRAMS, "agent-Concierge"], ["Concierge", *AGENTS], "Concierge", "Support")
    kinds = [(f.kind, f.target) for f in plan]
    at = kinds.index((REPLICAS, "Support"))
    assert kinds[at - 2:at + 2] == [(GATEWAY, "gateway"), (LLM, "agent-Concierge"), (REPLICAS, "Support"),
                                    (KILL, "redis")]
    assert kinds.count((REPLICAS, "Support")) == 1
    assert plan_faults("replicas,agent-Support-2", PROGRAMS, AGENTS, None, "Support") == [
        Fault(REPLICAS, "Support"), Fault(KILL, "agent-Support-2")]
    assert Fault(REPLICAS, "Support").label == (
        "kill -9 Support replicas mid-work, scale down and up (asks over HTTP)")


def test_the_replicas_fault_needs_the_embedded_group_and_the_gateway() -> None:
    # --config: the run does not shape that mesh's groups, so there is no group of its own
    assert REPLICAS not in {f.kind for f in plan_faults("all", PROGRAMS, AGENTS)}
    with pytest.raises(ConfigError, match="replicas: runs on the embedded mesh only"):
        plan_faults("replicas", PROGRAMS, AGENTS)
    without_gateway = [p for p in PROGRAMS if p != "gateway"]
    assert REPLICAS not in {f.kind for f in plan_faults("all", without_gateway, AGENTS, None, "Support")}
    with pytest.raises(ConfigError, match="replicas: the asks go through the gateway"):
        plan_faults("replicas", without_gateway, AGENTS, None, "Support")


@pytest.mark.parametrize(("spec", "wanted"), [
    ("replicas", True), ("all", True), ("agents, replicas", True), ("agents", False), ("llm", False),
    ("replica", False), ("", False)])
def test_which_faults_make_support_a_group(spec: str, wanted: bool) -> None:
    assert wants_replicas(spec) is wanted


def test_the_chaos_mesh_runs_support_as_three_replicas_only_for_the_fault() -> None:
    assert [a["name"] for a in mesh_data(4)["agents"]] == CHAOS_AGENTS
    config = parse_config(mesh_data(4, replicas=True), "chaos mesh")
    assert [a.name for a in config.agents] == CHAOS_AGENTS  # Fraud still last: the one `stall` stops
    support = config.groups()["Support"]
    assert (support.role, support.concurrency, support.replica_names()) == ("support", 4, REPLICAS_OF)
    assert [name for name, _ in config.concrete_agents()] == AGENTS
    with_llm = parse_config(mesh_data(4, "http://127.0.0.1:9/v1", replicas=True), "chaos mesh")
    assert [a.name for a in with_llm.agents] == ["Concierge", *CHAOS_AGENTS]


def test_asks_go_in_conversations_a_few_open_at_a_time_their_starts_staggered() -> None:
    # 3 open at a time, 3 asks each: slot k's first conversation is cut short by k asks
    assert [conversation_of(seq, "p", 3, 3) for seq in range(15)] == [
        "p0-0", "p0-1", "p0-2",
        "p0-0", "p0-1", "p1-2",
        "p0-0", "p1-1", "p1-2",
        "p1-0", "p1-1", "p1-2",
        "p1-0", "p1-1", "p2-2"]
    # 8 open, 8 asks each (the row's): each conversation gets 8 asks, the slots start apart
    asks = [conversation_of(seq, "", 8, 8) for seq in range(8 * 8 * 4)]
    whole = {c for c in asks if not c.startswith(("0-", "4-"))}  # neither cut short nor cut off
    assert all(asks.count(c) == 8 for c in whole) and len(whole) == 24
    assert [asks[8 * 12 + slot] for slot in range(8)] == [  # the 12th round of asks: old and new ones
        "1-0", "1-1", "1-2", "1-3", "2-4", "2-5", "2-6", "2-7"]


def ask(conversation: str, replica: str | None = None, done: bool | None = None, started: float = 0.0,
        answered_at: float = 0.0) -> Answer:
    return Answer(conversation, replica, replica is not None if done is None else done, started, answered_at)


def test_asks_in_flight_count_for_the_replica_their_conversation_sticks_to() -> None:
    answers = [ask("a", "Support-1"), ask("b", "Support-2"), ask("a"), ask("a"), ask("b"),
               ask("c"),  # nobody answered c yet: where it waits is unknown
               ask("d", "Support-1"), ask("d", "Support-3"), ask("d"),  # moved: the latest answer counts
               ask("b", done=True)]  # done without an answer (lost or failed): not in flight
    assert in_flight_by_replica(answers) == {"Support-1": 2, "Support-2": 1, "Support-3": 1}
    assert in_flight_by_replica([]) == {}


@pytest.mark.parametrize(("running", "in_flight", "patient", "victims"), [
    (["Support-1", "Support-2"], {"Support-2": 3}, True, {"Support-2"}),
    (["Support-1", "Support-2"], {"Support-2": 3, "Support-1": 1}, False, {"Support-1", "Support-2"}),
    (["Support-1"], {"Support-2": 3}, True, {None}),  # Support-2 is busy but not running (yet)
    (["Support-1", "Support-2"], {}, True, {None}),  # it waits a little for one with work
    (["Support-1", "Support-2"], {}, False, {"Support-1", "Support-2"}),
    ([], {"Support-1": 1}, False, {None}),
])
def test_whom_a_kill_takes(running: list[str], in_flight: dict[str, int], patient: bool,
                           victims: set[str | None]) -> None:
    rng = random.Random(7)
    chosen = {choose_victim(running, in_flight, rng, patient) for _ in range(40)}
    assert chosen == victims


def test_conversations_moved_and_asks_that_waited_for_a_replica_scaled_away() -> None:
    answers = [ask("a", "Support-1"), ask("a", "Support-1"),
               ask("b", "Support-3", started=1.0, answered_at=2.0),
               ask("b", "Support-1", started=3.0, answered_at=4.0),  # b moved when Support-3 left
               ask("c", "Support-3", started=5.0, answered_at=12.0),  # sent while it was away
               ask("d", "Support-3", started=11.0, answered_at=11.5),  # after it was back
               ask("e", None, done=True, started=5.0)]
    assert moved(answers) == 1
    assert waited_for_return(answers, "Support-3", back=10.0) == 1
    assert waited_for_return(answers, "Support-3", back=1.5) == 1  # b, sent at 1.0, answered at 2.0


REQUEST = ("1-0", "message", {"id": "r1", "from": "gateway", "to": "Support-2", "type": "ticket"})
ASK = ("2-0", "message", {"id": "k1", "from": "Support-2", "to": "Sales", "type": "recent_orders"})
ORDERS = ("3-0", "message", {"id": "o1", "from": "Sales", "to": "Support-2", "type": "orders",
                             "in_reply_to": "k1"})
ANSWER = ("4-0", "message", {"id": "a1", "from": "Support-2", "to": "gateway", "type": "ticket_answer",
                             "in_reply_to": "r1"})
LEAD = ("5-0", "message", {"id": "l1", "from": "Support-2", "to": "Sales", "type": "upsell_lead"})


def again(event: tuple[str, str, dict[str, Any]], **changes: Any) -> tuple[str, str, dict[str, Any]]:
    return event[0], event[1], {**event[2], **changes}


@pytest.mark.parametrize(("events", "tally"), [
    ([REQUEST, ASK, ORDERS, ANSWER], (1, 0, 0)),
    ([REQUEST, ASK, ORDERS, ANSWER, LEAD], (1, 0, 0)),  # a message to Sales is not its ask
    ([REQUEST, ASK, ORDERS, ANSWER, ANSWER], (1, 0, 0)),  # the same reply again: one
    # a second request of the conversation, handled on another replica after the first left
    ([REQUEST, ASK, ANSWER, again(REQUEST, id="r2", to="Support-1"),
      again(ASK, id="k2", **{"from": "Support-1"}),
      again(ANSWER, id="a2", in_reply_to="r2", **{"from": "Support-1"})], (2, 0, 0)),
    ([REQUEST, ASK, ANSWER, again(ANSWER, id="a2", **{"from": "Support-3"})], (1, 1, 0)),  # answered twice
    ([REQUEST, ASK, again(ASK, id="k2"), ANSWER], (1, 0, 1)),  # its ask of Sales made under a new id
    ([REQUEST, ("2-0", "gone", {"from": "Support-2"}), again(ANSWER, in_reply_to="r0")], (1, 0, 0)),
])
def test_what_a_conversation_log_says(events: list[tuple[str, str, Any]],
                                      tally: tuple[int, int, int]) -> None:
    assert tally_conversation(events, set(REPLICAS_OF), ("Sales", "recent_orders")) == tally


CLIENT = {"sent": 100, "answered": 100, "retried": 12, "retries": 15, "retry_causes": {"HTTP 504": 15},
          "lost": 0, "failed": 0}
GROUP = {"handled": 99, "handled_twice": 0, "duplicates": 14, "cached_replies": 9, "expired": 3,
         "asked_handled_twice": 0, "per_replica": {"Support-1": 40, "Support-2": 35, "Support-3": 24}}
LOGS = {"conversations": 20, "moved": 2, "answered_twice": 0, "asked_twice": 0}
SCALING = {"replicas": 3, "leaving": "Support-3", "errors": [], "done": True, "handed_over": 7,
           "killed_retiring": 2, "quiet": False, "down_s": 6.4, "up_s": 4.2, "waited_for_return": 0,
           "lines": []}
KILLS = [{"replica": "Support-1", "in_flight": 2, "detect_s": 0.2, "recover_s": 3.1},
         {"replica": "Support-2", "in_flight": 0, "detect_s": 0.3, "recover_s": 3.6}]


@pytest.mark.parametrize(("client", "group", "logs", "unrecorded", "scaling", "ok"), [
    ({}, {}, {}, 1, {}, True),  # one answered, then its copy dropped as expired: not in the ledger
    ({}, {"handled": 100}, {}, 0, {}, True),
    ({}, {}, {}, 0, {}, False),  # answered, never handled nor explained
    ({}, {"handled": 101}, {}, 0, {}, False),  # handled under another id too
    ({}, {"expired": 0}, {}, 1, {}, False),  # missing from the ledger, no expired copy to explain it
    ({}, {"handled": 100, "handled_twice": 1}, {}, 0, {}, False),
    ({}, {"handled": 100, "asked_handled_twice": 1}, {}, 0, {}, False),
    ({}, {"handled": 100}, {"answered_twice": 1}, 0, {}, False),
    ({}, {"handled": 100}, {"asked_twice": 1}, 0, {}, False),
    ({"answered": 99, "lost": 1}, {}, {}, 0, {}, False),
    ({"answered": 99, "failed": 1}, {}, {}, 0, {}, False),
    ({}, {"handled": 100}, {}, 0, {"done": False, "errors": ["Support-3 did not stop"]}, False),
    ({}, {"handled": 100}, {"moved": 0}, 0, {"waited_for_return": 4}, True),  # shown, not judged
])
def test_replicas_verdict(client: dict[str, Any], group: dict[str, Any], logs: dict[str, int],
                          unrecorded: int, scaling: dict[str, Any], ok: bool) -> None:
    figures = judge_replicas({**CLIENT, **client}, {**GROUP, **group}, {**LOGS, **logs}, unrecorded,
                             {**SCALING, **scaling}, KILLS)
    assert figures["ok"] is ok
    assert figures["kills"] == KILLS and figures["scale"]["handed_over"] == 7


def test_replicas_note_and_sums() -> None:
    row = judge_replicas(CLIENT, GROUP, LOGS, 1, SCALING, KILLS)
    assert replicas_note(row) == (
        "2 kills (1 with asks in flight), recovered in 3.10 to 3.60 s; "
        "scaled 3 -> 2 -> 3 (Support-3 killed 2 times as it retired, 7 messages handed over; "
        "down 6.4 s, up 4.2 s; 0 asks waited for Support-3 to come back); "
        "100 asks over HTTP in 20 conversations: 100 answered, 12 retried (15 retries: 15 HTTP 504), "
        "0 lost, 0 failed; 99 handled (Support-1 40, Support-2 35, Support-3 24), 0 twice, "
        "1 answered but not in the group's ledger (3 expired copies dropped), 14 copies skipped, "
        "9 answered again from the reply cache; 0 answered twice, 0 asks of another agent made twice, "
        "0 handled twice by it; 2 conversations moved to another replica")
    failed = judge_replicas({**CLIENT, "answered": 99, "lost": 1}, GROUP, LOGS, 0,
                            {**SCALING, "done": False, "errors": ["boom"], "leaving": ""},
                            [{**KILLS[0], "recover_s": None}])
    assert replicas_note(failed).startswith("1 kills (1 with asks in flight), 1 not recovered; not scaled; ")
    assert "up 4.2 s; 0 asks waited for Support-3 to come back); 3 probes to Support-3 unhandled when it " \
           "left, handed over (the probe figures count them as lost to it); 100 asks" in \
           replicas_note(judge_replicas(CLIENT, GROUP, LOGS, 1, {**SCALING, "probes_left": 3}, KILLS))
    assert replicas_figures([]) is None
    assert replicas_figures([row, failed]) == {
        "sent": 200, "answered": 199, "retried": 24, "retries": 30, "lost": 1, "failed": 0, "handled": 198,
        "handled_twice": 0, "unrecorded": 1, "answered_twice": 0, "asked_twice": 0, "asked_handled_twice": 0,
        "duplicates": 28, "cached_replies": 18, "moved": 4, "kills": 3, "handed_over": 14, "scaled": False,
        "ok": False}


def test_replicas_row_and_lines_in_the_table_and_the_verdict() -> None:
    row = judge_replicas(CLIENT, GROUP, LOGS, 1, SCALING, KILLS)
    fault = {"fault": Fault(REPLICAS, "Support").label, "phase": "sequence", "detect_s": 0.3,
             "recover_s": 3.6, "lost": 0, "note": replicas_note(row), "recovered_by": "new pid ready",
             "asks": None, "chats": None, "replicas": row}
    result = quiet_chaos_result(fault, AGENTS, 40.0, gateway=None, llm=None, replicas=replicas_figures([row]))
    result["probes"] = {**result["probes"], "produced": 12, "held": 2}  # to Support-3 while it was away
    result["ok"] = judge_result(result)
    assert result["ok"]
    text = rendered(result)
    assert ("of 12 produced (0 refused by the client, 0 never confirmed, 2 held from a replica being "
            "scaled away)") in text
    assert "kill -9 Support replicas mid-work, scale down and up (asks over HTTP)" in text
    assert "ok: 2 kills (1 with asks in flight), recovered in 3.10 to 3.60 s" in text
    assert "replica asks sent (HTTP)" in text
    assert "2 kills of replicas, scaled down and up (done, 7 handed over)" in text
    assert "99 handled by the replicas, 0 failed, 2 conversations moved" in text
    assert ("must be 0, and each answered one handled once (14 copies skipped by the group's ledger): "
            "ok") in text
    bad = judge_replicas(CLIENT, {**GROUP, "handled_twice": 1}, LOGS, 1, SCALING, KILLS)
    result = {**result, "faults": [{**fault, "replicas": bad}], "replicas": replicas_figures([bad])}
    result["ok"] = judge_result(result)
    assert not result["ok"]
    assert "FAILED: 2 kills" in rendered(result)


def rendered(result: dict[str, Any]) -> str:
    out = io.StringIO()
    Console(file=out, width=320, color_system=None).print(chaos_table(result))
    return out.getvalue()

"""Agents that wait, for real: agent processes (roles of tests/helpers/waiting_roles.py) on
the session broker and Valkey. Order within a conversation and concurrency across them
as exact tables; ask and reply (round trip, error reply, timeout, unknown agent, late
reply, expired request, a cycle, the reply cache); a sync ask; `agentmesh ask`; the loop
lag while 1,000 handlers wait."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any

from agentmesh_cli import constants as C
from agentmesh_cli.agent.handling import derived_id
from agentmesh_cli.embedded import stop
from agentmesh_cli.envelope import Envelope, now_ms
from agentmesh_cli.mesh import Mesh
from agentmesh_cli.store import Store
from agentmesh_cli.waiting import wait_until
from tests.helpers.agents import ROLES, agents, send
from tests.helpers.commands import agentmesh, spawn_role
from tests.helpers.mesh import mesh_bus


def lines(path: Path, n: int, timeout: float = 30) -> list[str]:
    """The first `n` lines of a role's notes, once there are that many."""
    wait_until(lambda: path.exists() and len(path.read_text().splitlines()) >= n, timeout,
               f"{n} lines in {path.name}")
    return path.read_text().splitlines()[:n]


def counter(store: Store, agent: str, name: str, want: int, timeout: float = 20) -> int:
    """Wait until agent's counter `name` reaches `want` (agents flush them every second)."""
    wait_until(lambda: store.counters(agent).get(name, 0) >= want, timeout, f"{agent} {name} >= {want}")
    return store.counters(agent).get(name, 0)


# order and concurrency ------------------------------------------------------------------
WORK = [("a1", "A", 1.0), ("a2", "A", 0.1), ("b1", "B", 0.1)]
ACROSS = ["start a1", "start b1", "finish b1", "finish a1", "start a2", "finish a2"]
STRICT = ["start a1", "finish a1", "start a2", "finish a2", "start b1", "finish b1"]


def run_work(external_mesh: Any, tmp_path: Path, role: str, concurrency: int,
             conversations: bool = True) -> list[str]:
    mesh: Mesh = external_mesh(agents=[{"name": "Worker", "role": f"{ROLES}:{role}",
                                        "concurrency": concurrency}])
    log = tmp_path / "notes.txt"
    with agents(mesh, tmp_path):
        send(mesh, "Worker", "work", [{"log": str(log), "tag": tag, "sleep": s} for tag, _, s in WORK],
             conversation=[conv if conversations else None for _, conv, _ in WORK])
        return lines(log, 6)


def test_conversations_run_at_once_each_in_order(external_mesh: Any, tmp_path: Path) -> None:
    # a2 waits for a1 (one conversation), b1 runs beside a1 (another)
    assert run_work(external_mesh, tmp_path, "Worker", 2) == ACROSS


def test_sync_handler_in_the_pool_keeps_the_same_order(external_mesh: Any, tmp_path: Path) -> None:
    got = run_work(external_mesh, tmp_path, "SyncWorker", 2)
    # a1 and b1 start at once in two threads: which notes its start first is the threads' race
    assert sorted(got[:2]) == sorted(ACROSS[:2]) and got[2:] == ACROSS[2:]


def test_concurrency_one_is_strict_order(external_mesh: Any, tmp_path: Path) -> None:
    assert run_work(external_mesh, tmp_path, "Worker", 1) == STRICT


def test_without_a_conversation_the_sender_is_the_conversation(external_mesh: Any, tmp_path: Path) -> None:
    # all three come from `cli`: one conversation, in order, even at concurrency 2
    assert run_work(external_mesh, tmp_path, "Worker", 2, conversations=False) == STRICT


# ask and reply -----------------------------------------------------------------------------
def ask_mesh(external_mesh: Any, **asker: Any) -> Mesh:
    mesh: Mesh = external_mesh(agents=[
        {"name": "Asker", "role": f"{ROLES}:Asker", "concurrency": 8, **asker},
        {"name": "Answerer", "role": f"{ROLES}:Answerer", "concurrency": 8},
    ])
    return mesh


def test_ask_reply_error_timeout_unknown_late_and_expired(external_mesh: Any, tmp_path: Path) -> None:
    mesh = ask_mesh(external_mesh)
    log, handled = tmp_path / "asks.txt", tmp_path / "handled.txt"
    asks = [
        {"tag": "t1", "to": "Answerer", "type": "double", "payload": {"x": 2}},
        {"tag": "t2", "to": "Answerer", "type": "fail", "payload": {"x": 3}},
        {"tag": "t3", "to": "Answerer", "type": "slow", "payload": {"sleep": 1.5}, "timeout": 0.5},
        {"tag": "t4", "to": "Nobody", "type": "double", "payload": {"x": 1}},
    ]
    with agents(mesh, tmp_path) as store:
        send(mesh, "Asker", "ask", [{**a, "log": str(log)} for a in asks],
             conversation=["c1", "c2", "c3", "c4"])
        got = sorted(lines(log, 4))
        assert got == [
            't1 reply doubled {"n": null, "x": 4}',
            "t2 RemoteError: Answerer failed on 'fail': ValueError: bad x 3",
            "t3 AskTimeout: no reply from Answerer to 'slow' within 0.5 s",
            "t4 UnknownAgent: unknown agent 'Nobody': it never joined and is not in mesh.yaml",
        ]
        # the slow answer comes after its ask gave up: counted, dropped
        assert counter(store, "Asker", C.COUNTER_LATE_REPLIES, 1) == 1
        assert counter(store, "Asker", C.COUNTER_ASK_TIMEOUTS, 1) == 1
        assert counter(store, "Asker", C.COUNTER_ERROR_REPLIES, 1) == 1
        assert counter(store, "Asker", C.COUNTER_REPLIES_IN, 2) == 2  # doubled and the error reply
        assert counter(store, "Answerer", C.COUNTER_HANDLER_ERRORS, 1) == 1
        # a request read after its deadline is skipped, never handled
        bus = mesh_bus(mesh)
        bus.send_message(Envelope(type="double", from_agent_id="cli", to_agent_id="Answerer",
                                  payload={"x": 9, "n": 99, "log": str(handled)},
                                  meta={"deadline": now_ms() - 1000}))
        bus.flush(10)
        assert counter(store, "Answerer", C.COUNTER_EXPIRED, 1) == 1
        assert not handled.exists()


def test_a_cycle_in_one_conversation_times_out_across_two_it_runs(external_mesh: Any,
                                                                    tmp_path: Path) -> None:
    """Asker asks Answerer `cycle`; Answerer asks Asker `inner` back. In the same
    conversation `inner` waits behind the asking handler: Answerer's ask times out and the
    asker gets that as an error reply. Without a conversation each side's messages are
    their sender's conversation, so `inner` runs beside the waiting handler."""
    mesh = ask_mesh(external_mesh)
    log = tmp_path / "asks.txt"
    cycle = {"to": "Answerer", "type": "cycle", "payload": {"timeout": 1}, "timeout": 8, "log": str(log)}
    with agents(mesh, tmp_path) as store:
        send(mesh, "Asker", "ask", [{**cycle, "tag": "same"}], conversation=["c1"])
        assert lines(log, 1) == ["same RemoteError: Answerer failed on 'cycle': AskTimeout: no reply "
                                 "from Asker to 'inner' within 1 s"]
        send(mesh, "Asker", "ask", [{**cycle, "tag": "across"}])
        assert lines(log, 2)[1] == "across reply cycled {}"
        # the queued `inner` ran once the asking handler ended: its reply came too late
        assert counter(store, "Answerer", C.COUNTER_LATE_REPLIES, 1) == 1


def test_the_reply_cache_answers_a_repeated_request(external_mesh: Any, tmp_path: Path) -> None:
    """The request a re-run asking handler sends again has the same (derived) id: the
    answerer does not handle it twice, it sends the same reply again from its cache."""
    mesh = ask_mesh(external_mesh)
    log, handled = tmp_path / "asks.txt", tmp_path / "handled.txt"
    message_id = str(uuid.uuid4())
    ask = {"tag": "t", "to": "Answerer", "type": "double", "log": str(log),
           "payload": {"x": 5, "n": 1, "log": str(handled)}}
    with agents(mesh, tmp_path) as store:
        send(mesh, "Asker", "ask", [ask], ids=[message_id])
        assert lines(log, 1) == ['t reply doubled {"n": 1, "x": 10}']
        request_id = derived_id(message_id, 1)  # the asking handler's first send
        bus = mesh_bus(mesh)
        bus.send_message(Envelope(type="double", from_agent_id="Asker", to_agent_id="Answerer",
                                  payload={"x": 5, "n": 1, "log": str(handled)}, id=request_id,
                                  meta={"deadline": now_ms() + 10_000}))
        bus.flush(10)
        assert counter(store, "Answerer", C.COUNTER_CACHED_REPLIES, 1) == 1
        assert counter(store, "Answerer", C.COUNTER_DUPLICATES, 1) == 1
        assert counter(store, "Asker", C.COUNTER_REPLIES_IN, 2) == 2  # the first, and its copy
        assert handled.read_text().splitlines() == ["handled double 1"]
        assert store.cached_reply("Answerer", request_id) is not None


def test_a_sync_ask_blocks_in_the_pool_and_is_refused_on_the_loop(external_mesh: Any,
                                                                    tmp_path: Path) -> None:
    mesh: Mesh = external_mesh(agents=[
        {"name": "Pooled", "role": f"{ROLES}:SyncAsker", "concurrency": 2},
        {"name": "Looped", "role": f"{ROLES}:SyncAsker"},
        {"name": "Answerer", "role": f"{ROLES}:Answerer", "concurrency": 8},
    ])
    log = tmp_path / "asks.txt"
    ask = {"to": "Answerer", "type": "double", "payload": {"x": 4}, "log": str(log)}
    with agents(mesh, tmp_path):
        send(mesh, "Pooled", "ask", [{**ask, "tag": "pool"}])
        send(mesh, "Looped", "ask", [{**ask, "tag": "loop"}])
        got = sorted(lines(log, 2))
        assert got[0].startswith("loop AskNotAllowed: ctx.ask('Answerer', 'double') in a sync hook")
        assert got[1] == 'pool reply doubled {"n": null, "x": 8}'


def test_agentmesh_ask_prints_the_reply_and_exits_by_outcome(external_mesh: Any, tmp_path: Path) -> None:
    mesh: Mesh = external_mesh(agents=[{"name": "Answerer", "role": f"{ROLES}:Answerer", "concurrency": 4}])
    config = str(mesh.config_file)
    with agents(mesh, tmp_path) as store:
        ok = agentmesh("ask", "Answerer", "double", '{"x": 21}', "--config", config)
        assert ok.returncode == 0, ok.stderr
        reply = json.loads(ok.stdout)
        assert (reply["type"], reply["from"]) == ("doubled", "Answerer")
        assert reply["payload"] == {"x": 42, "n": None}
        failed = agentmesh("ask", "Answerer", "fail", '{"x": 1}', "--config", config)
        assert failed.returncode == 1 and "Answerer failed on 'fail': ValueError: bad x 1" in failed.stderr
        late = agentmesh("ask", "Answerer", "slow", '{"sleep": 2}', "--timeout", "0.5", "--config", config)
        assert late.returncode == 3 and "no reply from Answerer to 'slow' within 0.5 s" in late.stderr
        nobody = agentmesh("ask", "Nobody", "double", "{}", "--config", config)
        assert nobody.returncode == 4 and "unknown agent 'Nobody'" in nobody.stderr
        usage = agentmesh("ask", "Answerer", "double", "not json", "--config", config)
        assert usage.returncode == 2
        # counted as sent, as the agents count theirs: the drain and `status` compare
        assert store.counters(C.CLI_COUNTER_OWNER).get(C.sent_to_counter("Answerer")) == 3


def test_loop_lag_stays_low_while_1000_handlers_wait(external_mesh: Any, tmp_path: Path) -> None:
    mesh: Mesh = external_mesh(agents=[{"name": "Worker", "role": f"{ROLES}:Worker", "concurrency": 1000}])
    log = tmp_path / "notes.txt"
    with agents(mesh, tmp_path) as store:
        work = [{"log": str(log), "tag": f"w{i}", "sleep": 1.0} for i in range(1000)]
        send(mesh, "Worker", "work", work, conversation=[f"c{i}" for i in range(1000)])
        notes = lines(log, 2000, timeout=60)
        # all 1000 ran at once: every start comes before the first finish
        first_finish = next(i for i, line in enumerate(notes) if line.startswith("finish"))
        assert first_finish == 1000, first_finish
        record = wait_until(lambda: (r := store.agents().get("Worker")) and r["in_flight"] == 0 and r, 10,
                            "the registry record after the work")
        # sampled every 10 ms while the handlers waited; generous bound: a loaded CI machine
        assert record["loop_lag_ms"]["p99"] < 250, record["loop_lag_ms"]
        lag = counter(store, "Worker", C.COUNTER_LOOP_LAG_MS + ":count", 100)
        assert lag >= 100


def test_a_sync_handler_that_blocks_the_loop_keeps_its_heartbeat(external_mesh: Any, tmp_path: Path) -> None:
    """Heartbeats leave from their own thread: a handler that blocks the loop for
    seconds (far past heartbeat.interval x missed) does not make its agent look dead."""
    mesh: Mesh = external_mesh(agents=[{"name": "Worker", "role": f"{ROLES}:SyncWorker"}],
                               heartbeat={"interval": "300ms", "missed": 3})
    log = tmp_path / "notes.txt"
    with agents(mesh, tmp_path) as store:
        send(mesh, "Worker", "work", [{"log": str(log), "tag": "block", "sleep": 4}])
        assert lines(log, 1) == ["start block"]
        beats = []
        for _ in range(6):  # 3 s inside the 4 s block
            beats.append(store.agents()["Worker"]["last_heartbeat"])
            time.sleep(0.5)
        assert len(set(beats)) >= 4, beats  # still beating every 300 ms
        assert lines(log, 2)[1] == "finish block"
        # the block is what the loop's lag reports
        wait_until(lambda: store.agents()["Worker"]["loop_lag_ms"]["max"] > 3000, 10, "the lag of the block")


def test_stop_cancels_waiting_handlers_and_their_messages_run_again(external_mesh: Any,
                                                                     tmp_path: Path) -> None:
    """SIGTERM: running handlers get a short grace, then are cancelled, and the agent leaves
    at once; their messages were not recorded, so the next run handles them."""
    mesh: Mesh = external_mesh(agents=[{"name": "Worker", "role": f"{ROLES}:Worker", "concurrency": 4}])
    log = tmp_path / "notes.txt"
    config = str(mesh.config_file)
    store = Store(mesh.config.redis.resolved_url, mesh.config.mesh)
    work = [{"log": str(log), "tag": f"w{i}", "sleep": 60} for i in range(4)]
    try:
        first = spawn_role("agent", "--name", "Worker", "--config", config, log=tmp_path / "w1.log")
        wait_until(lambda: store.ready_pid("agent-Worker") == first.pid, 60, "Worker ready")
        send(mesh, "Worker", "work", work, conversation=[f"c{i}" for i in range(4)])
        lines(log, 4)
        started = time.monotonic()
        first.terminate()
        assert first.wait(20) == 0
        assert time.monotonic() - started < 10  # 2 s of grace, not the handlers' 60 s
        assert "4 handlers cancelled" in (tmp_path / "w1.log").read_text()
        second = spawn_role("agent", "--name", "Worker", "--config", config, log=tmp_path / "w2.log")
        try:
            starts = sorted(line for line in lines(log, 8) if line.startswith("start"))
            assert starts == sorted([f"start w{i}" for i in range(4)] * 2)  # each once more
        finally:
            stop(second)
    finally:
        stop(first)
        store.close()

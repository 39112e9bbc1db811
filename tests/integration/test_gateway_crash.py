"""kill -9 of the gateway while asks wait in it, on a real mesh under supervisord: every
ask, sent again with its `Idempotency-Key` after the connection broke (chaos/http_asks.py),
is answered once, and the agent handles each request once.

The answerer (tests/helpers/waiting_roles.py Answerer, `slow`) is in the middle of every
request when the gateway dies: the request is in Kafka, its reply not yet back. Three kinds
of asks:
- SHORT ones, whose handlers finish while no gateway runs: their replies land on the
  gateway's reply partition unread, and the retries are answered from the reply cache;
- LONG ones, still in their handlers when the gateway is back: the retries reach the agent
  while it handles the first copy, and are answered when the handler replies;
- asks first sent while the gateway is down: refused connections, retried until it is back.
The gateway's reply address is stable per host and port, so the restarted gateway reads
the partition the agent answers at.
"""

from __future__ import annotations

import os
import signal
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from pathlib import Path

import httpx
import pytest
import yaml

from agentmesh_cli import constants as C
from agentmesh_cli.chaos.http_asks import HttpAskStream, Request
from agentmesh_cli.gateway.app import Gateway
from agentmesh_cli.mesh import Mesh
from agentmesh_cli.services.probe import Prober, gateway_url
from agentmesh_cli.store import Store
from agentmesh_cli.supervisor.control import Supervisor
from agentmesh_cli.waiting import wait_until
from tests.helpers.mesh import REPO, running_mesh, write_mesh

SHORT, LONG, WHILE_DOWN = 8, 4, 4  # asks of each kind
SHORT_S, LONG_S = 1.0, 20.0  # their handlers' sleep
ASK_TIMEOUT_S = 5.0  # each attempt's: a LONG ask is answered 504 and sent again meanwhile
ASKS = SHORT + LONG + WHILE_DOWN
HANDLED_FROM = C.COUNTER_HANDLED_FROM_PREFIX + C.GATEWAY_SENDER


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    config = write_mesh(tmp_path_factory.mktemp("gateway-crash"), [])
    data = yaml.safe_load(config.read_text())
    data["agents"] = [{"name": "Answerer", "role": "tests.helpers.waiting_roles:Answerer",
                       "concurrency": 64}]
    config.write_text(yaml.safe_dump(data, sort_keys=False))
    with pytest.MonkeyPatch.context() as env:
        env.setenv("PYTHONPATH", str(REPO))  # so supervisord's agent imports the test role
        with running_mesh(config) as running:
            yield running


def gateway_process(sup: Supervisor) -> tuple[str, int]:
    info = next(p for p in sup.processes() if p["name"] == C.PROGRAM_GATEWAY)
    return str(info["statename"]), int(info["pid"] or 0)


def test_kill_9_of_the_gateway_while_asks_wait_in_it(mesh: Mesh, tmp_path: Path) -> None:
    handled = tmp_path / "handled.txt"

    def request(seq: int) -> Request:
        sleep = SHORT_S if seq < SHORT else LONG_S if seq < SHORT + LONG else 0.0
        return "Answerer", "slow", {"sleep": sleep, "n": seq, "log": str(handled)}

    def started() -> list[str]:
        return handled.read_text().splitlines() if handled.exists() else []

    stream = HttpAskStream(gateway_url(mesh), mesh.credentials.service_token, request,
                           key_prefix="crash-", ask_timeout=ASK_TIMEOUT_S, deadline_s=60.0)
    with Supervisor(mesh) as sup, closing(Store(mesh.redis_url, mesh.config.mesh)) as store:
        try:
            stream.start()
            stream.add(SHORT + LONG)
            # every request is in the answerer's handler: in Kafka, its reply not back yet
            wait_until(lambda: len(started()) >= SHORT + LONG, 30, "the handlers to start", interval=0.02)
            state, pid = gateway_process(sup)
            assert state == "RUNNING" and stream.answered == 0
            os.kill(pid, signal.SIGKILL)
            killed = time.monotonic()
            stream.add(WHILE_DOWN)
            prober = Prober(timeout=1.0)

            def back() -> bool:
                state, new = gateway_process(sup)
                return (state in ("STARTING", "RUNNING") and new not in (0, pid)
                        and store.ready_pid(C.PROGRAM_GATEWAY) == new
                        and prober.get(gateway_url(mesh) + "/health")[0] == 200)

            wait_until(back, 60, "supervisord to restart the gateway")
            down_s = time.monotonic() - killed
            # the scenario holds: the short handlers replied while no gateway ran, the long
            # ones still run, and their retries reach the agent meanwhile
            assert SHORT_S < down_s < LONG_S - 5, f"the gateway was away {down_s:.1f} s"
            wait_until(lambda: store.counters("Answerer").get(C.COUNTER_DUPLICATES, 0) >= SHORT + LONG,
                       LONG_S - 2 - down_s, "the retries to reach the answerer")
            assert all(ask.reply is None for ask in stream.asks[SHORT:SHORT + LONG])
            assert stream.join(60), "asks unfinished"
        finally:
            stream.join(0)
        figures = stream.figures()
        print(f"gateway away {down_s:.1f} s; {figures}")
        # every ask answered once, by the reply of its own request (the id the gateway
        # derives from the key), none failed or out of time
        assert (figures["sent"], figures["answered"], figures["lost"], figures["failed"]) == \
            (ASKS, ASKS, 0, 0)
        for ask in stream.asks:
            assert ask.reply is not None
            assert ask.reply["type"] == "slow_done" and ask.reply["from"] == "Answerer"
            assert ask.reply["in_reply_to"] == Gateway.derived(None, ask.key, "ask")
        assert all(ask.attempts > 1 for ask in stream.asks[:SHORT + LONG])  # each sent again
        # handled once each: one handler run per request, the ledger and the exact counters
        assert Counter(started()) == {f"handled slow {n}": 1 for n in range(ASKS)}

        def recorded() -> dict[str, int] | None:
            counters = store.counters("Answerer")
            return counters if counters.get(HANDLED_FROM) == ASKS else None

        counters = wait_until(recorded, 15, f"the answerer's {HANDLED_FROM} at {ASKS}")
        assert counters.get(C.COUNTER_HANDLED_TWICE, 0) == 0
        ids = {ask.reply["in_reply_to"] for ask in stream.asks if ask.reply is not None}
        assert ids <= set(store.handled_ids("Answerer", 1000)[0])
        # the short ones, answered while no gateway ran, were answered again from the cache
        assert counters.get(C.COUNTER_CACHED_REPLIES, 0) >= SHORT


def test_a_retry_while_the_first_attempt_still_waits_is_answered(mesh: Mesh, tmp_path: Path) -> None:
    """A client that gives up before the gateway does sends the ask again while its first
    attempt still waits there: both wait for the one reply, and the first attempt's 504
    must not take the wait away from the second."""
    handled = tmp_path / "handled.txt"
    key = "overlap-1"
    ask = {"type": "slow", "payload": {"sleep": 4.0, "n": 0, "log": str(handled)}}
    headers = {"Authorization": f"Bearer {mesh.credentials.service_token}", "Idempotency-Key": key}
    with (httpx.Client(base_url=gateway_url(mesh), headers=headers, timeout=30) as client,
          ThreadPoolExecutor(2) as pool):
        first = pool.submit(client.post, "/agents/Answerer/ask", json={**ask, "timeout": 2})
        wait_until(handled.exists, 10, "the handler to start", interval=0.02)
        started = time.monotonic()
        second = pool.submit(client.post, "/agents/Answerer/ask", json={**ask, "timeout": 20})
        assert first.result().status_code == 504
        reply = second.result()
        took = time.monotonic() - started
    assert reply.status_code == 200, reply.text
    assert reply.json()["in_reply_to"] == Gateway.derived(None, key, "ask")
    assert took < 10, f"answered after {took:.1f} s: at the handler's reply, not its own timeout"
    assert handled.read_text().splitlines() == ["handled slow 0"]

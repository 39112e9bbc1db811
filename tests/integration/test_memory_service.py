"""The Memory service as a real process (`python -m agentmesh_cli memory`), spoken to over
real HTTP with httpx, on the session's real Valkey: tools, ownership, resources as SSE and
JSON, a follow stream, every error status, health, readiness, OpenAPI, and SIGTERM.

A second process points at a Redis port where nothing listens, for the 503s. No mocks.
"""

from __future__ import annotations

import asyncio
import json
import os
import queue
import signal
import socket
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from httpx_sse import aconnect_sse

from agentmesh_cli.constants import Keys
from agentmesh_cli.embedded import free_port, stop
from agentmesh_cli.waiting import wait_until
from tests.helpers.services import (
    AUTH,
    LIMIT,
    SSE,
    TOKEN,
    Service,
    answering,
    call,
    error_of,
    new_id,
    read_sse,
    result,
    serving,
    sse_events,
    start_service,
    store_input,
)


@pytest.fixture(scope="module")
def service(valkey: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    svc = start_service(tmp_path_factory.mktemp("memory"), valkey)
    try:
        wait_until(lambda: answering(svc), 20, "the memory service")
        yield svc
    finally:
        stop(svc.proc)


@pytest.fixture(scope="module")
def client(service: Service) -> Iterator[httpx.Client]:
    with httpx.Client(headers=AUTH, base_url=service.url, timeout=10.0) as http:
        yield http


@pytest.fixture(scope="module")
def store(valkey: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(valkey)
    try:
        yield client
    finally:
        client.close()


@pytest.fixture(scope="module")
def dead_redis_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    svc = start_service(tmp_path_factory.mktemp("memory-dead"), f"redis://127.0.0.1:{free_port()}/0",
                        port_flag=False)
    try:
        wait_until(lambda: answering(svc), 20, "the memory service without Redis")
        yield svc
    finally:
        stop(svc.proc)


# startup ------------------------------------------------------------------------------
def test_ready_record_health_and_one_info_line(service: Service, store: redis.Redis,
                                               client: httpx.Client) -> None:
    raw = wait_until(lambda: store.get(Keys(service.mesh).ready("memory")), 10, "the ready record")
    record = json.loads(raw)
    assert set(record) == {"pid", "ts"}
    assert record["pid"] == service.proc.pid
    assert abs(record["ts"] - time.time()) < 60
    info = [line for line in service.log_text().splitlines() if " INFO " in line]
    assert len(info) == 1 and "serving on " + service.url in info[0], service.log_text()
    response = client.get("/health")
    assert response.status_code == 200 and response.json() == {"status": "healthy"}


# tools --------------------------------------------------------------------------------
def test_store_input_returns_the_stored_item(client: httpx.Client) -> None:
    user = new_id("u")
    item = store_input(client, user, "first words", conversation_id="conv-1",
                       timestamp="2024-01-02T03:04:05Z", metadata={"lang": "en", "n": [1, 2]})
    assert set(item) == {"message_id", "user_id", "conversation_id", "timestamp", "content", "metadata"}
    assert uuid.UUID(item["message_id"]).version == 4
    assert item["user_id"] == user and item["conversation_id"] == "conv-1"
    assert item["timestamp"] == 1704164645.0 and item["content"] == "first words"
    assert item["metadata"] == {"lang": "en", "n": [1, 2]}

    before = time.time()
    plain = store_input(client, user, "no extras")
    assert plain["conversation_id"] is None and plain["metadata"] == {}
    assert isinstance(plain["timestamp"], float) and before - 5 < plain["timestamp"] < time.time() + 5
    assert store_input(client, user, "epoch", timestamp=1700000000)["timestamp"] == 1700000000.0
    assert result(client, "get_message", message_id=item["message_id"], user_id=user) == item


def test_a_message_id_stored_again_is_stored_once(client: httpx.Client, store: redis.Redis,
                                                  service: Service) -> None:
    """A client's own message_id (a write sent again after a lost answer, or by a handler run
    again after a crash) stores nothing the second time and returns the first item."""
    user, mid = new_id("u"), new_id("m")
    first = store_input(client, user, "first words", message_id=mid, conversation_id="c-once")
    assert first["message_id"] == mid and first["content"] == "first words"
    again = store_input(client, user, "other words", message_id=mid, conversation_id="c-once")
    assert again == first  # the first write wins
    assert client.get(f"/resource/history/{user}").json() == {"items": [first]}
    keys = Keys(service.mesh)
    assert store.zcard(keys.memory_conversation("c-once")) == 1
    # another user's id is taken, and nothing of it shows
    error = error_of(call(client, "store_input", user_id=new_id("bob"),
                          input_data={"content": "x", "message_id": mid}), 409, "conflict")
    assert error["details"] == {"argument": "input_data.message_id"}
    assert "first words" not in str(error)


def test_update_and_delete_keep_the_indexes(client: httpx.Client, service: Service,
                                            store: redis.Redis) -> None:
    user = new_id("u")
    item = store_input(client, user, "draft", conversation_id="c-upd", metadata={"v": 1})
    mid = item["message_id"]

    changed = result(client, "update_message", user_id=user, message_id=mid, updates={"content": "final"})
    assert changed == {**item, "content": "final"}
    changed = result(client, "update_message", user_id=user, message_id=mid, updates={"metadata": {"v": 2}})
    assert changed == {**item, "content": "final", "metadata": {"v": 2}}
    assert result(client, "get_message", user_id=user, message_id=mid) == changed
    assert client.get(f"/resource/history/{user}").json() == {"items": [changed]}

    deleted = result(client, "delete_message", user_id=user, message_id=mid)
    assert deleted == {"deleted": True, "message_id": mid}
    error = error_of(call(client, "get_message", user_id=user, message_id=mid), 404, "message_not_found")
    assert error["message"] == f"no message {mid} for user {user}"
    keys = Keys(service.mesh)
    assert store.exists(keys.memory_message(mid)) == 0
    for index in (keys.memory_user(user), keys.memory_conversation("c-upd"),
                  keys.memory_conversation_user("c-upd", user)):
        assert store.zcard(index) == 0, index
    assert client.get(f"/resource/conversation/c-upd/user/{user}").json() == {"items": []}
    error_of(call(client, "delete_message", user_id=user, message_id=mid), 404, "message_not_found")


def test_another_users_message_is_not_found(client: httpx.Client) -> None:
    alice, bob = new_id("alice"), new_id("bob")
    item = store_input(client, alice, "alice's secret", metadata={"k": "v"})
    mid = item["message_id"]
    refusals = [
        call(client, "get_message", user_id=bob, message_id=mid),
        call(client, "update_message", user_id=bob, message_id=mid, updates={"content": "hacked"}),
        call(client, "delete_message", user_id=bob, message_id=mid),
    ]
    for response in refusals:
        error = error_of(response, 404, "message_not_found")
        assert error["message"] == f"no message {mid} for user {bob}"
        assert error["details"] == {"message_id": mid, "user_id": bob}
    # the same answer as for a message that never existed: existence does not leak
    missing = error_of(call(client, "get_message", user_id=bob, message_id="no-such-id"), 404,
                       "message_not_found")
    assert missing["message"] == f"no message no-such-id for user {bob}"
    assert result(client, "get_message", user_id=alice, message_id=mid) == item
    assert client.get(f"/resource/history/{alice}").json() == {"items": [item]}


BAD_ARGUMENTS = [
    ("store_input", {"input_data": {"content": "x"}}, "user_id"),
    ("store_input", {"user_id": 42, "input_data": {"content": "x"}}, "user_id"),
    ("store_input", {"user_id": "a/b", "input_data": {"content": "x"}}, "user_id"),
    ("store_input", {"user_id": "a b", "input_data": {"content": "x"}}, "user_id"),
    ("store_input", {"user_id": "u" * 129, "input_data": {"content": "x"}}, "user_id"),
    ("store_input", {"user_id": "u"}, "input_data"),
    ("store_input", {"user_id": "u", "input_data": "text"}, "input_data"),
    ("store_input", {"user_id": "u", "input_data": {"content": ""}}, "input_data.content"),
    ("store_input", {"user_id": "u", "input_data": {"content": 7}}, "input_data.content"),
    ("store_input", {"user_id": "u", "input_data": {}}, "input_data.content"),
    ("store_input", {"user_id": "u", "input_data": {"content": "x", "color": "red"}}, "input_data.color"),
    ("store_input", {"user_id": "u", "input_data": {"content": "x", "timestamp": "yesterday"}},
     "input_data.timestamp"),
    ("store_input", {"user_id": "u", "input_data": {"content": "x", "timestamp": True}},
     "input_data.timestamp"),
    ("store_input", {"user_id": "u", "input_data": {"content": "x", "metadata": [1]}}, "input_data.metadata"),
    ("store_input", {"user_id": "u", "input_data": {"content": "x", "conversation_id": "c#1"}},
     "input_data.conversation_id"),
    ("store_input", {"user_id": "u", "input_data": {"content": "x"}, "priority": 1}, "priority"),
    ("get_message", {"user_id": "u"}, "message_id"),
    ("get_message", {"user_id": "u", "message_id": "../../etc"}, "message_id"),
    ("update_message", {"user_id": "u", "message_id": "m", "updates": {}}, "updates"),
    ("update_message", {"user_id": "u", "message_id": "m", "updates": {"user_id": "v"}}, "updates.user_id"),
    ("update_message", {"user_id": "u", "message_id": "m", "updates": {"content": ""}}, "updates.content"),
    ("update_message", {"user_id": "u", "message_id": "m"}, "updates"),
    ("delete_message", {"message_id": "m"}, "user_id"),
]


@pytest.mark.parametrize(("tool", "arguments", "argument"), BAD_ARGUMENTS,
                         ids=[f"{t}-{a}-{i}" for i, (t, _, a) in enumerate(BAD_ARGUMENTS)])
def test_bad_arguments_are_400_naming_the_argument(client: httpx.Client, tool: str,
                                                    arguments: dict[str, Any], argument: str) -> None:
    error = error_of(call(client, tool, **arguments), 400, "invalid_argument")
    assert error["details"]["argument"] == argument
    assert repr(argument) in error["message"]


def test_bodies_that_are_not_a_tool_call(client: httpx.Client) -> None:
    error_of(client.post("/tool/get_message", content=b"{not json",
                         headers={"Content-Type": "application/json"}), 400, "invalid_json")
    error_of(client.post("/tool/get_message", content=b"user_id=u",
                         headers={"Content-Type": "text/plain"}), 415, "unsupported_media_type")
    error_of(client.post("/tool/get_message", json={"user_id": "u"}), 400, "invalid_body")
    error = error_of(client.post("/tool/get_message", json={"arguments": [1]}), 400, "invalid_argument")
    assert error["details"] == {"argument": "arguments"}


def test_unknown_tool_resource_and_endpoint_are_404(client: httpx.Client) -> None:
    error = error_of(call(client, "forget_everything", user_id="u"), 404, "unknown_tool")
    assert error["details"]["tool"] == "forget_everything"
    for path in ("history", "history/u/limit", "history/u/page/2", "messages/u", "conversation/c/user"):
        error = error_of(client.get(f"/resource/{path}"), 404, "unknown_resource")
        assert error["details"] == {"path": path}
    error_of(client.get("/resource/nope/x", headers=SSE), 404, "unknown_resource")
    error_of(client.get("/nothing/here"), 404, "not_found")


@pytest.mark.parametrize(("path", "argument"), [
    ("history/u/limit/0", "limit"),
    ("history/u/limit/1001", "limit"),
    ("history/u/limit/ten", "limit"),
    ("history/a%20b", "user_id"),
    ("conversation/c%21/user/u", "conversation_id"),
    ("conversation/c/user/" + "u" * 129, "user_id"),
])
def test_bad_resource_segments_are_400(client: httpx.Client, path: str, argument: str) -> None:
    for headers in ({}, SSE):
        error = error_of(client.get(f"/resource/{path}", headers=headers), 400, "invalid_argument")
        assert error["details"] == {"argument": argument}


def test_follow_must_be_a_boolean(client: httpx.Client) -> None:
    error = error_of(client.get("/resource/history/u", params={"follow": "maybe"}, headers=SSE),
                     400, "invalid_argument")
    assert error["details"] == {"argument": "follow"}


def test_wrong_method_is_405(client: httpx.Client) -> None:
    for method, path in (("GET", "/tool/store_input"), ("POST", "/health"),
                         ("DELETE", "/resource/history/u")):
        response = client.request(method, path)
        error_of(response, 405, "method_not_allowed")
        assert method not in response.headers["allow"]


def test_body_over_the_limit_is_413(client: httpx.Client) -> None:
    over = json.dumps({"arguments": {"user_id": "u", "input_data": {"content": "x" * LIMIT}}}).encode()
    error = error_of(client.post("/tool/store_input", content=over,
                                 headers={"Content-Type": "application/json"}), 413, "payload_too_large")
    assert error["details"] == {"max_bytes": LIMIT}

    def chunks() -> Iterator[bytes]:  # no Content-Length: the bytes read are counted
        for start in range(0, len(over), 65536):
            yield over[start:start + 65536]

    chunked = client.post("/tool/store_input", content=chunks(), headers={"Content-Type": "application/json"})
    assert "content-length" not in chunked.request.headers
    error_of(chunked, 413, "payload_too_large")
    # just under the limit is fine
    big = store_input(client, new_id("u"), "y" * (LIMIT - 200))
    assert len(big["content"]) == LIMIT - 200


def test_unexpected_error_is_a_json_500_and_a_log_line(client: httpx.Client, service: Service,
                                                       store: redis.Redis) -> None:
    mid = new_id("corrupt")
    store.set(Keys(service.mesh).memory_message(mid), b"\x00 not json")
    error = error_of(call(client, "get_message", user_id="u", message_id=mid), 500, "internal_error")
    assert "Traceback" not in error["message"]
    wait_until(lambda: "internal error on POST /tool/get_message" in service.log_text(), 5, "the log line")


# resources ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def history(client: httpx.Client) -> dict[str, Any]:
    """Messages of user u (and one of v) in conversation c, stored out of time order."""
    u, v, c = new_id("u"), new_id("v"), new_id("c")
    m1 = store_input(client, u, "one", conversation_id=c, timestamp=100)
    m2 = store_input(client, u, "two", conversation_id=c, timestamp=300)
    m3 = store_input(client, u, "three", timestamp=200)
    m4 = store_input(client, u, "four", conversation_id=c, timestamp=300)  # same time, stored later
    m5 = store_input(client, v, "five", conversation_id=c, timestamp=250)
    return {"u": u, "v": v, "c": c, "expect": {
        f"history/{u}": [m4, m2, m3, m1],
        f"history/{u}/limit/2": [m4, m2],
        f"history/{u}/limit/1000": [m4, m2, m3, m1],
        f"conversation/{c}": [m4, m2, m5, m1],
        f"conversation/{c}/user/{u}": [m4, m2, m1],
        f"conversation/{c}/user/{v}": [m5],
        f"history/{new_id('nobody')}": [],
    }}


def test_resources_as_sse_newest_first_then_end(client: httpx.Client, history: dict[str, Any]) -> None:
    for path, expected in history["expect"].items():
        events = read_sse(client, path)
        assert events == [("message", item) for item in expected] + [("end", {"count": len(expected)})], path


def test_resources_as_json(client: httpx.Client, history: dict[str, Any]) -> None:
    for path, expected in history["expect"].items():
        for headers in ({}, {"Accept": "application/json"}):
            response = client.get(f"/resource/{path}", headers=headers)
            assert response.status_code == 200, response.text
            assert response.headers["content-type"].startswith("application/json")
            assert response.json() == {"items": expected}, path


def test_follow_stream_pushes_changes_made_after_it_opened(service: Service, client: httpx.Client) -> None:
    user = new_id("follower")
    before = store_input(client, user, "before the stream")
    events: queue.Queue[tuple[str, Any]] = queue.Queue()

    def reader() -> None:
        try:
            with httpx.Client(headers=AUTH, base_url=service.url, timeout=10.0) as http, http.stream(
                    "GET", f"/resource/history/{user}", params={"follow": "true"}, headers=SSE) as response:
                events.put(("status", response.status_code))
                for kind, data in sse_events(response):
                    events.put((kind, data))
                    if kind == "deleted":
                        return
        except Exception as exc:  # reported to the test, never lost in the thread
            events.put(("exception", repr(exc)))

    def next_event() -> tuple[str, Any]:
        while True:
            kind, data = events.get(timeout=5)
            if not (kind == ":" and str(data).startswith("ping")):
                return kind, data

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    assert next_event() == ("status", 200)
    assert next_event() == ("message", before)
    assert next_event() == (":", "following")  # live from here on

    store_input(client, new_id("someone-else"), "not for this stream")
    started = time.monotonic()
    after = store_input(client, user, "after the stream opened")
    assert next_event() == ("stored", after)
    assert time.monotonic() - started < 3
    updated = result(client, "update_message", user_id=user, message_id=after["message_id"],
                     updates={"content": "edited"})
    assert next_event() == ("updated", updated)
    result(client, "delete_message", user_id=user, message_id=after["message_id"])
    assert next_event() == ("deleted", updated)
    thread.join(5)
    assert not thread.is_alive()


# without Redis ------------------------------------------------------------------------
def test_redis_down_is_503_never_500(dead_redis_service: Service) -> None:
    with httpx.Client(headers=AUTH, base_url=dead_redis_service.url, timeout=10.0) as http:
        health = http.get("/health")
        assert health.status_code == 503
        body = health.json()
        assert body["status"] == "unhealthy" and set(body) == {"status", "details"}
        assert set(body["details"]) == {"redis"} and body["details"]["redis"]

        error = error_of(call(http, "store_input", user_id="u", input_data={"content": "x"}),
                         503, "store_unavailable")
        assert error["details"]["redis"]
        error_of(call(http, "get_message", user_id="u", message_id="m"), 503, "store_unavailable")
        error_of(http.get("/resource/history/u"), 503, "store_unavailable")
        error_of(http.get("/resource/history/u", headers=SSE), 503, "store_unavailable")
        error_of(http.get("/resource/history/u", params={"follow": "true"}, headers=SSE), 503,
                 "store_unavailable")
        # arguments are checked before Redis is asked
        error_of(call(http, "store_input", user_id="u", input_data={"content": ""}), 400, "invalid_argument")
    log = dead_redis_service.log_text()
    assert "Traceback" not in log and "not ready yet" in log, log


# OpenAPI and shutdown -----------------------------------------------------------------
def test_openapi_describes_the_protocol(client: httpx.Client) -> None:
    spec = client.get("/openapi.json").json()
    paths = spec["paths"]
    assert {"/tool/{name}", "/resource/{path}", "/health"} <= set(paths)
    tool = paths["/tool/{name}"]["post"]
    body_schema = tool["requestBody"]["content"]["application/json"]["schema"]
    assert "arguments" in body_schema["properties"] and body_schema["required"] == ["arguments"]
    for status in ("400", "404", "413", "415", "503"):
        ref = tool["responses"][status]["content"]["application/json"]["schema"]["$ref"]
        assert ref == "#/components/schemas/ErrorResponse"
    assert "422" not in tool["responses"]
    resource = paths["/resource/{path}"]["get"]
    assert "text/event-stream" in resource["responses"]["200"]["content"]
    assert {p["name"] for p in resource["parameters"]} == {"path", "follow"}
    health = paths["/health"]["get"]["responses"]
    assert health["503"]["content"]["application/json"]["schema"]["$ref"] == "#/components/schemas/Health"
    schemas = spec["components"]["schemas"]
    assert set(schemas["ErrorResponse"]["properties"]) == {"error"}
    assert {"code", "message", "details"} <= set(schemas["ErrorBody"]["properties"])


def test_sigterm_ends_follow_streams_and_the_process(valkey: str, tmp_path: Path) -> None:
    svc = start_service(tmp_path, valkey)
    try:
        wait_until(lambda: answering(svc), 20, "the memory service")
        with httpx.Client(headers=AUTH, base_url=svc.url, timeout=10.0) as http, http.stream(
                "GET", "/resource/history/u", params={"follow": "true"}, headers=SSE) as response:
            seen = []
            for kind, data in sse_events(response):
                seen.append((kind, data))
                if (kind, data) == (":", "following"):
                    started = time.monotonic()
                    os.kill(svc.proc.pid, signal.SIGTERM)
            # the loop ends because the server closed the stream properly (no read error)
            assert seen == [(":", "following")]
        svc.proc.wait(8)
        assert time.monotonic() - started < 8
        assert svc.proc.returncode in (0, -signal.SIGTERM)
        assert "ERROR" not in svc.log_text(), svc.log_text()
    finally:
        stop(svc.proc)


def test_create_app_keepalive_and_body_limit(valkey: str) -> None:
    """The factory's knobs, on a real uvicorn in this process (the CLI serves the defaults)."""
    from agentmesh_cli.services.memory import create_app

    app = create_app(valkey, f"mem{uuid.uuid4().hex[:8]}", service_token=TOKEN, max_body_bytes=200,
                     keepalive_s=0.3)
    with serving(app) as port, \
            httpx.Client(headers=AUTH, base_url=f"http://127.0.0.1:{port}", timeout=10.0) as http:
        small = call(http, "store_input", user_id="u", input_data={"content": "fits"})
        assert small.status_code == 200, small.text
        error_of(call(http, "store_input", user_id="u", input_data={"content": "z" * 200}),
                 413, "payload_too_large")
        comments = []
        with http.stream("GET", "/resource/history/u", params={"follow": "true"},
                         headers=SSE) as response:
            for kind, data in sse_events(response):
                if kind == ":":
                    comments.append(data)
                if len(comments) == 3:
                    break
        assert comments[0] == "following" and all(c.startswith("ping") for c in comments[1:])


# the follow fan-out -------------------------------------------------------------------
Storer = Callable[[httpx.AsyncClient], Awaitable[None]]


async def follow_many(url: str, user: str, streams: int, stored: int,
                      then: Storer) -> list[list[tuple[str, Any]]]:
    """`streams` follow streams on `user`'s history; once every one has its 200 (sent
    after the stream registered with the feed), `then` runs; each stream's events are
    collected until it has seen `stored` stored events."""
    opened = 0
    all_open = asyncio.Event()
    seen: list[list[tuple[str, Any]]] = [[] for _ in range(streams)]
    limits = httpx.Limits(max_connections=streams + 4, max_keepalive_connections=streams + 4)
    async with httpx.AsyncClient(headers=AUTH, base_url=url, timeout=30.0, limits=limits) as http:

        async def follow(n: int) -> None:
            nonlocal opened
            async with aconnect_sse(http, "GET", f"/resource/history/{user}",
                                    params={"follow": "true"}) as source:
                assert source.response.status_code == 200, await source.response.aread()
                opened += 1
                if opened == streams:
                    all_open.set()
                async for event in source.aiter_sse():
                    seen[n].append((event.event, event.json()))
                    if sum(kind == "stored" for kind, _ in seen[n]) == stored:
                        return

        tasks = [asyncio.create_task(follow(n)) for n in range(streams)]
        try:
            opening = asyncio.create_task(all_open.wait())
            await asyncio.wait([opening, *tasks], timeout=30, return_when=asyncio.FIRST_COMPLETED)
            for task in tasks:
                if task.done():
                    task.result()  # a stream that failed to open: its error, not a timeout
            assert opening.done(), f"only {opened} of {streams} streams opened"
            await then(http)
            await asyncio.wait_for(asyncio.gather(*tasks), 30)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
    return seen


def test_a_hundred_follow_streams_get_every_change_and_sigterm_still_ends_them(
        valkey: str, tmp_path: Path) -> None:
    """Each stream used to hold its own Redis connection (about 50 could open); now one
    subscription per process serves them all, and the service keeps answering."""
    svc = start_service(tmp_path, valkey)
    user = new_id("crowd")
    stored: list[dict[str, Any]] = []

    async def store_three(http: httpx.AsyncClient) -> None:
        assert (await http.get("/health")).status_code == 200  # the pool is not exhausted
        for n in range(3):
            answer = await http.post("/tool/store_input", json={"arguments": {
                "user_id": user, "input_data": {"content": f"to everyone {n}"}}})
            assert answer.status_code == 200, answer.text
            stored.append(answer.json()["result"])
        other = await http.post("/tool/store_input", json={"arguments": {
            "user_id": new_id("bystander"), "input_data": {"content": "not for them"}}})
        assert other.status_code == 200

    try:
        wait_until(lambda: answering(svc), 20, "the memory service")
        seen = asyncio.run(follow_many(svc.url, user, 100, 3, store_three))
        assert all(events == [("stored", item) for item in stored] for events in seen), seen[0]
        # SIGTERM with 100 streams open: they end and the process exits in time
        with httpx.Client(headers=AUTH, base_url=svc.url, timeout=10.0) as http:
            streams = [http.stream("GET", f"/resource/history/{user}", params={"follow": "true"},
                                   headers=SSE) for _ in range(100)]
            responses = [stream.__enter__() for stream in streams]
            assert all(response.status_code == 200 for response in responses)
            started = time.monotonic()
            os.kill(svc.proc.pid, signal.SIGTERM)
            for response in responses:
                events = [kind for kind, _ in sse_events(response) if kind != ":"]
                assert events == ["message"] * 3  # the backlog, then a proper end of stream
            for stream in streams:
                stream.__exit__(None, None, None)
        svc.proc.wait(8)
        assert time.monotonic() - started < 8
        assert svc.proc.returncode in (0, -signal.SIGTERM)
        assert "ERROR" not in svc.log_text() and "Traceback" not in svc.log_text(), svc.log_text()
    finally:
        stop(svc.proc)


def pubsub_client_ids(store: redis.Redis) -> set[int]:
    return {int(entry["id"]) for entry in store.client_list(_type="pubsub")}


def test_a_broken_subscription_ends_open_streams_with_an_error_and_new_ones_work(
        valkey: str, store: redis.Redis, tmp_path: Path) -> None:
    svc = start_service(tmp_path, valkey)
    user = new_id("cut")
    try:
        wait_until(lambda: answering(svc), 20, "the memory service")
        before = pubsub_client_ids(store)
        with httpx.Client(headers=AUTH, base_url=svc.url, timeout=10.0) as http:
            streams = [http.stream("GET", f"/resource/history/{user}", params={"follow": "true"},
                                   headers=SSE) for _ in range(3)]
            responses = [stream.__enter__() for stream in streams]
            (subscription,) = pubsub_client_ids(store) - before  # one for the three streams
            store.client_kill_filter(_id=subscription)
            for response in responses:
                events = [(kind, data) for kind, data in sse_events(response) if kind != ":"]
                assert [kind for kind, _ in events] == ["error"], events
                assert events[0][1]["error"]["code"] == "store_unavailable"
            for stream in streams:
                stream.__exit__(None, None, None)
        # the next stream is served by a subscription that is whole again
        seen = asyncio.run(follow_many(svc.url, user, 2, 1, partial(store_one, user)))
        assert [kind for kind, _ in seen[0]] == ["stored"]
        assert "Traceback" not in svc.log_text(), svc.log_text()
    finally:
        stop(svc.proc)


async def store_one(user: str, http: httpx.AsyncClient) -> None:
    answer = await http.post("/tool/store_input", json={"arguments": {
        "user_id": user, "input_data": {"content": "after the break"}}})
    assert answer.status_code == 200, answer.text


def test_a_stream_that_stops_reading_does_not_stall_the_others(valkey: str) -> None:
    """On a real uvicorn in this process with a follow buffer of 4: a client that reads
    nothing (its socket buffers fill, then its queue) is ended with `fell_behind`, while
    a reading stream gets every change at once."""
    from agentmesh_cli.services.memory import create_app

    app = create_app(valkey, f"mem{uuid.uuid4().hex[:8]}", service_token=TOKEN, follow_buffer=4)
    user, big = new_id("slow"), "z" * 200_000
    count = 80  # 16 MB of events: more than the socket buffers of a client that reads nothing
    with serving(app) as port:
        stalled = socket.create_connection(("127.0.0.1", port), timeout=10)
        stalled.sendall(f"GET /resource/history/{user}?follow=true HTTP/1.1\r\nHost: x\r\n"
                        f"Authorization: Bearer {TOKEN}\r\n"
                        "Accept: text/event-stream\r\n\r\n".encode())
        head = b""
        while b": following" not in head:
            head += stalled.recv(4096)

        async def store_all(http: httpx.AsyncClient) -> None:
            for n in range(count):
                answer = await http.post("/tool/store_input", json={"arguments": {
                    "user_id": user, "input_data": {"content": big, "metadata": {"n": n}}}})
                assert answer.status_code == 200, answer.text

        seen = asyncio.run(follow_many(f"http://127.0.0.1:{port}", user, 1, count, store_all))
        assert [data["metadata"]["n"] for _, data in seen[0]] == list(range(count))
        # the stalled client, reading at last: some changes, then the error that ended it
        stalled.settimeout(10)
        rest = head
        while chunk := stalled.recv(1 << 20):
            rest += chunk
            if b"event: error" in rest and rest.endswith(b"\r\n\r\n"):
                break
        stalled.close()
        error_line = rest.split(b"event: error", 1)[1].split(b"data: ", 1)[1].split(b"\r\n", 1)[0]
        error = json.loads(error_line)["error"]
        assert error["code"] == "fell_behind" and error["details"] == {"buffer": 4}
        assert rest.count(b"event: stored") < count

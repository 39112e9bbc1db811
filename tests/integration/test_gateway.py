"""The gateway's HTTP API against real processes: `agentmesh gateway` and two agents
(Inventory, the demo role; Helper, tests/helpers/waiting_roles.py:Answerer, whose `fail`
raises) on the session broker and Valkey. Every endpoint, every error in the services'
JSON shape, who may act for whom, the drain mark, and Idempotency-Key. No mocks.

Redis and the broker going down are in test_gateway_faults.py (they need servers of their
own), the conversation events in test_gateway_events.py, MCP in test_gateway_mcp.py.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from agentmesh_cli import constants as C
from agentmesh_cli.store import Store
from agentmesh_cli.waiting import wait_until
from tests.helpers.gateway import WAITING_ROLES, RunningGateway, error_of, running_gateway, write_gateway_mesh

REPLY_FIELDS = {"id", "type", "from", "payload", "conversation", "in_reply_to", "round_trip_ms"}
CHECK_STOCK = {"type": "check_stock", "payload": {"order_id": "o-1", "items": {}}}
MAX_ASK_TIMEOUT_S = 60.0


@pytest.fixture(scope="module")
def gateway(broker: str, valkey: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    folder = tmp_path_factory.mktemp("gateway")
    mesh = write_gateway_mesh(folder, broker, valkey, [
        {"name": "Inventory", "role": "inventory"},
        {"name": "Helper", "role": f"{WAITING_ROLES}:Answerer"},
    ], max_ask_timeout=MAX_ASK_TIMEOUT_S)
    with running_gateway(mesh, folder) as running:
        yield running


@pytest.fixture
def http(gateway: RunningGateway) -> Iterator[httpx.Client]:
    with gateway.client() as client:
        yield client


def user(name: str = "u") -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}"


# the endpoints ------------------------------------------------------------------------
def test_ask_answers_with_the_agents_reply(http: httpx.Client) -> None:
    answer = http.post("/agents/Inventory/ask", json=CHECK_STOCK)
    assert answer.status_code == 200, answer.text
    reply = answer.json()
    assert set(reply) == REPLY_FIELDS
    assert reply["type"] == "stock_result" and reply["from"] == "Inventory"
    assert reply["payload"] == {"order_id": "o-1", "approved": True}  # nothing asked: can fill
    assert reply["conversation"].startswith("c-") and reply["in_reply_to"] != reply["id"]
    assert reply["round_trip_ms"] > 0


def test_ask_in_a_named_conversation_keeps_it(http: httpx.Client) -> None:
    conversation = f"order-{uuid.uuid4().hex[:8]}"
    answer = http.post("/agents/Inventory/ask", json={**CHECK_STOCK, "conversation": conversation,
                                                      "timeout": 20})
    assert answer.status_code == 200, answer.text
    assert answer.json()["conversation"] == conversation


def test_message_is_accepted_and_handled(gateway: RunningGateway, http: httpx.Client) -> None:
    handled = f"{C.COUNTER_HANDLED_FROM_PREFIX}{C.GATEWAY_SENDER}"
    before = gateway.store.counters("Inventory").get(handled, 0)
    answer = http.post("/agents/Inventory/messages", json={"type": "note", "payload": {"n": 1}})
    assert answer.status_code == 202, answer.text
    body = answer.json()
    assert set(body) == {"id", "conversation"} and body["conversation"].startswith("c-")
    wait_until(lambda: gateway.store.counters("Inventory").get(handled, 0) > before, 30,
               "Inventory handled the gateway's message")


def test_new_conversation_belongs_to_whom_the_token_says(gateway: RunningGateway) -> None:
    alice = user("alice")
    with gateway.client() as mesh, gateway.client(alice) as own:
        answers = [mesh.post("/conversations"), mesh.post("/conversations", json={"user": alice}),
                   own.post("/conversations"), own.post("/conversations", json={})]
    assert [a.status_code for a in answers] == [201] * 4, [a.text for a in answers]
    assert [a.json()["owner"] for a in answers] == [None, alice, alice, alice]
    for answer in answers:
        assert set(answer.json()) == {"conversation", "owner"}
    assert len({a.json()["conversation"] for a in answers}) == 4


def test_agents_lists_every_agent_with_role_state_and_accepts(http: httpx.Client) -> None:
    answer = http.get("/agents")
    assert answer.status_code == 200, answer.text
    agents = {a["name"]: a for a in answer.json()["agents"]}
    assert set(agents) == {"Helper", "Inventory"}
    assert agents["Inventory"]["role"] == "inventory"
    assert agents["Helper"]["role"] == f"{WAITING_ROLES}:Answerer"
    for entry in agents.values():
        assert entry["state"] == "up" and isinstance(entry["capabilities"], list)
        assert {"name", "role", "state", "capabilities", "accepts"} <= set(entry)
    # what the role declares (InventoryRole.accepts), as JSON schema; Answerer declares nothing
    assert set(agents["Inventory"]["accepts"]) == {"check_stock"}
    assert set(agents["Inventory"]["accepts"]["check_stock"]["properties"]) == {"order_id", "items"}
    assert agents["Helper"]["accepts"] == {}


def test_health_and_openapi_need_no_token(gateway: RunningGateway) -> None:
    health = httpx.get(gateway.url + "/health", timeout=10)
    assert health.status_code == 200 and health.json() == {"status": "healthy"}
    spec = httpx.get(gateway.url + "/openapi.json", timeout=10)
    assert spec.status_code == 200
    paths = spec.json()["paths"]
    assert {"/agents/{name}/ask", "/agents/{name}/messages", "/conversations",
            "/conversations/{conversation}/events", "/agents", "/health"} <= set(paths)
    assert httpx.get(gateway.url + "/agents", timeout=10).status_code == 401  # the rest is not open


# 400 ----------------------------------------------------------------------------------
@pytest.mark.parametrize(("body", "argument"), [
    ({"type": "bad type!"}, "type"),
    ({"payload": {}}, "type"),
    ({"type": "t", "surprise": 1}, "surprise"),
    ({"type": "t", "payload": [1]}, "payload"),
    ({"type": "t", "timeout": 0}, "timeout"),
    ({"type": "t", "timeout": -1}, "timeout"),
    ({"type": "t", "timeout": MAX_ASK_TIMEOUT_S + 1}, "timeout"),
    ({"type": "t", "conversation": "no spaces"}, "conversation"),
    ({"type": "t", "user": "a/b"}, "user"),
    ([], "body"),
], ids=["type", "no-type", "extra", "payload", "timeout-0", "timeout-negative", "timeout-over-max",
        "conversation", "user", "array"])
def test_a_bad_field_is_a_400_naming_it(http: httpx.Client, body: Any, argument: str) -> None:
    error = error_of(http.post("/agents/Inventory/ask", json=body), 400, "invalid_argument")
    assert error["details"]["argument"] == argument, error


def test_a_bad_message_or_conversation_body_is_a_400_naming_the_field(http: httpx.Client) -> None:
    error = error_of(http.post("/agents/Inventory/messages", json={"type": "t", "timeout": 1}),
                     400, "invalid_argument")
    assert error["details"]["argument"] == "timeout"  # a message waits for no answer
    error = error_of(http.post("/conversations", json={"owner": "x"}), 400, "invalid_argument")
    assert error["details"]["argument"] == "owner"


@pytest.mark.parametrize(("payload", "argument"), [
    ({"items": {"cable": "many"}}, "payload.items.cable"),
    ({"items": []}, "payload.items"),
    ({"order_id": 7}, "payload.order_id"),
])
@pytest.mark.parametrize("path", ["/agents/Inventory/ask", "/agents/Inventory/messages"])
def test_a_payload_that_does_not_fit_the_declared_schema_is_a_400(http: httpx.Client, path: str,
                                                                   payload: Any, argument: str) -> None:
    body = {"type": "check_stock", "payload": payload}
    error = error_of(http.post(path, json=body), 400, "invalid_argument")
    assert error["details"]["argument"] == argument, error


@pytest.mark.parametrize("path", ["/agents/Inventory/ask", "/agents/Inventory/messages", "/conversations"])
def test_a_body_that_is_not_json_is_a_400(http: httpx.Client, path: str) -> None:
    answer = http.post(path, content=b'{"type": ', headers={"Content-Type": "application/json"})
    error_of(answer, 400, "invalid_json")


def test_a_deeply_nested_payload_is_a_400(http: httpx.Client) -> None:
    payload = '{"a":' * 100 + "1" + "}" * 100
    answer = http.post("/agents/Inventory/messages", content='{"type":"t","payload":' + payload + "}",
                       headers={"Content-Type": "application/json"})
    assert error_of(answer, 400, "invalid_argument")["details"]["argument"] == "payload"


# 401 and 403 --------------------------------------------------------------------------
@pytest.mark.parametrize("authorization", [
    None, "Bearer wrong-token-wrong-token", "Bearer u1.alice.bad-signature", "Basic YWxpY2U6eA==", "Bearer",
], ids=["none", "wrong", "forged-user-token", "basic", "empty"])
def test_without_a_valid_token_every_endpoint_is_a_401(gateway: RunningGateway,
                                                        authorization: str | None) -> None:
    headers = {"Authorization": authorization} if authorization else {}
    with httpx.Client(base_url=gateway.url, headers=headers, timeout=10) as anyone:
        answers = [anyone.post("/agents/Inventory/ask", json=CHECK_STOCK),
                   anyone.post("/agents/Inventory/messages", json=CHECK_STOCK),
                   anyone.post("/conversations"), anyone.get("/conversations/c-x/events"),
                   anyone.get("/agents")]
    for answer in answers:
        error_of(answer, 401, "unauthorized")
        assert answer.headers["www-authenticate"].startswith("Bearer")


def test_a_user_token_of_another_mesh_is_a_401(gateway: RunningGateway) -> None:
    from agentmesh_cli.services.tokens import user_token

    token = user_token("another-mesh-service-token-0123456789", "alice")
    answer = httpx.get(gateway.url + "/agents", headers={"Authorization": f"Bearer {token}"}, timeout=10)
    error_of(answer, 401, "unauthorized")


def test_a_user_token_may_not_act_for_another_user(gateway: RunningGateway) -> None:
    alice = user("alice")
    with gateway.client(alice) as own:
        for path in ("/agents/Inventory/ask", "/agents/Inventory/messages"):
            error = error_of(own.post(path, json={**CHECK_STOCK, "user": "bob"}), 403, "forbidden")
            assert error["details"]["argument"] == "user", error
        error_of(own.post("/conversations", json={"user": "bob"}), 403, "forbidden")
        named = own.post("/agents/Inventory/ask", json={**CHECK_STOCK, "user": alice})
        assert named.status_code == 200, named.text  # naming oneself is fine


# 404 ----------------------------------------------------------------------------------
@pytest.mark.parametrize("path", ["/agents/Nobody/ask", "/agents/Nobody/messages"])
def test_an_unknown_agent_is_a_404_at_once(http: httpx.Client, path: str) -> None:
    started = time.monotonic()
    body = {**CHECK_STOCK, "timeout": 30} if path.endswith("/ask") else CHECK_STOCK
    error = error_of(http.post(path, json=body), 404, "unknown_agent")
    assert error["details"]["agent"] == "Nobody"
    assert time.monotonic() - started < 10  # no wait for a reply that cannot come


def test_another_users_conversation_is_a_404_and_the_owner_uses_it(gateway: RunningGateway) -> None:
    alice, bob = user("alice"), user("bob")
    with gateway.client(alice) as own, gateway.client(bob) as other, gateway.client() as mesh:
        conversation = own.post("/conversations").json()["conversation"]
        for path in ("/agents/Inventory/ask", "/agents/Inventory/messages"):
            error = error_of(other.post(path, json={**CHECK_STOCK, "conversation": conversation}),
                             404, "conversation_not_found")
            assert error["details"] == {"conversation": conversation}
            # the service token acting for bob is refused the same way
            error_of(mesh.post(path, json={**CHECK_STOCK, "conversation": conversation, "user": bob}),
                     404, "conversation_not_found")
        asked = own.post("/agents/Inventory/ask", json={**CHECK_STOCK, "conversation": conversation})
        assert asked.status_code == 200 and asked.json()["conversation"] == conversation, asked.text
        sent = own.post("/agents/Inventory/messages", json={"type": "note", "conversation": conversation})
        assert sent.status_code == 202 and sent.json()["conversation"] == conversation, sent.text


def test_unknown_paths_and_methods_answer_in_the_error_shape(http: httpx.Client) -> None:
    error_of(http.get("/no/such/path"), 404, "not_found")
    assert http.get("/agents/Inventory/ask").status_code == 405
    assert http.get("/agents/Inventory/ask").json()["error"]["code"]


# 413 and 415 --------------------------------------------------------------------------
def test_a_body_over_max_body_bytes_is_a_413(gateway: RunningGateway, http: httpx.Client) -> None:
    limit = gateway.mesh.config.gateway.max_body_bytes
    body = b'{"type":"t","payload":{"blob":"' + b"x" * limit + b'"}}'
    error = error_of(http.post("/agents/Inventory/messages", content=body,
                               headers={"Content-Type": "application/json"}), 413, "payload_too_large")
    assert error["details"]["max_bytes"] == limit

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it is read
        for start in range(0, len(body), 16_384):
            yield body[start:start + 16_384]

    error_of(http.post("/agents/Inventory/ask", content=chunks(),
                       headers={"Content-Type": "application/json"}), 413, "payload_too_large")
    fits = b'{"type":"t","payload":{"blob":"' + b"x" * (limit - 200) + b'"}}'
    assert http.post("/agents/Inventory/messages", content=fits,
                     headers={"Content-Type": "application/json"}).status_code == 202


@pytest.mark.parametrize("path", ["/agents/Inventory/ask", "/agents/Inventory/messages", "/conversations"])
def test_a_body_that_is_not_declared_json_is_a_415(http: httpx.Client, path: str) -> None:
    answer = http.post(path, content=b'{"type": "t"}', headers={"Content-Type": "text/plain"})
    assert error_of(answer, 415, "unsupported_media_type")["details"]["content_type"] == "text/plain"


@pytest.mark.parametrize("content_type", [None, "application/vnd.example+json; charset=utf-8"])
def test_no_content_type_or_a_json_suffix_is_json(http: httpx.Client, content_type: str | None) -> None:
    request = http.build_request("POST", "/agents/Inventory/messages", content=b'{"type": "note"}')
    if content_type:
        request.headers["Content-Type"] = content_type
    assert request.headers.get("content-type") == content_type
    answer = http.send(request)
    assert answer.status_code == 202, answer.text


# 502, 503, 504 ------------------------------------------------------------------------
def test_a_handler_that_raises_is_a_502_with_the_remote_error(http: httpx.Client) -> None:
    error = error_of(http.post("/agents/Helper/ask", json={"type": "fail", "payload": {"x": 7}}),
                     502, "error_reply")
    details = error["details"]
    assert details["remote_type"] == "ValueError" and details["remote_message"] == "bad x 7"
    assert details["agent"] == "Helper" and details["type"] == "fail"
    assert details["conversation"].startswith("c-") and details["request_id"]


def test_an_unanswered_ask_is_a_504_after_its_timeout(http: httpx.Client) -> None:
    started = time.monotonic()
    answer = http.post("/agents/Inventory/ask", json={"type": "never_answered", "timeout": 0.5})
    waited = time.monotonic() - started
    error = error_of(answer, 504, "ask_timeout")
    assert error["details"]["timeout"] == 0.5 and error["details"]["agent"] == "Inventory"
    assert error["details"]["request_id"] and error["details"]["conversation"].startswith("c-")
    assert 0.5 <= waited < 15, waited


def test_while_draining_new_requests_are_a_503(gateway: RunningGateway, http: httpx.Client) -> None:
    gateway.store.set_draining(True)
    try:
        # the gateway reads the mark every second
        wait_until(lambda: http.post("/agents/Inventory/messages", json={"type": "note"}).status_code == 503,
                   15, "the gateway sees the drain mark")
        for path in ("/agents/Inventory/ask", "/agents/Inventory/messages"):
            error = error_of(http.post(path, json=CHECK_STOCK), 503, "draining")
            assert "draining" in error["message"]
        assert http.get("/health").status_code == 200  # draining is not unhealthy
    finally:
        gateway.store.set_draining(False)
    wait_until(lambda: http.post("/agents/Inventory/messages", json={"type": "note"}).status_code == 202,
               15, "the gateway sees the drain mark gone")


# Idempotency-Key ----------------------------------------------------------------------
def test_an_ask_repeated_with_its_key_is_handled_once_and_answered_again(gateway: RunningGateway) -> None:
    alice, key = user("alice"), uuid.uuid4().hex
    store: Store = gateway.store
    with gateway.client(alice) as own:
        first = own.post("/agents/Inventory/ask", json=CHECK_STOCK, headers={"Idempotency-Key": key})
        second = own.post("/agents/Inventory/ask", json=CHECK_STOCK, headers={"Idempotency-Key": key})
        other_key = own.post("/agents/Inventory/ask", json=CHECK_STOCK,
                             headers={"Idempotency-Key": key + "-2"})
    with gateway.client(user("bob")) as bob:
        other_user = bob.post("/agents/Inventory/ask", json=CHECK_STOCK, headers={"Idempotency-Key": key})
    assert [a.status_code for a in (first, second, other_key, other_user)] == [200] * 4
    one, two = first.json(), second.json()
    assert two["in_reply_to"] == one["in_reply_to"] and two["conversation"] == one["conversation"]
    assert two["id"] == one["id"] and two["payload"] == one["payload"]  # the same reply, again
    assert other_key.json()["in_reply_to"] != one["in_reply_to"]
    assert other_user.json()["in_reply_to"] != one["in_reply_to"]
    wait_until(lambda: store.counters("Inventory").get(C.COUNTER_DUPLICATES, 0) >= 1, 30,
               "Inventory counted the repeated request as a duplicate")
    handled, _ = store.handled_ids("Inventory", 10_000)
    assert handled.count(one["in_reply_to"]) == 1
    assert store.counters("Inventory").get(C.COUNTER_HANDLED_TWICE, 0) == 0


def test_a_message_repeated_with_its_key_has_the_same_id(gateway: RunningGateway, http: httpx.Client) -> None:
    key = uuid.uuid4().hex
    answers = [http.post("/agents/Inventory/messages", json={"type": "note", "user": "carol"},
                         headers={"Idempotency-Key": key}) for _ in range(2)]
    assert [a.status_code for a in answers] == [202, 202]
    assert answers[0].json() == answers[1].json()
    message_id = answers[0].json()["id"]
    wait_until(lambda: message_id in gateway.store.handled_ids("Inventory", 10_000)[0], 30,
               "Inventory handled the message")
    assert gateway.store.counters("Inventory").get(C.COUNTER_HANDLED_TWICE, 0) == 0

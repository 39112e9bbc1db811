"""Who gets into the memory and cognition services, against real processes over real HTTP:
bearer tokens (401), user tokens and ownership (403), the body limit from mesh.yaml (413),
paths that must never reach a Redis key (400/404), the MCP endpoint's token and Origin
checks, CORS (off by default), TLS end to end, and no token in any log or error text.

Two meshes, each started once for the module: `plain` (memory + cognition with mesh.yaml's
defaults, the token from the mesh's own secrets file) and `secure` (memory + cognition over
HTTPS with a throwaway CA made here, CORS for one origin and a small body limit). The
pure cores (tokens, parse_resource) get exact tables. Every process is stopped by pid.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import logging
import os
import ssl
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client
from mcp.shared.exceptions import MCPError

from agentmesh_cli.embedded import free_port, stop
from agentmesh_cli.errors import ConfigError, ServiceAuthError, ServiceError
from agentmesh_cli.mesh import Mesh, load_mesh
from agentmesh_cli.services.auth import (
    user_token,
)
from agentmesh_cli.services.client import AsyncServiceClient, ServiceClient
from agentmesh_cli.services.memory import create_app
from agentmesh_cli.waiting import wait_until
from tests.helpers.commands import agentmesh

ALLOWED_ORIGIN = "https://app.example"
SMALL_BODY = 4096  # the secure mesh's services.max_body_bytes
MCP_HEADERS = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}
INITIALIZE = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
    "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "test", "version": "1"}}}
ENV_DROPPED = ("MEMORY_SERVICE_URL", "MEMORY_SERVICE_PORT", "COGNITION_SERVICE_URL",
               "COGNITION_SERVICE_PORT")


def test_a_service_without_a_token_refuses_to_start(valkey: str) -> None:
    with pytest.raises(ConfigError, match="no service token"):
        create_app(valkey, "m", service_token="")
    with pytest.raises(ConfigError, match="shorter than 16"):
        create_app(valkey, "m", service_token="short")


# the processes ---------------------------------------------------------------------------
@dataclass
class Tls:
    ca: Path
    cert: Path
    key: Path


def make_tls(folder: Path) -> Tls:
    """A throwaway CA and a certificate it signed for 127.0.0.1 and localhost (PEM files)."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "agentmesh test CA")])
    ca_cert = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
               .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
               .sign(ca_key, hashes.SHA256()))
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
            .issuer_name(ca_name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([
                x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]),
                critical=False)
            .sign(ca_key, hashes.SHA256()))
    tls = Tls(folder / "ca.pem", folder / "cert.pem", folder / "key.pem")
    tls.ca.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    tls.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    tls.key.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                          serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    tls.key.chmod(0o600)
    return tls


@dataclass
class Services:
    mesh: Mesh
    procs: dict[str, subprocess.Popen[bytes]]
    logs: dict[str, Path]
    verify: ssl.SSLContext | bool = True

    @property
    def token(self) -> str:
        return self.mesh.credentials.service_token

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def url(self, service: str) -> str:
        port = getattr(self.mesh.config.services, service).port
        return f"{self.mesh.config.services.scheme}://127.0.0.1:{port}"

    def http(self, service: str, token: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token or self.token}"}
        return httpx.Client(base_url=self.url(service), headers=headers, verify=self.verify,
                            timeout=10.0)

    def log_text(self) -> str:
        return "".join(log.read_text(errors="replace") for log in self.logs.values())


def _answers(services: Services, name: str) -> bool:
    proc = services.procs[name]
    if proc.poll() is not None:
        raise AssertionError(f"{name} exited {proc.returncode}:\n{services.logs[name].read_text()}")
    try:
        return httpx.get(services.url(name) + "/health", verify=services.verify,
                         timeout=1.0).status_code == 200
    except httpx.TransportError:
        return False


@pytest.fixture(scope="module")
def meshes(valkey: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Services]]:
    """Both meshes' memory and cognition, all four started at once."""
    env = {key: value for key, value in os.environ.items() if key not in ENV_DROPPED}
    made: dict[str, Services] = {}
    try:
        for name in ("plain", "secure"):
            folder = tmp_path_factory.mktemp(f"auth-{name}")
            services: dict[str, Any] = {"memory": {"port": free_port()}, "cognition": {"port": free_port()}}
            verify: ssl.SSLContext | bool = True
            if name == "secure":
                tls = make_tls(folder)
                services.update(tls_cert=str(tls.cert), tls_key=str(tls.key), tls_ca=str(tls.ca),
                                cors_origins=[ALLOWED_ORIGIN], max_body_bytes=SMALL_BODY)
                verify = ssl.create_default_context(cafile=str(tls.ca))
            (folder / "mesh.yaml").write_text(yaml.safe_dump({
                "mesh": f"auth{uuid.uuid4().hex[:8]}", "redis": {"url": valkey}, "agents": [],
                "services": services}), encoding="utf-8")
            mesh = load_mesh(folder / "mesh.yaml")
            assert mesh.credentials.service_token  # made now, read by the services from the file
            made[name] = Services(mesh, {}, {}, verify)
            for service in ("memory", "cognition"):
                log = made[name].logs[service] = folder / f"{service}.log"
                with log.open("wb") as out:
                    command = [sys.executable, "-m", "agentmesh_cli", service, "--config",
                               str(folder / "mesh.yaml")]
                    made[name].procs[service] = subprocess.Popen(command, stdout=out,
                                                                 stderr=subprocess.STDOUT, env=env)
        for services_ in made.values():
            for service in ("memory", "cognition"):
                wait_until(lambda: _answers(services_, service), 30, f"{service}")  # noqa: B023
        yield made
    finally:
        procs = [proc for services_ in made.values() for proc in services_.procs.values()]
        for proc in procs:  # all at once: each takes a moment to shut down
            if proc.poll() is None:
                proc.terminate()
        for proc in procs:
            stop(proc)


@pytest.fixture(scope="module")
def plain(meshes: dict[str, Services]) -> Services:
    return meshes["plain"]


@pytest.fixture(scope="module")
def secure(meshes: dict[str, Services]) -> Services:
    return meshes["secure"]


@pytest.fixture(scope="module")
def alice(plain: Services) -> str:
    """alice's user token, as the CLI prints it."""
    printed = agentmesh("token", "--user", "alice", "--config", str(plain.mesh.config_file), check=True)
    token = printed.stdout.strip()
    assert token == user_token(plain.token, "alice") and token.startswith("u1.alice.")
    return token


def error_of(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error: dict[str, Any] = response.json()["error"]
    assert error["code"] == code, error
    return error


# 401 -------------------------------------------------------------------------------------
REQUESTS = [("POST", "/tool/store_input"), ("GET", "/resource/history/alice"),
            ("GET", "/openapi.json"), ("GET", "/docs"), ("POST", "/mcp"), ("GET", "/no-such-path")]


@pytest.mark.parametrize("service", ["memory", "cognition"])
def test_no_token_or_a_wrong_one_is_401_and_health_stays_open(plain: Services, service: str) -> None:
    url = plain.url(service)
    wrong = {"Authorization": "Bearer " + "w" * 43}
    for headers, challenge in (({}, "Bearer"), (wrong, 'Bearer error="invalid_token"'),
                               ({"Authorization": f"Basic {plain.token}"}, "Bearer"),
                               ({"Authorization": plain.token}, "Bearer")):
        for method, path in REQUESTS:
            answer = httpx.request(method, url + path, headers=headers, json={"arguments": {}})
            error = error_of(answer, 401, "unauthorized")
            assert answer.headers["www-authenticate"] == challenge
            assert plain.token not in answer.text and "w" * 43 not in answer.text
            assert error["message"]
    health = httpx.get(url + "/health")
    assert health.status_code == 200 and health.json()["status"] == "healthy"
    with plain.http(service) as http:
        assert http.get("/openapi.json").status_code == 200
        assert http.get("/docs").status_code == 200
        spec = http.get("/openapi.json").json()
        assert spec["security"] == [{"bearer": []}]
        assert spec["paths"]["/health"]["get"]["security"] == []


def test_the_right_token_gets_200(plain: Services) -> None:
    with plain.http("memory") as mem, plain.http("cognition") as cog:
        stored = mem.post("/tool/store_input", json={"arguments": {
            "user_id": "carol", "input_data": {"content": "the kettle works"}}})
        assert stored.status_code == 200, stored.text
        assert mem.get("/resource/history/carol").json()["items"][0]["content"] == "the kettle works"
        context = cog.post("/tool/get_context", json={"arguments": {"user_id": "carol", "query": "kettle"}})
        assert context.status_code == 200, context.text  # cognition read memory with the token
        assert len(context.json()["result"]["items"]) == 1


# 403 -------------------------------------------------------------------------------------
def cognition_calls(cog: httpx.Client, user: str, conversation: str, query: str) -> list[httpx.Response]:
    """Every cognition tool and resource, each naming `user`."""
    return [
        cog.post("/tool/get_context", json={"arguments": {"user_id": user}}),
        cog.post("/tool/search_history", json={"arguments": {"user_id": user, "query": query}}),
        cog.post("/tool/analyze_conversation", json={"arguments": {
            "user_id": user, "conversation_id": conversation}}),
        cog.get(f"/resource/context/{user}"),
        cog.get(f"/resource/conversation_analysis/{conversation}/summary", params={"user_id": user}),
    ]


def test_a_user_token_acts_for_its_user_only(plain: Services, alice: str) -> None:
    conversation = f"c-{uuid.uuid4().hex[:8]}"
    with plain.http("memory") as mesh_mem:  # bob's message, stored by the mesh
        bobs = mesh_mem.post("/tool/store_input", json={"arguments": {"user_id": "bob", "input_data": {
            "content": "bob's secret", "conversation_id": conversation}}}).json()["result"]
    with plain.http("memory", alice) as mem, plain.http("cognition", alice) as cog:
        own = mem.post("/tool/store_input", json={"arguments": {"user_id": "alice", "input_data": {
            "content": "alice's note on the order", "conversation_id": conversation}}})
        assert own.status_code == 200, own.text
        mine = own.json()["result"]
        ok = [
            mem.post("/tool/get_message", json={"arguments": {"user_id": "alice",
                                                              "message_id": mine["message_id"]}}),
            mem.post("/tool/update_message", json={"arguments": {
                "user_id": "alice", "message_id": mine["message_id"], "updates": {"metadata": {"k": 1}}}}),
            mem.get("/resource/history/alice"),
            mem.get("/resource/history/alice/limit/1", headers={"Accept": "text/event-stream"}),
            mem.get(f"/resource/conversation/{conversation}/user/alice"),
            *cognition_calls(cog, "alice", conversation, "order"),
        ]
        for answer in ok:
            assert answer.status_code == 200, (answer.request.url, answer.text)
        refused = [
            mem.post("/tool/store_input", json={"arguments": {"user_id": "bob", "input_data": {
                "content": "written as bob"}}}),
            mem.post("/tool/get_message", json={"arguments": {"user_id": "bob",
                                                              "message_id": bobs["message_id"]}}),
            mem.post("/tool/update_message", json={"arguments": {
                "user_id": "bob", "message_id": bobs["message_id"], "updates": {"content": "x"}}}),
            mem.post("/tool/delete_message", json={"arguments": {"user_id": "bob",
                                                                 "message_id": bobs["message_id"]}}),
            mem.get("/resource/history/bob"),
            mem.get("/resource/history/bob/limit/5", headers={"Accept": "text/event-stream"}),
            mem.get(f"/resource/conversation/{conversation}/user/bob"),
            mem.get(f"/resource/conversation/{conversation}"),
            *cognition_calls(cog, "bob", conversation, "secret"),
        ]
        for answer in refused:
            error = error_of(answer, 403, "forbidden")
            assert "bob's secret" not in answer.text, error
        # alice's own message by another user's id is still a plain 404 (nothing leaks)
        error_of(mem.post("/tool/get_message", json={"arguments": {
            "user_id": "alice", "message_id": bobs["message_id"]}}), 404, "message_not_found")
        deleted = mem.post("/tool/delete_message", json={"arguments": {
            "user_id": "alice", "message_id": mine["message_id"]}})
        assert deleted.status_code == 200
    with plain.http("memory") as mesh_mem:  # bob's message is untouched
        kept = mesh_mem.post("/tool/get_message", json={"arguments": {
            "user_id": "bob", "message_id": bobs["message_id"]}})
        assert kept.json()["result"]["content"] == "bob's secret"


def test_mcp_tools_and_resources_check_the_user_token(plain: Services, alice: str) -> None:
    async def scenario() -> tuple[Any, Any, Any, MCPError]:
        async with (create_mcp_http_client(headers={"Authorization": f"Bearer {alice}"}) as http,
                    streamable_http_client(plain.url("memory") + "/mcp", http_client=http) as (read, write),
                    ClientSession(read, write) as session):
            await session.initialize()
            data = {"content": "hi"}
            own = await session.call_tool("store_input", {"user_id": "alice", "input_data": data})
            other = await session.call_tool("store_input", {"user_id": "bob", "input_data": data})
            history = await session.read_resource("memory://history/alice")
            with pytest.raises(MCPError) as raised:
                await session.read_resource("memory://history/bob")
            return own, other, history, raised.value

    async def main() -> tuple[Any, Any, Any, MCPError]:
        return await asyncio.wait_for(scenario(), 30)

    own, other, history, refused = asyncio.run(main())
    assert not own.is_error, own
    assert other.is_error and other.structured_content["error"]["code"] == "forbidden"
    assert history.contents
    assert refused.data["status"] == 403 and refused.data["error"]["code"] == "forbidden"


# MCP: token and Origin --------------------------------------------------------------------
@pytest.mark.parametrize(("token", "origin", "status"), [
    (False, None, 401),
    (False, "http://evil.example", 401),  # the token is checked first
    (True, "http://evil.example", 403),
    (True, "http://localhost:5173", 200),
    (True, None, 200),
])
def test_mcp_needs_the_token_and_a_loopback_origin(plain: Services, token: bool, origin: str | None,
                                                   status: int) -> None:
    headers = {**MCP_HEADERS, **({"Origin": origin} if origin else {}), **(plain.auth if token else {})}
    answer = httpx.post(plain.url("memory") + "/mcp", json=INITIALIZE, headers=headers, timeout=10.0)
    assert answer.status_code == status, answer.text
    if status == 200:
        session = answer.headers["mcp-session-id"]
        ended = httpx.delete(plain.url("memory") + "/mcp", timeout=10.0,
                             headers={**plain.auth, "mcp-session-id": session})
        assert ended.status_code == 200


def test_mcp_accepts_a_configured_cors_origin(secure: Services) -> None:
    headers = {**MCP_HEADERS, **secure.auth}
    with secure.http("memory") as http:
        allowed = http.post("/mcp", json=INITIALIZE, headers={**headers, "Origin": ALLOWED_ORIGIN})
        assert allowed.status_code == 200, allowed.text
        http.delete("/mcp", headers={"mcp-session-id": allowed.headers["mcp-session-id"]})
        foreign = http.post("/mcp", json=INITIALIZE, headers={**headers, "Origin": "https://other.example"})
        assert foreign.status_code == 403


# 413 and paths ---------------------------------------------------------------------------
def test_a_body_over_the_configured_limit_is_413(secure: Services) -> None:
    with secure.http("memory") as mem, secure.http("cognition") as cog:
        for http, tool in ((mem, "store_input"), (cog, "get_context")):
            over = http.post(f"/tool/{tool}", json={"arguments": {"user_id": "u", "query": "x" * SMALL_BODY,
                                                                  "input_data": {"content": "x"}}})
            assert error_of(over, 413, "payload_too_large")["details"] == {"max_bytes": SMALL_BODY}
        fits = mem.post("/tool/store_input", json={"arguments": {"user_id": "u", "input_data": {
            "content": "y" * (SMALL_BODY - 200)}}})
        assert fits.status_code == 200, fits.text
    # without a token, the body is not even read: 401
    error_of(httpx.post(secure.url("memory") + "/tool/store_input", content=b"x" * (SMALL_BODY * 4),
                        verify=secure.verify), 401, "unauthorized")


@pytest.mark.parametrize(("raw_path", "status"), [
    ("/resource/history/..%2F..", 404),
    ("/resource/history/..%2F..%2Fmessage", 404),
    ("/resource/history/%2E%2E", 400),
    ("/resource/history/a%00b", 400),
    ("/resource/history/%2A", 400),
    ("/resource/history/a%3Fb", 400),
    ("/resource/history/a%5Bb%5D", 400),
    ("/resource/history/a%0D%0AKEYS%20%2A", 404),  # the route's pattern stops at a newline
    ("/resource/history/" + "x" * 129, 400),
    ("/resource/conversation/%2A/user/alice", 400),
    ("/resource/conversation/c/user/..%2F..%2Fhistory%2Fbob", 404),
    ("/resource/history/alice%2Flimit%2F0", 400),
])
def test_traversal_and_injection_never_reach_redis(plain: Services, raw_path: str, status: int) -> None:
    with plain.http("memory") as http:
        # a raw target: httpx would otherwise normalise or re-encode the path
        answer = http.get(httpx.URL(plain.url("memory")).copy_with(raw_path=raw_path.encode()))
        assert answer.status_code == status, answer.text
        assert answer.json()["error"]["code"] in ("invalid_argument", "unknown_resource", "not_found")


# CORS ------------------------------------------------------------------------------------
PREFLIGHT = {"Access-Control-Request-Method": "POST",
             "Access-Control-Request-Headers": "authorization, content-type"}


def test_cors_is_off_by_default(plain: Services) -> None:
    for origin in (ALLOWED_ORIGIN, "http://localhost:3000"):
        answer = httpx.options(plain.url("memory") + "/tool/store_input",
                               headers={**PREFLIGHT, "Origin": origin})
        assert "access-control-allow-origin" not in answer.headers
        with plain.http("memory") as http:
            simple = http.get("/resource/history/alice", headers={"Origin": origin})
            assert "access-control-allow-origin" not in simple.headers


def test_cors_allows_exactly_the_configured_origins(secure: Services) -> None:
    url = secure.url("memory") + "/tool/store_input"
    allowed = httpx.options(url, headers={**PREFLIGHT, "Origin": ALLOWED_ORIGIN}, verify=secure.verify)
    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == ALLOWED_ORIGIN
    assert "access-control-allow-credentials" not in allowed.headers
    assert "authorization" in allowed.headers["access-control-allow-headers"].lower()
    foreign = httpx.options(url, headers={**PREFLIGHT, "Origin": "https://evil.example"},
                            verify=secure.verify)
    assert "access-control-allow-origin" not in foreign.headers
    with secure.http("memory") as http:  # a real call from the page: readable by it
        answer = http.get("/resource/history/alice", headers={"Origin": ALLOWED_ORIGIN})
        assert answer.headers["access-control-allow-origin"] == ALLOWED_ORIGIN
    unauthenticated = httpx.get(secure.url("memory") + "/resource/history/alice",
                                headers={"Origin": ALLOWED_ORIGIN}, verify=secure.verify)
    assert unauthenticated.status_code == 401  # CORS lets the page read the 401, not the data
    assert unauthenticated.headers["access-control-allow-origin"] == ALLOWED_ORIGIN


# TLS -------------------------------------------------------------------------------------
def test_tls_end_to_end(secure: Services) -> None:
    assert secure.url("memory").startswith("https://")
    user = f"t-{uuid.uuid4().hex[:8]}"
    # the network client as agents make it: https, the CA from services.tls_ca, the token
    with ServiceClient.from_mesh(secure.mesh, "memory") as memory, \
            ServiceClient.from_mesh(secure.mesh, "cognition") as cognition:
        memory.call_tool("store_input", {"user_id": user, "input_data": {"content": "over tls"}})
        assert [event for event, _ in memory.stream_resource(f"history/{user}")] == ["message", "end"]
        assert memory.health()["status"] == "healthy"
        # cognition reads memory over https too (its own client, the same CA and token)
        assert len(cognition.call_tool("get_context", {"user_id": user})["items"]) == 1
        assert cognition.health()["status"] == "healthy"

    async def with_async_client() -> Any:
        async with AsyncServiceClient.from_mesh(secure.mesh, "memory") as client:
            return await client.call_tool("get_message", {"user_id": user, "message_id": "nope"})

    with pytest.raises(ServiceError) as raised:  # a 404 answered over TLS
        asyncio.run(with_async_client())
    assert getattr(raised.value, "status", None) == 404
    port = secure.mesh.config.services.memory.port
    with pytest.raises(httpx.TransportError):  # plain HTTP to the TLS port: no answer
        httpx.get(f"http://127.0.0.1:{port}/health", timeout=5.0)
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):  # without the CA
        httpx.get(f"https://127.0.0.1:{port}/health", timeout=5.0)
    info = [line for line in secure.logs["memory"].read_text().splitlines() if "serving on" in line]
    assert info and f"serving on https://127.0.0.1:{port}" in info[0]


# no token in logs or errors ---------------------------------------------------------------
def test_no_token_in_client_errors_or_logs(meshes: dict[str, Services], alice: str,
                                           caplog: pytest.LogCaptureFixture) -> None:
    plain, secure = meshes["plain"], meshes["secure"]
    wrong = "wrong-token-" + uuid.uuid4().hex
    caplog.set_level(logging.DEBUG)
    texts: list[str] = []
    with ServiceClient(plain.url("memory"), service="memory", token=wrong, retries=0) as client:
        with pytest.raises(ServiceAuthError) as refused:
            client.call_tool("store_input", {"user_id": "u", "input_data": {"content": "x"}})
        assert refused.value.status == 401
        texts += [str(refused.value), repr(refused.value), str(refused.value.details)]
    with ServiceClient(plain.url("memory"), service="memory", token=alice, retries=0) as client:
        with pytest.raises(ServiceAuthError) as forbidden:
            client.call_tool("get_message", {"user_id": "bob", "message_id": "m"})
        assert forbidden.value.status == 403
        texts += [str(forbidden.value), repr(forbidden.value)]
    dead = f"http://127.0.0.1:{free_port()}"
    with ServiceClient(dead, service="memory", token=plain.token, retries=1, backoff=0.01) as client:
        with pytest.raises(ServiceError) as unreachable:
            client.call_tool("store_input", {})
        texts += [str(unreachable.value), repr(unreachable.value.__cause__)]
    printed = agentmesh("token", "--user", "bad user", "--config", str(plain.mesh.config_file))
    assert printed.returncode == 2
    texts += [printed.stdout, printed.stderr,
              agentmesh("token", "--help").stdout, agentmesh("memory", "--help").stdout]
    texts += [caplog.text, plain.log_text(), secure.log_text()]
    secrets = [wrong, alice, plain.token, secure.token, alice.rsplit(".", 1)[1]]
    for text in texts:
        for secret in secrets:
            assert secret not in text

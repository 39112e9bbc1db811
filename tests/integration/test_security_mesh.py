"""Issue 8 on a real embedded mesh (`agentmesh up`): the generated secrets, where they are
and are not, and what a local user or client without them meets.

One mesh for the module (starting one costs ~6 s). When the tests run as root they also
try everything as user `nobody`, as another local user would; otherwise they check the
file modes that stop such a user.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from agentmesh_cli import constants as C
from agentmesh_cli import events
from agentmesh_cli.credentials import SECRETS_FILE, load_credentials
from agentmesh_cli.environment import SECRETS as ENV
from agentmesh_cli.mesh import Mesh, load_mesh
from agentmesh_cli.store import Store
from agentmesh_cli.supervisor.render import valkey_secret_file
from agentmesh_cli.waiting import wait_until
from tests.helpers.commands import agentmesh
from tests.helpers.mesh import running_mesh, write_mesh
from tests.helpers.otheruser import AS_ROOT, as_nobody, python_for_nobody


@pytest.fixture(scope="module")
def mesh() -> Iterator[Mesh]:
    # a folder every local user may enter (pytest's own tmp folder is private), as a
    # shared project folder would be: the state folder inside must close itself
    root = Path(tempfile.mkdtemp(prefix="agentmesh-secure-"))
    root.chmod(0o755)
    config = write_mesh(root, ["Sales", "Inventory"])
    env_before = {name: os.environ.pop(name, None) for name in ENV.values()}
    try:
        with running_mesh(config, timeout=90) as running:
            yield running
    finally:
        for name, value in env_before.items():
            if value is not None:
                os.environ[name] = value
        shutil.rmtree(root, ignore_errors=True)


def secrets_of(mesh: Mesh) -> dict[str, str]:
    return json.loads((mesh.root / ".agentmesh" / SECRETS_FILE).read_text())


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def test_secrets_are_generated_private_and_distinct(mesh: Mesh) -> None:
    values = secrets_of(mesh)
    assert sorted(values) == ["mesh_key", "redis_password", "service_token"]
    assert all(len(v) >= 40 for v in values.values()) and len(set(values.values())) == 3
    state = mesh.root / ".agentmesh"
    assert mode(state) == 0o700
    assert mode(state / SECRETS_FILE) == 0o600
    assert mode(valkey_secret_file(mesh)) == 0o600
    assert stat.S_ISSOCK(mesh.socket.lstat().st_mode) and mode(mesh.socket) == 0o700
    # what a command run by hand reads is what the mesh runs with
    assert load_credentials(mesh.root, create=False, environ={}).service_token == values["service_token"]


def test_roles_get_the_secrets_from_supervisord_environment(mesh: Mesh) -> None:
    values = secrets_of(mesh)
    with_ = agentmesh("status", "--json", "--config", str(mesh.config_file))
    programs = {p["name"]: p["pid"] for p in json.loads(with_.stdout)["programs"]}
    environ = Path(f"/proc/{programs['agent-Sales']}/environ").read_bytes().split(b"\0")
    env = dict(item.decode().split("=", 1) for item in environ if b"=" in item)
    assert env[ENV["service_token"]] == values["service_token"]
    assert env[ENV["redis_password"]] == values["redis_password"]
    assert env[ENV["mesh_key"]] == values["mesh_key"]


def test_no_secret_in_rendered_configs_logs_status_or_help(mesh: Mesh) -> None:
    values = list(secrets_of(mesh).values())
    config = str(mesh.config_file)
    printed = [
        agentmesh("status", "--json", "--config", config).stdout,
        agentmesh("status", "--once", "--config", config).stdout,
        agentmesh("--help").stdout,
        agentmesh("up", "--help").stdout,
        agentmesh("status", "--help").stdout,
        agentmesh("logs", "--config", config).stdout,
    ]
    files = [p for folder in (mesh.supervisor_dir, mesh.logs_dir) for p in folder.rglob("*") if p.is_file()]
    assert any(p.suffix == ".ini" for p in files) and any(p.suffix == ".log" for p in files)
    for value in values:
        for path in files:
            assert value not in path.read_text(errors="replace"), path.name
        for text in printed:
            assert value not in text


def test_embedded_valkey_refuses_a_client_without_the_password(mesh: Mesh) -> None:
    port = mesh.config.redis.port
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(port=port, socket_timeout=2).ping()
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(port=port, password="not-the-password", socket_timeout=2).ping()
    client = redis.Redis(port=port, password=secrets_of(mesh)["redis_password"], socket_timeout=2)
    assert client.ping()
    client.close()


def test_a_wrong_password_is_a_clear_error_without_the_password(mesh: Mesh) -> None:
    wrong = "wrong-password-0123456789"
    result = subprocess.run([sys.executable, "-m", "agentmesh_cli", "status", "--once",
                             "--config", str(mesh.config_file)], capture_output=True, text=True,
                            timeout=60, env={**os.environ, ENV["redis_password"]: wrong})
    output = result.stdout + result.stderr
    assert "refused the mesh's password" in output
    assert wrong not in output


def test_memory_refuses_a_client_without_the_token(mesh: Mesh) -> None:
    url = f"http://127.0.0.1:{mesh.config.services.memory.port}"
    answer = httpx.post(f"{url}/tool/store_input", json={"arguments": {
        "user_id": "alice", "input_data": {"content": "hello"}}})
    assert answer.status_code == 401
    assert httpx.get(f"{url}/health").status_code == 200


def test_another_local_user_can_neither_read_secrets_nor_control_supervisord(mesh: Mesh) -> None:
    if not AS_ROOT:  # cannot become another user: check the modes that keep one out
        assert mode(mesh.root / ".agentmesh") == 0o700 and mode(mesh.socket) == 0o700
        return
    denied = as_nobody("cat", str(mesh.root / ".agentmesh" / SECRETS_FILE))
    assert denied.returncode != 0 and "Permission denied" in denied.stderr
    with python_for_nobody("supervisor") as (python, env):
        # the real supervisorctl, pointed at the mesh's socket (its config need not be readable)
        control = as_nobody(*python, "-m", "supervisor.supervisorctl", "-s", f"unix://{mesh.socket}",
                            "stop", "all", env=env)
        assert "Permission denied" in control.stdout + control.stderr, control.stdout + control.stderr
        # a raw RESP write (stdlib only, whatever that user may import)
        code = ("import socket, sys\n"
                "s = socket.create_connection(('127.0.0.1', int(sys.argv[1])), timeout=2)\n"
                "s.sendall(b'SET x 1\\r\\n')\n"
                "print(s.recv(200).decode())\n")
        write = as_nobody(*python, "-c", code, str(mesh.config.redis.port), env=env)
    assert write.stdout.startswith("-NOAUTH"), write.stdout + write.stderr
    # and the programs still run
    status = json.loads(agentmesh("status", "--json", "--config", str(mesh.config_file)).stdout)
    assert {p["state"] for p in status["programs"]} == {"RUNNING"}


# what a process without the mesh key writes: a proposal and a vote in a member's name, and
# a join of its own, each a well-formed envelope (made here with the mesh's own builders):
# only the signature lacks. The writer needs nothing but confluent-kafka.
FORGER = """
import base64, sys
from confluent_kafka import Producer
bootstrap, prefix = sys.argv[1:3]
producer = Producer({"bootstrap.servers": bootstrap, "allow.auto.create.topics": False})
for item in sys.argv[3:]:
    topic, key, value = item.split(":")
    producer.produce(f"{prefix}.{topic}", base64.b64decode(value), key=key)
print("unsent", producer.flush(10))
"""


def forged_records(pid: str) -> list[str]:
    records = [(C.TOPIC_PROPOSALS, pid, events.proposal("Sales", pid, "decision", {"pay": "me"})),
               (C.TOPIC_VOTES, pid, events.vote("Inventory", pid, True, 0.8)),
               (C.TOPIC_TOPOLOGY, "Mallory", events.presence(C.EVENT_JOINED, "Mallory", "x", ["voting"]))]
    return [f"{topic}:{key}:{base64.b64encode(envelope.encode()).decode()}"
            for topic, key, envelope in records]


def test_a_process_without_the_mesh_key_can_neither_propose_nor_vote_nor_join(mesh: Mesh) -> None:
    """The mesh signs by default: what another local user writes to the loopback broker
    (it has no authentication of its own) is refused and counted, and changes nothing."""
    assert mesh.config.security.sign_envelopes
    pid = "forged-1"
    args = ("-c", FORGER, mesh.config.kafka.bootstrap, mesh.config.kafka.topic_prefix, *forged_records(pid))
    if AS_ROOT:
        with python_for_nobody("confluent_kafka") as (python, env):
            forged = as_nobody(*python, *args, env=env)
    else:
        forged = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=30)
    assert forged.stdout.strip() == "unsent 0", forged.stdout + forged.stderr
    config = str(mesh.config_file)

    def refused() -> dict[str, Any] | None:
        signing = json.loads(agentmesh("status", "--json", "--config", config).stdout)["signing"]
        got = signing["refused"]
        done = (got.get("consensus-manager", {}).get("unsigned", 0) >= 2
                and got.get("topology-manager", {}).get("unsigned", 0) >= 1)
        return signing if done else None

    signing = wait_until(refused, 30, "the forged records refused")
    assert signing["on"] is True
    assert signing["refused"]["consensus-manager"] == {"unsigned": 2}
    assert signing["refused"]["topology-manager"] == {"unsigned": 1}
    store = Store(mesh.redis_url, mesh.config.mesh)
    try:
        assert store.proposal(pid) is None  # never opened, so nobody voted on it
        assert "Mallory" not in store.agents()
        assert "Mallory" not in (store.load_snapshot() or {}).get("graph", {}).get("agents", [])
    finally:
        store.close()


def test_the_state_folder_closes_itself_in_a_shared_folder(mesh: Mesh) -> None:
    again = load_mesh(mesh.config_file)
    assert mode(again.root) == 0o755 and mode(again.state_dir) == 0o700

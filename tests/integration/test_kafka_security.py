"""Kafka security settings (`kafka.client`, passed to librdkafka as is) against the real
embedded broker (Tansu 0.6.0): what works, what cannot, and that a mismatch fails within
seconds with a message naming the settings to check, never a hang or a bare timeout.

What Tansu 0.6.0 cannot do (docs/security.md, "Kafka"), pinned here so that an upgrade
that fixes it shows up as a failing test to revisit:
- SASL: with `--authentication` every request before a successful SASL exchange is
  refused, `tansu user create` included ("early eof"), so the first user cannot be made;
  users made before are lost with memory storage at the restart that turns it on, and
  the only other engine compiled in (s3://) does not keep them either.
- TLS: `--cert` and `--key` cannot be given together (a usage error), and either alone
  is ignored: the listener stays plaintext.

TLS on the client side is still tested for real, through a small TLS-terminating proxy
in front of the broker (what stunnel or a load balancer does in front of a broker).

Needs `check_broker` and the fast-failing `ensure_topics` of agentmesh_cli/bus.py
(issue 8).
"""

from __future__ import annotations

import datetime
import ipaddress
import socket
import ssl
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from agentmesh_cli import constants as C
from agentmesh_cli.broker import check_broker, ensure_topics
from agentmesh_cli.bus import Bus
from agentmesh_cli.config import KafkaConfig
from agentmesh_cli.embedded import free_port, stop
from agentmesh_cli.errors import BusError
from agentmesh_cli.reader import Reader, beginning
from agentmesh_cli.supervisor.render import broker_command, tansu_binary
from agentmesh_cli.waiting import wait_until

PASSWORD = "s3cret-" + uuid.uuid4().hex  # must never show in an error message
SCRAM = {"security.protocol": "SASL_PLAINTEXT", "sasl.mechanism": "SCRAM-SHA-512",
         "sasl.username": "agentmesh", "sasl.password": PASSWORD}
FAST_S = 3.0  # a refused client must know within this (librdkafka answers in ~50 ms)


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), 0.2).close()
        return True
    except OSError:
        return False


def _start(args: list[str], port: int, log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: _listening(port), 20, "the broker's port")
    except BaseException:
        stop(proc)
        raise
    return proc


@pytest.fixture(scope="module")
def auth_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The embedded broker with `--authentication`: it has no users and cannot get any."""
    port = free_port()
    proc = _start([*broker_command(port), "--authentication"], port,
                  tmp_path_factory.mktemp("auth-broker") / "tansu.log")
    try:
        yield f"127.0.0.1:{port}"
    finally:
        stop(proc)


def _kafka(bootstrap: str, **client: Any) -> KafkaConfig:
    return KafkaConfig(bootstrap_servers=bootstrap, topic_prefix=f"s{uuid.uuid4().hex[:8]}",
                       partitions=1, client=client)


def _refused(call: Any, *words: str) -> str:
    """Run `call`, which must raise BusError fast; return its message, checked for `words`
    and for the absence of the password."""
    started = time.monotonic()
    with pytest.raises(BusError) as caught:
        call()
    took = time.monotonic() - started
    message = str(caught.value)
    assert took < FAST_S, f"took {took:.1f}s: {message}"
    for word in words:
        assert word in message, message
    assert PASSWORD not in message
    return message


# --- the limitation, pinned ---------------------------------------------------------


def test_no_user_can_be_created_once_authentication_is_on(auth_broker: str) -> None:
    result = subprocess.run([tansu_binary(), "user", "create", "--broker", f"tcp://{auth_broker}",
                             "--mechanism", "scram512", "agentmesh", PASSWORD],
                            capture_output=True, text=True, timeout=20)
    assert result.returncode != 0
    assert "early eof" in result.stderr


def test_cert_and_key_cannot_be_given_together(tmp_path: Path) -> None:
    port = free_port()
    result = subprocess.run([*broker_command(port), "--cert", str(tmp_path / "c.pem"),
                             "--key", str(tmp_path / "k.pem")],
                            capture_output=True, text=True, timeout=20)
    assert result.returncode == 2
    assert "cannot be used with" in result.stderr


# --- SASL mismatches fail fast, naming the settings ----------------------------------


def test_unknown_credentials_are_refused_fast(auth_broker: str) -> None:
    kafka = _kafka(auth_broker, **SCRAM)
    message = _refused(lambda: check_broker(kafka), "authentication failed", "sasl.username",
                       "sasl.password")
    assert "unknown-user" in message  # the broker's own reason travels with ours
    _refused(lambda: ensure_topics(kafka), "authentication failed")


def test_plaintext_client_against_the_auth_broker_is_told_about_security_protocol(
        auth_broker: str) -> None:
    _refused(lambda: check_broker(_kafka(auth_broker)), "closed the connection",
             "security.protocol")


def test_sasl_settings_from_mesh_yaml_reach_the_client(external_mesh: Any) -> None:
    """kafka.client of mesh.yaml is what librdkafka uses: against the plain embedded
    broker the SASL mechanism written there is the one the broker turns down."""
    mesh = external_mesh(kafka={"client": SCRAM})
    message = _refused(lambda: ensure_topics(mesh.config.kafka), "authentication failed",
                       "sasl.mechanism")
    assert "SCRAM-SHA-512" in message


def test_tls_client_against_a_plaintext_broker_fails_instead_of_hanging(
        broker: str, tls_files: dict[str, Path]) -> None:
    # librdkafka waits for a TLS handshake the broker never starts: 30 s by default,
    # cut short by the check
    kafka = _kafka(broker, **{"security.protocol": "SSL", "ssl.ca.location": str(tls_files["ca"])})
    started = time.monotonic()
    with pytest.raises(BusError, match="no TLS handshake.*security.protocol"):
        check_broker(kafka, timeout=2.0)
    assert time.monotonic() - started < 2.5


def test_unreadable_ca_file_is_a_bus_error(broker: str, tmp_path: Path) -> None:
    kafka = _kafka(broker, **{"security.protocol": "SSL", "ssl.ca.location": str(tmp_path / "no.pem")})
    _refused(lambda: check_broker(kafka), "kafka.client", "ssl.ca.location")


# --- TLS through a TLS-terminating proxy ----------------------------------------------


def _certificate(subject: str, key: Any, issuer: x509.Name | None = None,
                 issuer_key: Any = None, server: bool = False) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    now = datetime.datetime.now(datetime.UTC)
    builder = (x509.CertificateBuilder().subject_name(name).issuer_name(issuer or name)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(days=1)))
    if server:
        builder = builder.add_extension(x509.SubjectAlternativeName(
            [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
    else:
        builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
    return builder.sign(issuer_key or key, hashes.SHA256())


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A throwaway CA, a broker certificate for 127.0.0.1 signed by it, and another CA."""
    folder = tmp_path_factory.mktemp("tls")
    ca_key, other_key, key = (ec.generate_private_key(ec.SECP256R1()) for _ in range(3))
    ca = _certificate("agentmesh test CA", ca_key)
    files = {"ca": folder / "ca.pem", "other_ca": folder / "other-ca.pem",
             "cert": folder / "broker.pem", "key": folder / "broker.key"}
    files["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    files["other_ca"].write_bytes(_certificate("someone else", other_key)
                                  .public_bytes(serialization.Encoding.PEM))
    files["cert"].write_bytes(_certificate("127.0.0.1", key, ca.subject, ca_key, server=True)
                              .public_bytes(serialization.Encoding.PEM))
    files["key"].write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                               serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
    return files


class TlsProxy:
    """Terminates TLS on `port` and forwards the bytes to a plaintext broker: the way to
    put TLS in front of a broker that cannot do it itself."""

    def __init__(self, port: int, upstream: int, cert: Path, key: Path) -> None:
        self.upstream = upstream
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(cert, key)
        self.listener = socket.create_server(("127.0.0.1", port))
        self.listener.settimeout(0.2)
        self.closing = threading.Event()
        self.sockets: list[socket.socket] = []
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while not self.closing.is_set():
            try:
                raw, _ = self.listener.accept()
            except (TimeoutError, OSError):
                continue
            threading.Thread(target=self._serve, args=(raw,), daemon=True).start()

    def _serve(self, raw: socket.socket) -> None:
        raw.settimeout(5)
        try:
            client = self.context.wrap_socket(raw, server_side=True)
            upstream = socket.create_connection(("127.0.0.1", self.upstream), 5)
        except (OSError, ssl.SSLError):
            raw.close()  # a client that does not speak TLS, or does not trust us
            return
        for sock in (client, upstream):
            sock.settimeout(None)
            self.sockets.append(sock)
        threading.Thread(target=self._pump, args=(upstream, client), daemon=True).start()
        self._pump(client, upstream)

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self.closing.set()
        self.thread.join(2)
        self.listener.close()
        for sock in self.sockets:
            sock.close()


@pytest.fixture(scope="module")
def tls_broker(tls_files: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
               ) -> Iterator[str]:
    """The embedded broker behind a TLS proxy; it advertises the proxy's address."""
    port, tls_port = free_port(), free_port()
    command = broker_command(port)
    command[command.index("--advertised-listener-url") + 1] = f"tcp://127.0.0.1:{tls_port}"
    proc = _start(command, port, tmp_path_factory.mktemp("tls-broker") / "tansu.log")
    proxy = None
    try:
        proxy = TlsProxy(tls_port, port, tls_files["cert"], tls_files["key"])
        yield f"127.0.0.1:{tls_port}"
    finally:
        if proxy is not None:
            proxy.close()
        stop(proc)


def test_tls_with_the_right_ca_produces_and_consumes(tls_broker: str,
                                                     tls_files: dict[str, Path]) -> None:
    """The mesh's own Bus and Reader, configured only through kafka.client."""
    kafka = _kafka(tls_broker, **{"security.protocol": "SSL", "ssl.ca.location": str(tls_files["ca"])})
    assert check_broker(kafka) < FAST_S
    ensure_topics(kafka)
    bus = Bus(kafka, "tls-writer")
    bus.produce_raw(C.TOPIC_DLQ, b"over TLS", partition=0)
    assert bus.flush(10) == 0 and bus.delivery_failures == 0
    reader = Reader(kafka, f"{kafka.topic_prefix}-reader", [(C.TOPIC_DLQ, 0, beginning())])
    try:
        values = wait_until(lambda: [r.value for r in reader.poll_batch(timeout=0.2)], 15,
                          "the record over TLS")
        assert values == [b"over TLS"]
    finally:
        reader.close()


def test_tls_with_another_ca_is_refused_fast(tls_broker: str, tls_files: dict[str, Path]) -> None:
    kafka = _kafka(tls_broker, **{"security.protocol": "SSL",
                                  "ssl.ca.location": str(tls_files["other_ca"])})
    _refused(lambda: check_broker(kafka), "TLS failed", "ssl.ca.location")


def test_plaintext_client_against_tls_is_told_about_security_protocol(tls_broker: str) -> None:
    # the proxy drops a client that does not speak TLS; librdkafka reports nothing but
    # its bootstrapping again, so only the deadline says it, with the hint
    _refused(lambda: check_broker(_kafka(tls_broker), timeout=1.0), "did not answer",
             "security.protocol")

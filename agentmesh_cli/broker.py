"""The broker as a whole: client settings, topics (created idempotently; a new Kafka epoch
when the broker lost them), and whether it answers, with a clear reason when it does not
(security settings, TLS, SASL). bus.py produces, reader.py consumes.
"""

from __future__ import annotations

import logging
import re
import time
from typing import TYPE_CHECKING, Any

from confluent_kafka import (
    KafkaError,
    KafkaException,
)
from confluent_kafka.admin import AdminClient, NewTopic

from agentmesh_cli import constants as C
from agentmesh_cli import environment
from agentmesh_cli.config import KafkaConfig
from agentmesh_cli.errors import BusError, WaitTimeout
from agentmesh_cli.waiting import Deadline, wait_until

if TYPE_CHECKING:  # the Kafka layer alone needs no redis-py (~0.1 s to import): `propose`
    from agentmesh_cli.store import Store

log = logging.getLogger(__name__)

def client_config(kafka: KafkaConfig, client_id: str) -> dict[str, Any]:
    # small records must not wait for Nagle's algorithm
    return {"bootstrap.servers": kafka.bootstrap, "client.id": client_id,
            "socket.nagle.disable": True, **environment.expand_all(kafka.client, "kafka.client")}


def admin_config(kafka: KafkaConfig, client_id: str) -> dict[str, Any]:
    # librdkafka prints its informational lines (level 6, e.g. "Purging 1 unserved events
    # from background queue" when a short-lived admin client ends) to stderr: not events
    return {"log_level": 5, **client_config(kafka, client_id)}


def topic_partitions(kafka: KafkaConfig, short: str) -> int:
    return 1 if short in C.SINGLE_PARTITION_TOPICS else kafka.partitions


def ensure_topics(kafka: KafkaConfig, timeout: float = 10.0) -> list[str]:
    """Create every mesh topic that does not exist yet; return the names created.

    The broker must answer a metadata request first (`check_broker`, at most
    CHECK_TIMEOUT_S): a client whose security settings do not fit the broker's fails
    here within a second or so, with a message naming the settings to check, instead
    of after the whole `timeout` with a bare timeout."""
    check_timeout = min(timeout, CHECK_TIMEOUT_S)
    admin, trouble = _checked_admin(kafka, "agentmesh-admin", check_timeout)
    _await_answer(admin, trouble, kafka, check_timeout)
    wanted = [
        NewTopic(f"{kafka.topic_prefix}.{short}", topic_partitions(kafka, short), 1)
        for short in C.ALL_TOPICS
    ]
    created: list[str] = []
    try:
        futures = admin.create_topics(wanted, operation_timeout=timeout, request_timeout=timeout)
    except KafkaException as exc:
        raise BusError(f"cannot create topics on {kafka.bootstrap}: {exc}") from exc
    for name, future in futures.items():
        try:
            future.result(timeout=timeout)
            created.append(name)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise BusError(f"cannot create topic {name} on {kafka.bootstrap}: {exc}") from exc
        except Exception as exc:  # a future that timed out raises concurrent.futures errors
            raise BusError(f"cannot create topic {name} on {kafka.bootstrap}: {exc!r}") from exc
    return created


def prepare_topics(kafka: KafkaConfig, store: Store) -> str:
    """Create the topics; return the broker epoch, a new one when the broker was empty.

    Kafka offsets stored in Redis (the topology snapshot) are only valid for the broker
    incarnation they were read from. Creating the topology topic means the broker had
    no mesh data (a fresh or restarted in-memory broker), so the epoch changes and
    older snapshots are not resumed from.

    Roles starting at once agree on one epoch (`Store.new_kafka_epoch` replaces only the
    one read before the topics were made). One that finds the topics the moment another
    made them may still read the old epoch: its BrokerWatch sees the new one and rewinds,
    as every running role does when the broker restarts.
    """
    seen = store.kafka_epoch()
    created = ensure_topics(kafka)
    if f"{kafka.topic_prefix}.{C.TOPIC_TOPOLOGY}" in created or seen is None:
        epoch = store.new_kafka_epoch(seen)
        if epoch != seen:
            log.info("broker had no mesh topics: Kafka epoch %s", epoch)
        return epoch
    return store.kafka_epoch() or seen


_quiet = logging.getLogger("agentmesh.bus.probe")
_quiet.addHandler(logging.NullHandler())
_quiet.propagate = False


class BrokerProbe:
    """Metadata requests over one admin client, made at the first and kept: the live
    `status` asks every frame, and a new client (its threads, its connection) costs more
    than the request.

    The client reconnects after 1 ms, not librdkafka's 100 ms (`reconnect.backoff.ms`,
    unless kafka.client sets it): a new client's first answer came ~50 ms late, half the
    backoff (2-3 ms with it at 1 ms, on the embedded broker), and that was most of what
    `status` and `up`'s gates reported as the broker's latency."""

    def __init__(self, kafka: KafkaConfig) -> None:
        self.kafka = kafka
        self._admin: AdminClient | None = None

    def latency(self, timeout: float) -> float | None:
        """Seconds the broker took to answer a metadata request; None when it did not."""
        if self._admin is None:
            # librdkafka would print every refused connection to stderr: for a probe (readiness
            # gates, status's live screen) an unreachable broker is the answer, not an event
            conf = admin_config(self.kafka, "agentmesh-probe")
            conf["logger"] = _quiet
            conf.setdefault("reconnect.backoff.ms", 1)
            self._admin = AdminClient(conf)
        started = time.monotonic()
        try:
            self._admin.list_topics(timeout=timeout)
        except KafkaException:
            return None
        return time.monotonic() - started


def broker_latency(kafka: KafkaConfig, timeout: float = 2.0) -> float | None:
    """Seconds the broker took to answer a metadata request (a new client's); None when it
    did not."""
    return BrokerProbe(kafka).latency(timeout)


def broker_reachable(kafka: KafkaConfig, timeout: float = 2.0) -> bool:
    """True when the broker answers a metadata request."""
    return broker_latency(kafka, timeout) is not None


CHECK_TIMEOUT_S = 5.0  # how long `check_broker` (and `ensure_topics`) wait for a first answer
_CHECK_SLICE_S = 0.2  # a metadata request at most this long, then the error events are read
_SASL_SETTINGS = "kafka.client sasl.mechanism, sasl.username and sasl.password"
_CLOSED_AT_ONCE = re.compile(r"Disconnected.*\(after \d{1,3}ms in state UP\)")
_TLS_SETTINGS = ("kafka.client security.protocol and ssl.ca.location (ssl.certificate.location "
                 "and ssl.key.location when the broker wants a client certificate)")


class _Trouble(logging.Handler):
    """What librdkafka reported while a check waited: its error events (error_cb) and
    its warning log lines, the only place some causes are named (a peer that closes the
    connection, a TLS handshake that never completes)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.errors: list[KafkaError] = []
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if len(self.lines) < 50:  # librdkafka retries every 50-100 ms: the first ones say it
            # "FAIL [rdkafka#producer-1] [thrd:...]: host:port/bootstrap: what happened"
            self.lines.append(record.getMessage().split("]: ", 1)[-1])

    def on_error(self, err: KafkaError) -> None:
        if len(self.errors) < 50:
            self.errors.append(err)


def _checked_admin(kafka: KafkaConfig, client_id: str, timeout: float) -> tuple[AdminClient, _Trouble]:
    """An admin client whose errors and log lines are kept for `_await_answer`, not
    printed: a refused client would otherwise print a line per retry to stderr."""
    trouble = _Trouble()
    logger = logging.Logger(f"agentmesh.bus.{client_id}")  # not registered: one per client
    logger.addHandler(trouble)
    logger.propagate = False
    conf = admin_config(kafka, client_id)
    conf.update({"logger": logger, "error_cb": trouble.on_error})
    # a TLS client facing a broker that does not speak TLS waits for a handshake that
    # never comes: librdkafka gives up after this (default 30 s, 1 s at least), and says so
    conf.setdefault("socket.connection.setup.timeout.ms", max(1000, round(timeout * 500)))
    try:
        return AdminClient(conf), trouble
    except KafkaException as exc:  # e.g. an ssl.ca.location that cannot be read
        raise BusError(f"bad Kafka client settings (kafka.client): {exc.args[0].str()}") from exc


def _security_problem(kafka: KafkaConfig, trouble: _Trouble) -> str | None:
    """A sentence naming what is wrong, when librdkafka's reports point at security."""
    for err in trouble.errors:
        if err.code() == KafkaError._AUTHENTICATION:
            return f"authentication failed: check {_SASL_SETTINGS} ({err.str()})"
        if err.code() == KafkaError._SSL:
            return f"TLS failed: check {_TLS_SETTINGS} ({err.str()})"
    for line in trouble.lines:
        if "SSL_HANDSHAKE" in line:
            return (f"no TLS handshake with the broker (does its listener use TLS?): check "
                    f"{_TLS_SETTINGS} ({line})")
    # a broker that closes a fresh connection again and again (one restarting closes
    # it once, then refuses): it wants something the client does not do
    protocol = str(kafka.client.get("security.protocol", "plaintext")).lower()
    closed_at_once = [line for line in trouble.lines if _CLOSED_AT_ONCE.search(line)]
    if "sasl" not in protocol and len(closed_at_once) >= 2:
        return ("the broker closed the connection at once: it may require SASL or TLS; "
                f"check kafka.client security.protocol ({closed_at_once[0]})")
    return None


def _await_answer(admin: AdminClient, trouble: _Trouble, kafka: KafkaConfig, timeout: float) -> float:
    """Seconds until the broker answered a metadata request; BusError naming the problem
    as soon as librdkafka reports a security one, or when `timeout` passed."""
    started = time.monotonic()
    deadline = Deadline(timeout)

    def answered() -> float | None:
        try:
            admin.list_topics(timeout=max(0.001, min(_CHECK_SLICE_S, deadline.left())))
            return max(1e-9, time.monotonic() - started)
        except KafkaException:
            pass
        admin.poll(0)  # hands librdkafka's error events and log lines to `trouble`
        problem = _security_problem(kafka, trouble)
        if problem is not None:
            raise BusError(f"Kafka broker at {kafka.bootstrap}: {problem}")
        return None

    try:
        # no pause between the requests: each waits up to _CHECK_SLICE_S for its answer
        return wait_until(answered, deadline, "a metadata answer", interval=0)
    except WaitTimeout as exc:
        # some mismatches leave no trace above warning level (a TLS listener that
        # drops a plaintext client: librdkafka only bootstraps again and again)
        last = next((e.str() for e in reversed(trouble.errors)), "no error reported")
        raise BusError(f"Kafka broker at {kafka.bootstrap} did not answer within "
                       f"{timeout:g} s ({last}); if it is up, check that kafka.client "
                       f"security.protocol fits its listener") from exc


def check_broker(kafka: KafkaConfig, timeout: float = CHECK_TIMEOUT_S) -> float:
    """Seconds the broker took to answer a metadata request. Raises BusError naming the
    problem when it does not: "authentication failed: check kafka.client sasl..." as soon
    as the broker refuses the credentials (well under a second), a TLS or security.protocol
    hint when the broker closes the connection or never completes a TLS handshake, else
    no answer within `timeout`."""
    admin, trouble = _checked_admin(kafka, "agentmesh-check", timeout)
    return _await_answer(admin, trouble, kafka, timeout)

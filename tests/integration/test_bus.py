"""The Kafka layer on the real embedded broker: topics, inbox routing, commits, dead letters."""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any

from agentmesh_cli import constants as C
from agentmesh_cli.broker import ensure_topics, prepare_topics
from agentmesh_cli.bus import Bus
from agentmesh_cli.config import KafkaConfig
from agentmesh_cli.embedded import free_port, start_broker, stop
from agentmesh_cli.envelope import Envelope
from agentmesh_cli.reader import Reader, beginning
from agentmesh_cli.records import Record
from agentmesh_cli.signing import Signer, signing_key
from agentmesh_cli.store import Store


def kafka(broker: str, partitions: int = 4) -> KafkaConfig:
    return KafkaConfig(bootstrap_servers=broker, topic_prefix=f"b{uuid.uuid4().hex[:8]}",
                       partitions=partitions)


def read_all(cfg: KafkaConfig, topic: str, partition: int, want: int, group: str = "",
             tries: int = 100, signer: Signer | None = None) -> list[Record]:
    reader = Reader(cfg, group or f"reader-{uuid.uuid4().hex}", [(topic, partition, beginning())],
                    signer=signer)
    got: list[Record] = []
    try:
        for _ in range(tries):
            got += reader.poll_batch(timeout=0.1)
            if len(got) >= want:
                break
    finally:
        reader.close()
    return got


def test_topics_created_once(broker: str) -> None:
    cfg = kafka(broker)
    created = ensure_topics(cfg)
    assert sorted(created) == sorted(f"{cfg.topic_prefix}.{t}" for t in C.ALL_TOPICS)
    assert ensure_topics(cfg) == []  # idempotent


def test_roles_preparing_the_topics_at_once_agree_on_one_epoch(broker: str, valkey: str) -> None:
    """Every role prepares the topics as it starts: several at once on an empty broker make
    one epoch, not one each. A second epoch would make the others rewind and read their
    inboxes again (seen: replies handed over three times)."""
    cfg, mesh = kafka(broker), f"e{uuid.uuid4().hex[:8]}"
    stores = [Store(valkey, mesh) for _ in range(6)]
    start, got = threading.Barrier(len(stores)), []

    def prepare(store: Store) -> None:
        start.wait()
        got.append(prepare_topics(cfg, store))

    try:
        threads = [threading.Thread(target=prepare, args=(s,)) for s in stores]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert len(got) == len(stores) and len(set(got)) == 1, got
        assert got[0] == stores[0].kafka_epoch()
        # the broker without the mesh's topics again (restarted empty; here, the same mesh
        # on topics of a new prefix): a new epoch, then the same one
        assert prepare_topics(kafka(broker), stores[1]) not in (got[0], None)
        assert prepare_topics(cfg, stores[2]) == stores[0].kafka_epoch() != got[0]
    finally:
        for store in stores:
            store.close()


def test_message_lands_in_recipient_partition(broker: str) -> None:
    cfg = kafka(broker, partitions=8)
    ensure_topics(cfg)
    bus = Bus(cfg, "test")
    env = Envelope(type="hello", from_agent_id="A", to_agent_id="Inventory", payload={"n": 1})
    partition = bus.send_message(env)
    assert bus.flush() == 0 and bus.delivery_failures == 0
    assert partition == C.inbox_partition("Inventory", 8)
    records = read_all(cfg, C.TOPIC_MESSAGES, partition, 1)
    assert [Envelope.decode(r.value) for r in records] == [env]
    assert records[0].key == b"Inventory"


def test_held_sends_leave_in_order_on_release_and_count_in_their_generation(broker: str) -> None:
    cfg = kafka(broker, partitions=2)
    ensure_topics(cfg)
    bus = Bus(cfg, "test")
    sent = [Envelope(type="hello", from_agent_id="A", to_agent_id="Inventory", payload={"n": n})
            for n in range(3)]
    bus.hold()
    for env in sent:
        bus.send_message(env)
    generation = bus.close_generation()
    assert bus.holding and bus.sent_unconfirmed() == 0  # the closed generation holds them
    bus.poll()
    time.sleep(0.3)
    bus.poll()
    assert not bus.confirmed(generation)  # held: not produced, so not answered either
    bus.release()
    assert not bus.holding
    assert bus.flush() == 0 and bus.confirmed(generation) and bus.delivery_failures == 0
    partition = C.inbox_partition("Inventory", 2)
    assert [Envelope.decode(r.value) for r in read_all(cfg, C.TOPIC_MESSAGES, partition, 3)] == sent


def test_flush_releases_what_is_held(broker: str) -> None:
    cfg = kafka(broker, partitions=1)
    ensure_topics(cfg)
    bus = Bus(cfg, "test")
    bus.hold()
    env = Envelope(type="hello", from_agent_id="A", to_agent_id="B", payload={})
    bus.send_message(env)
    assert bus.flush() == 0 and not bus.holding
    assert [Envelope.decode(r.value) for r in read_all(cfg, C.TOPIC_MESSAGES, 0, 1)] == [env]


def test_commit_resumes_after_restart(broker: str) -> None:
    cfg = kafka(broker, partitions=1)
    ensure_topics(cfg)
    bus = Bus(cfg, "test")
    for i in range(5):
        bus.send_message(Envelope(type="n", from_agent_id="A", to_agent_id="B", payload={"i": i}))
    bus.flush()
    group = f"g-{uuid.uuid4().hex}"
    first = Reader(cfg, group, [(C.TOPIC_MESSAGES, 0, None)])
    got: list[Record] = []
    for _ in range(100):
        got += first.poll_batch(timeout=0.1)
        if len(got) >= 5:
            break
    first.commit({(C.TOPIC_MESSAGES, 0): got[2].offset + 1})  # handled the first three
    first.close()
    resumed = Reader(cfg, group, [(C.TOPIC_MESSAGES, 0, None)])
    rest: list[Record] = []
    for _ in range(100):
        rest += resumed.poll_batch(timeout=0.1)
        if len(rest) >= 2:
            break
    resumed.close()
    assert [Envelope.decode(r.value).payload["i"] for r in rest] == [3, 4]


def test_a_reader_started_at_an_offset_reads_from_there_without_gaps(broker: str) -> None:
    # A Reader expects its first record at the offset it was given: a later one would be a
    # batch not visible yet, read again (reader.Reader._seeds), an earlier one a reset.
    cfg = kafka(broker, partitions=1)
    ensure_topics(cfg)
    bus = Bus(cfg, "test")
    for i in range(6):
        bus.produce_raw(C.TOPIC_MESSAGES, str(i).encode(), partition=0)
        bus.flush()  # a batch each
    for start, values in ((2, [b"2", b"3", b"4", b"5"]), (beginning(), [str(i).encode() for i in range(6)])):
        reader = Reader(cfg, f"r-{uuid.uuid4().hex}", [(C.TOPIC_MESSAGES, 0, start)])
        got: list[Record] = []
        try:
            for _ in range(100):
                got += reader.poll_batch(timeout=0.1)
                if len(got) >= len(values):
                    break
        finally:
            reader.close()
        assert [r.value for r in got] == values, start
        assert (reader.gaps_reread, reader.gaps_accepted) == (0, 0)


def test_a_sleeping_reader_woken_for_nothing_sleeps_on_where_it_got_to(broker: str) -> None:
    # An idle probe (doze.py) wakes a sleeping reader, which finds nothing and sleeps again:
    # it goes on from where it got to, not from where it was told to start (the managers start
    # at their snapshot's offsets, an agent after a broker restart at the beginning: each wake
    # fetched everything since then again)
    cfg = kafka(broker, partitions=1)
    ensure_topics(cfg)
    bus = Bus(cfg, "test")
    for i in range(5):
        bus.produce_raw(C.TOPIC_MESSAGES, str(i).encode(), partition=0)
    bus.flush()
    reader = Reader(cfg, f"r-{uuid.uuid4().hex}", [(C.TOPIC_MESSAGES, 0, beginning())])
    try:
        got: list[Record] = []
        for _ in range(100):
            got += reader.poll_batch(timeout=0.1)
            if len(got) >= 5:
                break
        assert len(got) == 5 and reader.resumes_at == {}
        reader.sleep()
        assert reader.resumes_at == {(C.TOPIC_MESSAGES, 0): 5}
        reader.wake()  # the probe
        assert reader.poll_batch(timeout=0.2) == []
        reader.sleep()
        assert reader.resumes_at == {(C.TOPIC_MESSAGES, 0): 5}
        bus.produce_raw(C.TOPIC_MESSAGES, b"5", partition=0)
        bus.flush()
        reader.wake()  # the ring
        new: list[Record] = []
        for _ in range(100):
            new += reader.poll_batch(timeout=0.1)
            if new:
                break
        assert [(r.offset, r.value) for r in new] == [(5, b"5")]
    finally:
        reader.close()


def test_a_sleeping_reader_resumes_a_partition_never_read_at_an_offset_not_a_logical_start(
        broker: str) -> None:
    # An agent's inbox never written to starts at its committed offset (none: the log's start),
    # beside a partition read to its end. Woken with the logical start, the client fetched the
    # other partition first, and the broker held that fetch a whole fetch wait before the
    # inbox's first fetch went (the first message came 10 ms late). Asleep, both are offsets.
    cfg = kafka(broker, partitions=2)
    ensure_topics(cfg)
    bus = Bus(cfg, "test")
    for i in range(3):
        bus.produce_raw(C.TOPIC_MESSAGES, str(i).encode(), partition=0)
    bus.flush()
    group = f"r-{uuid.uuid4().hex}"
    committer = Reader(cfg, group, [(C.TOPIC_MESSAGES, 0, None), (C.TOPIC_MESSAGES, 1, None)])
    committer.commit({(C.TOPIC_MESSAGES, 0): 2})  # partition 0 committed at 2, partition 1 never
    committer.close()
    reader = Reader(cfg, group, [(C.TOPIC_MESSAGES, 0, None), (C.TOPIC_MESSAGES, 1, None)])
    try:
        reader.sleep()
        assert reader.resumes_at == {(C.TOPIC_MESSAGES, 0): 2, (C.TOPIC_MESSAGES, 1): 0}
        bus.produce_raw(C.TOPIC_MESSAGES, b"x", partition=1)
        bus.flush()
        reader.wake()
        got: list[Record] = []
        for _ in range(100):
            got += reader.poll_batch(timeout=0.1)
            if len(got) >= 2:
                break
        assert sorted((r.partition, r.offset) for r in got) == [(0, 2), (1, 0)]
        reader.sleep()  # read from both now: where it got to
        assert reader.resumes_at == {(C.TOPIC_MESSAGES, 0): 3, (C.TOPIC_MESSAGES, 1): 1}
    finally:
        reader.close()


def test_dead_letter_carries_reason_and_origin(broker: str) -> None:
    cfg = kafka(broker)
    ensure_topics(cfg)
    bus = Bus(cfg, "agent-X")
    bad = Record(C.TOPIC_MESSAGES, 2, 41, None, b"\x00garbage")
    bus.dead_letter(bad, "not JSON: nope")
    bus.flush()
    (record,) = read_all(cfg, C.TOPIC_DLQ, 0, 1)
    letter = Envelope.decode(record.value)
    payload: dict[str, Any] = letter.payload
    assert letter.type == C.EVENT_DEAD_LETTER and letter.from_agent_id == "agent-X"
    assert payload["reason"] == "not JSON: nope"
    assert payload["topic"] == f"{cfg.topic_prefix}.messages"
    assert (payload["partition"], payload["offset"], payload["size"]) == (2, 41, 8)
    assert payload["raw_base64"] == "AGdhcmJhZ2U="


def test_what_a_restarted_empty_broker_lost_is_sent_again(tmp_path: Any) -> None:
    """An in-memory broker restarts empty: the records it confirmed and nobody read are
    gone, and `replay` sends them again (same bytes, same ids) once the topics exist; signed
    again, with security.sign_envelopes."""
    port = free_port()
    # log_level 2: the broker going away is the point here, not news for the test output
    cfg = KafkaConfig(bootstrap_servers=f"127.0.0.1:{port}", topic_prefix="replay", partitions=4,
                      client={"log_level": 2})
    proc = start_broker(port)
    try:
        ensure_topics(cfg)
        signer = Signer(signing_key("replay key"))
        bus = Bus(cfg, client_id="test-replay", signer=signer)
        sent = [Envelope(type="m", from_agent_id="A", to_agent_id="B", payload={"i": i}) for i in range(5)]
        for envelope in sent:
            bus.send_message(envelope)
        assert bus.flush(10) == 0
        stop(proc)  # nobody read them
        proc = start_broker(port)
        ensure_topics(cfg)
        assert read_all(cfg, C.TOPIC_MESSAGES, C.inbox_partition("B", 4), want=1, tries=15) == []
        assert bus.replay() == 5
        assert bus.flush(10) == 0 and bus.delivery_failures == 0
        got = read_all(cfg, C.TOPIC_MESSAGES, C.inbox_partition("B", 4), want=5, signer=signer)
        assert [Envelope.decode(r.value).id for r in got] == [e.id for e in sent]
        assert [r.forged for r in got] == [None] * 5
        assert bus.replay() == 5  # what it confirmed again is kept for the next restart
    finally:
        stop(proc)


def test_a_reader_at_the_tail_gets_every_record_while_several_producers_write(broker: str) -> None:
    # The embedded broker can show a newer batch before an older one that another producer
    # appended at the same time; a reader that went past the older one would never see it
    # (reader.GAP_REREADS). Four producers flush small batches to the same partitions while a
    # Reader follows the tail: every record must arrive, once.
    cfg = kafka(broker, partitions=2)
    ensure_topics(cfg)
    producers, per_producer = 4, 20_000
    reader = Reader(cfg, f"tail-{uuid.uuid4().hex}",
                    [(C.TOPIC_MESSAGES, p, beginning()) for p in range(cfg.partitions)])

    def produce(me: int) -> None:
        bus = Bus(cfg, f"writer-{me}", linger_ms=5)
        for i in range(per_producer):
            bus.produce_raw(C.TOPIC_MESSAGES, f"{me}-{i}".encode(), partition=i % cfg.partitions)
            if i % 25 == 24:
                bus.flush()
        assert bus.flush() == 0

    got: list[bytes] = []
    writers = [threading.Thread(target=produce, args=(me,)) for me in range(producers)]
    try:
        for writer in writers:
            writer.start()
        # not a wait_until: it reads (and keeps) every record until all came or it is quiet
        deadline, quiet_since = time.monotonic() + 60, time.monotonic()
        while len(got) < producers * per_producer and time.monotonic() < deadline:
            batch = reader.poll_batch(max_records=1000, timeout=0.5)
            got += [r.value or b"" for r in batch]
            if batch or any(w.is_alive() for w in writers):
                quiet_since = time.monotonic()
            elif time.monotonic() - quiet_since > 3:
                break  # all written, and nothing more to read for a while
    finally:
        for writer in writers:
            writer.join()
        reader.close()
    assert len(got) == len(set(got)) == producers * per_producer, (
        f"{len(got)} read ({len(set(got))} distinct), {reader.gaps_reread} gaps read again")
    assert reader.gaps_accepted == 0

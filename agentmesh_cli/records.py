"""What the Kafka layer hands its readers, without the Kafka client: one consumed
`Record`, the `Offsets` a reader resumes from and their JSON form in snapshots.

Pure, so that the cores (topology state, consensus intake) take records and offsets
without importing confluent-kafka or the store (`bus.py` makes and reads them).
"""

from __future__ import annotations

from typing import Any, NamedTuple

RAW_PREVIEW_BYTES = 4096  # how much of a dead record travels with its dead letter

Offsets = dict[tuple[str, int], int]  # (short topic, partition) -> next offset to read


class Record(NamedTuple):
    """One consumed record; `topic` is the short name (messages, topology, ...).
    A NamedTuple, not a frozen dataclass: one is made per record read, and it is built
    about 2.5x faster (230 ns against 600). `forged`: why its signature does not verify
    (signing.UNSIGNED, signing.BAD_SIGNATURE), from a Reader that checks; None when it
    verifies or was not checked. `foreign`: keyed to another reader of a partition they
    share (Reader `only_keys`): neither verified nor to be decoded, only skipped."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    forged: str | None = None
    foreign: bool = False
    headers: Any = None  # the client's headers, kept only when asked (Reader keep_headers)


def offsets_to_json(offsets: Offsets) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for (topic, partition), offset in sorted(offsets.items()):
        out.setdefault(topic, {})[str(partition)] = offset
    return out


def offsets_from_json(data: dict[str, dict[str, Any]]) -> Offsets:
    return {(topic, int(p)): int(o) for topic, parts in data.items() for p, o in parts.items()}

"""`agentmesh tail`: look at a mesh topic (kcat cannot talk to the embedded broker)."""

from __future__ import annotations

import base64
import json
import time
import uuid
from typing import Annotated, Any

import typer

from agentmesh_cli import constants as C
from agentmesh_cli.cli import printer
from agentmesh_cli.cli.common import ConfigOption, mesh_from
from agentmesh_cli.errors import ConfigError, InvalidEnvelope

IDLE_EXIT_S = 1.0


def tail(
    topic: Annotated[str, typer.Argument(help=f"One of: {', '.join(C.ALL_TOPICS)}.")],
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing new records.")] = False,
    config: ConfigOption = None,
) -> None:
    """Print a topic's records from the beginning, one JSON line each, then exit (or follow).

    With security.sign_envelopes on, each line says whether the record's signature is
    "ok", "bad" or "none" (unsigned); every record is shown either way.

    Example: agentmesh tail dlq | jq .envelope.payload.reason
    """
    from agentmesh_cli.broker import topic_partitions
    from agentmesh_cli.envelope import Envelope
    from agentmesh_cli.reader import Reader, beginning
    from agentmesh_cli.signing import mesh_signer, signed_state

    if topic not in C.ALL_TOPICS:
        raise ConfigError(f"unknown topic {topic!r}: use one of {', '.join(C.ALL_TOPICS)}")
    mesh = mesh_from(config)
    kafka = mesh.config.kafka
    signer = mesh_signer(mesh)
    reader = Reader(kafka, f"agentmesh-tail-{uuid.uuid4().hex[:8]}",
                    [(topic, p, beginning()) for p in range(topic_partitions(kafka, topic))],
                    signer=signer)
    last_record = time.monotonic()
    count = 0
    try:
        while follow or time.monotonic() - last_record < IDLE_EXIT_S:
            for record in reader.poll_batch(timeout=0.2):
                last_record = time.monotonic()
                count += 1
                line: dict[str, Any] = {"partition": record.partition, "offset": record.offset}
                if signer is not None:
                    line["signed"] = signed_state(record.forged)
                try:
                    line["envelope"] = json.loads(Envelope.decode(record.value).encode())
                except InvalidEnvelope as exc:
                    line["invalid"] = str(exc)
                    line["raw_base64"] = base64.b64encode(record.value or b"").decode("ascii")
                printer.out(json.dumps(line, ensure_ascii=False))
    except KeyboardInterrupt:
        pass
    finally:
        reader.close()
    printer.say(f"{count} records from {mesh.topic(topic)}")


def register(app: typer.Typer) -> None:
    app.command()(tail)

"""mesh.yaml `gateway`: the body limit fits in a Kafka record (exact table)."""

from __future__ import annotations

from typing import Any

import pytest

from agentmesh_cli.config import ENVELOPE_ROOM, MIN_GATEWAY_BODY, parse_config
from agentmesh_cli.errors import ConfigError


@pytest.mark.parametrize(("kafka", "gateway", "limit"), [
    ({}, {}, 131_072),                                            # defaults: 256 KiB records
    ({"max_record_bytes": 16_384}, {}, 16_384 - ENVELOPE_ROOM),   # the default lowered to fit
    ({"max_record_bytes": 4_096}, {}, MIN_GATEWAY_BODY),          # ... never below this
    ({"max_record_bytes": 16_384}, {"max_body_bytes": 8_192}, 8_192),
    ({}, {"max_body_bytes": 262_144 - ENVELOPE_ROOM}, 262_144 - ENVELOPE_ROOM),
])
def test_the_gateway_body_limit(kafka: dict[str, Any], gateway: dict[str, Any], limit: int) -> None:
    config = parse_config({"mesh": "m", "kafka": kafka, "gateway": gateway})
    assert config.gateway.max_body_bytes == limit


def test_a_body_limit_set_over_the_record_limit_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"gateway.max_body_bytes \(20000\) must stay 4096 bytes below "
                                          r"kafka.max_record_bytes \(16384\): at most 12288"):
        parse_config({"mesh": "m", "kafka": {"max_record_bytes": 16_384},
                      "gateway": {"max_body_bytes": 20_000}})

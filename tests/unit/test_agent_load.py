"""An agent's load (its registry record) and asks (its counters), as status shows them: exact tables."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

from agentmesh_cli import constants as C
from agentmesh_cli.agent_load import asks, load
from agentmesh_cli.metrics.histogram import ASK_BUCKETS

LAG = {"p50": 0.12, "p99": 3.5, "max": 9}
NOTHING = {"concurrency": None, "in_flight": None, "running": None, "asks_pending": None,
           "loop_lag_ms": None}


@pytest.mark.parametrize(("record", "expected"), [
    ({"name": "A", "concurrency": 8, "in_flight": 3, "running": 2, "asks_pending": 1, "loop_lag_ms": LAG},
     {"concurrency": 8, "in_flight": 3, "running": 2, "asks_pending": 1,
      "loop_lag_ms": {"p50": 0.12, "p99": 3.5, "max": 9.0}}),
    (None, NOTHING),  # not in the registry
    ({"name": "A", "pid": 7, "last_heartbeat": 1}, NOTHING),  # an older runtime's record
    ({"concurrency": "8", "in_flight": -1, "running": True, "asks_pending": 0.5,
      "loop_lag_ms": {"p50": 1, "p99": None, "max": 2}}, NOTHING),  # not of our making
    ({"concurrency": 1, "in_flight": 0, "running": 0, "asks_pending": 0, "loop_lag_ms": [1, 2]},
     {**NOTHING, "concurrency": 1, "in_flight": 0, "running": 0, "asks_pending": 0}),
], ids=["published", "absent", "old-record", "malformed", "lag-malformed"])
def test_load_from_the_registry_record(record: dict[str, Any] | None, expected: dict[str, Any]) -> None:
    assert load(record) == expected


def test_asks_from_the_counters() -> None:
    counts: Counter[str] = Counter({C.COUNTER_ASKS: 7, C.COUNTER_ASK_TIMEOUTS: 1,
                                    C.COUNTER_ERROR_REPLIES: 2, C.COUNTER_LATE_REPLIES: 1,
                                    C.COUNTER_EXPIRED: 3, C.COUNTER_CACHED_REPLIES: 4,
                                    C.COUNTER_IN: 50})
    for ms in (0.5, 2, 2, 3, 7, 400):  # six replies (the timeout is in no bucket)
        ASK_BUCKETS.observe(counts, C.COUNTER_ASK_MS, ms)
    # p50: rank 3 of 6, the last of the 2 in (1, 2.5]; p99: rank 5.94 of 6, in (250, 500]
    assert asks(counts) == {"sent": 7, "timeouts": 1, "error_replies": 2, "late_replies": 1,
                            "expired_requests": 3, "cached_replies": 4, "p50_ms": 2.5, "p99_ms": 485.0}


def test_asks_of_an_agent_that_never_asked() -> None:
    assert asks({C.COUNTER_IN: 5}) == {"sent": 0, "timeouts": 0, "error_replies": 0, "late_replies": 0,
                                       "expired_requests": 0, "cached_replies": 0, "p50_ms": None,
                                       "p99_ms": None}

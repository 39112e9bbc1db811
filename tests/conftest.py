"""Settings every test shares. The session fixtures (the real broker and Valkey) are in
tests/integration/conftest.py; tests/unit/ starts no process at all."""

from __future__ import annotations

import os
import signal

import pytest

from agentmesh_cli import environment


def pytest_configure(config: pytest.Config) -> None:
    # a suite started in the background by a non-interactive shell (`make test &`, some CI
    # runners) inherits SIGINT ignored, and so would every command a test starts: Python
    # then installs no KeyboardInterrupt, and the tests of Ctrl+C (logs -f, chaos) could not
    # stop their command. A handler of our own is reset to the default in each child.
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    # pytest-xdist workers run side by side: each hands out loopback ports of its own lane
    # (embedded.free_port), and so do the commands it runs, which inherit the variable
    worker = getattr(config, "workerinput", None)
    if worker is not None:
        lane = int(str(worker["workerid"]).removeprefix("gw") or 0)
        os.environ[environment.PORT_LANE] = f"{lane}/{worker['workercount']}"


# The files that take longest, heaviest first (seconds of one worker, `make test`'s
# --durations on a 2-core machine, December 2026). The workers share the files
# (--dist loadfile): started first, the long ones do not end the run with one worker idle.
# A file not listed runs after these, integration before unit (`--no-loadscope-reorder`
# keeps this order; xdist's own puts the files with the most tests, the unit tables, first).
LONGEST_FIRST = (
    "test_chaos.py", "test_drain.py", "test_bench_routing.py", "test_scale.py",
    "test_chaos_readers.py", "test_recovery.py", "test_poison.py", "test_mesh_e2e.py",
    "test_inbox_host.py", "test_consensus.py", "test_gateway_crash.py", "test_multihost.py",
    "test_roles.py", "test_status_mesh.py", "test_autoscale.py", "test_bench_mesh.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    def weight(item: pytest.Item) -> tuple[int, int]:
        path = item.path
        if path.parent.name == "integration" and path.name in LONGEST_FIRST:
            return (0, LONGEST_FIRST.index(path.name))
        return (1 if path.parent.name == "integration" else 2, 0)

    items.sort(key=weight)  # stable: a file's tests keep their order

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

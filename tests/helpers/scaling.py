"""Work for a replica group `Pool` of a test mesh (tests/helpers/roles.py SlowReplica, each
job's id appended to handled/<replica>.ids): a feeder routing jobs to it as `agentmesh
send` does, and what was handled."""

from __future__ import annotations

import threading
import time
from collections import Counter

from agentmesh_cli import constants as C
from agentmesh_cli import events
from agentmesh_cli.mesh import Mesh
from agentmesh_cli.replicas import Groups
from agentmesh_cli.routing.dispatch import Dispatch
from agentmesh_cli.store import Store
from agentmesh_cli.supervisor.control import Supervisor
from agentmesh_cli.waiting import wait_until
from tests.helpers.mesh import mesh_bus


def handled(mesh: Mesh) -> Counter[str]:
    seen: Counter[str] = Counter()
    for path in (mesh.root / "handled").glob("*.ids"):
        seen.update(path.read_text().split())
    return seen


def all_handled(mesh: Mesh, ids: list[str], timeout: float = 60) -> Counter[str]:
    wanted = set(ids)
    wait_until(lambda: wanted <= set(handled(mesh)), timeout, f"{len(ids)} jobs handled")
    time.sleep(1.5)  # time passes on purpose: a job handled again would be written by now
    return Counter({i: n for i, n in handled(mesh).items() if i in wanted})


class Feeder(threading.Thread):
    """Jobs to the group `Pool`, routed as `agentmesh send` routes them, ~100 a second."""

    def __init__(self, mesh: Mesh, interval: float = 0.01) -> None:
        super().__init__(daemon=True)
        self.mesh = mesh
        self.interval = interval
        self.ids: list[str] = []
        self.to: Counter[str] = Counter()
        self.halt = threading.Event()

    def run(self) -> None:
        store = Store(self.mesh.redis_url, self.mesh.config.mesh)
        bus = mesh_bus(self.mesh, "test-scale")
        dispatch = Dispatch(self.mesh.config, Groups(store), C.CLI_COUNTER_OWNER, time.monotonic)
        counted: Counter[str] = Counter()

        def count() -> None:  # as agents count what they send: about once a second
            assert bus.flush(30) == 0
            store.add_counters(C.CLI_COUNTER_OWNER, Counter(
                {C.sent_to_counter(t): n - counted[t] for t, n in self.to.items() if n > counted[t]}))
            counted.update(self.to - counted)

        try:
            next_count = time.monotonic() + 0.5
            while not self.halt.is_set():
                target = dispatch.target("Pool", None)
                envelope = events.message(C.CLI_COUNTER_OWNER, target, "job", {})
                bus.send_message(envelope)
                bus.poll()
                self.ids.append(envelope.id)
                self.to[target] += 1
                if time.monotonic() >= next_count:
                    count()
                    next_count = time.monotonic() + 0.5
                time.sleep(self.interval)
            count()
        finally:
            store.close()


def programs(mesh: Mesh) -> dict[str, str]:
    with Supervisor(mesh) as sup:
        return {p["name"]: p["statename"] for p in sup.processes() if p["name"].startswith("agent-")}

"""One `agentmesh scale` of a replica group in a thread of its own, for a chaos fault that
goes on while it runs (chaos/replicas.py): what `scale` said, with times, its result or
error, and when it started and ended."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from agentmesh_cli.errors import AgentMeshError
from agentmesh_cli.mesh import Mesh
from agentmesh_cli.scaling import Scaled, scale


class ScaleStep:
    """One `scale` of the group in a thread of its own, with what comes before and after."""

    def __init__(self, mesh: Mesh, group: str, count: int, drain_timeout: float, timeout: float,
                 before: Callable[[], None] = lambda: None, after: Callable[[], None] = lambda: None) -> None:
        self.mesh, self.group, self.count = mesh, group, count
        self.drain_timeout, self.timeout, self.before, self.after = drain_timeout, timeout, before, after
        self.lines: list[str] = []  # what `scale` said, each line with its time since the step started
        self.result: Scaled | None = None
        self.error = ""
        self.started = time.monotonic()
        self.ended: float | None = None
        self._thread = threading.Thread(target=self._run, name=f"chaos-scale-{count}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self.before()
            self.result = scale(self.mesh, self.group, self.count, self.drain_timeout, self.timeout,
                                self._say)
        except AgentMeshError as exc:
            self.error = str(exc)
        finally:
            self.after()
            self.ended = time.monotonic()

    def _say(self, line: str) -> None:
        self.lines.append(f"+{time.monotonic() - self.started:.1f}s {line}")

    @property
    def done(self) -> bool:
        return not self._thread.is_alive()

    @property
    def took(self) -> float | None:
        return None if self.ended is None else round(self.ended - self.started, 2)

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)

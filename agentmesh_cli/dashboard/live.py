"""The live dashboard: one status frame every `interval` on the terminal's alternate screen.

Rich's Live with `screen=True` redraws in place (no scrolling, no flicker) and gives the
screen back on exit; Ctrl+C ends the loop quietly.
"""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console
from rich.live import Live

from agentmesh_cli.dashboard.views import render_status
from agentmesh_cli.mesh import Mesh
from agentmesh_cli.status import StatusCollector


def watch(mesh: Mesh, console: Console, interval: float) -> dict[str, Any] | None:
    """Refresh until Ctrl+C; return the last frame's data (None if there was none)."""
    last: dict[str, Any] | None = None
    collector = StatusCollector(mesh)
    footer = f"every {interval:g}s, Ctrl+C to quit"
    try:
        with Live(console=console, screen=True, auto_refresh=False, redirect_stderr=False) as live:
            while True:
                started = time.monotonic()
                last = collector.collect()
                live.update(render_status(last, footer), refresh=True)
                time.sleep(max(0.0, interval - (time.monotonic() - started)))
    except KeyboardInterrupt:
        pass
    finally:
        collector.close()
    return last

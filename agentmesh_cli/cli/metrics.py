"""The `metrics` command: the Prometheus exporter that supervisord runs."""

from __future__ import annotations

from typing import Annotated

import typer

from agentmesh_cli import constants as C
from agentmesh_cli.cli.common import ConfigOption, mesh_from, role_logging


def metrics(
    config: ConfigOption = None,
    host: Annotated[str | None, typer.Option(
        help="Address to listen on (default: metrics.host of mesh.yaml, 127.0.0.1).",
        show_default=False)] = None,
    port: Annotated[int | None, typer.Option(
        min=1, max=65535, show_default=False,
        help=f"Port (default: metrics.port of mesh.yaml, {C.DEFAULT_METRICS_PORT}).")] = None,
) -> None:
    """Serve every role's counters and gauges for Prometheus at GET /metrics.

    It reads Redis and supervisord on each scrape: nothing is kept between scrapes.

    Example: agentmesh metrics --config mesh.yaml --port 9464   (then: curl -s localhost:9464/metrics)
    """
    from agentmesh_cli.metrics.exporter import serve

    mesh = mesh_from(config)
    role_logging(mesh, C.PROGRAM_METRICS)
    settings = mesh.config.metrics
    serve(mesh, host or settings.host, port or settings.port)


def register(app: typer.Typer) -> None:
    app.command()(metrics)

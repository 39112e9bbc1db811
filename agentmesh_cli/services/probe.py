"""Where the mesh's services are, and one GET to see that a server answers.

`status` asks each service's `GET /health` on every frame and `up` gates on it: one short
request each, for which the standard library's http.client serves. The services' client
(services/client.py: pooling, retries, a breaker, SSE) costs ~0.2 s to import with httpx,
more than a quick command's whole budget, so these lookups live here and it imports them.
"""

from __future__ import annotations

import http.client
import ssl
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import orjson

from agentmesh_cli import constants as C
from agentmesh_cli import environment
from agentmesh_cli.errors import ConfigError
from agentmesh_cli.mesh import Mesh

SERVICES: tuple[str, ...] = C.SERVICE_PROGRAMS  # a service is named like its program


def service_url(mesh: Mesh, service: str, environ: Mapping[str, str] | None = None) -> str:
    """Base URL of `service`: `<SERVICE>_SERVICE_URL` if set, else mesh.yaml's
    `services.<service>.host` with `<SERVICE>_SERVICE_PORT` or the configured port."""
    if service not in SERVICES:
        raise ConfigError(f"unknown service {service!r}: use one of {', '.join(SERVICES)}")
    url = environment.service_url(service, environ)
    if url:
        return _checked_url(url, environment.service_url_variable(service))
    configured = getattr(mesh.config.services, service)
    port = environment.service_port(service, environ) or configured.port
    host = configured.host
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"  # an IPv6 literal needs brackets in a URL
    return f"{mesh.config.services.scheme}://{host}:{port}"


def gateway_url(mesh: Mesh) -> str:
    """Base URL of the gateway (HTTPS with services.tls_cert, as the services)."""
    settings = mesh.config.gateway
    host = settings.host
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"  # a wildcard bind answers on loopback too
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"{mesh.config.services.scheme}://{host}:{settings.port}"


def tls_verify(mesh: Mesh) -> ssl.SSLContext | bool:
    """How clients of the mesh's services check their certificate: an SSL context trusting
    `services.tls_ca` when set, else True (the system's trust store; unused over http)."""
    ca = mesh.config.services.tls_ca
    if not ca:
        return True
    try:
        return ssl.create_default_context(cafile=ca)
    except (OSError, ssl.SSLError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ConfigError(f"services.tls_ca {ca!r} cannot be used: {reason}") from exc


def _checked_url(url: str, variable: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(f"{variable}={url!r} is not an http(s) URL like http://host:9000")
    return url.rstrip("/")


class Prober:
    """GET requests with a timeout, one connection each (a probe is rare: at most one per
    service a second). https URLs are checked against `verify` (tls_verify's answer), the
    context made on the first https request only."""

    def __init__(self, timeout: float, verify: ssl.SSLContext | bool = True) -> None:
        self.timeout = timeout
        self._context: ssl.SSLContext | None = verify if isinstance(verify, ssl.SSLContext) else None

    def _tls(self) -> ssl.SSLContext:
        if self._context is None:  # the system's trust store, as httpx's verify=True
            self._context = ssl.create_default_context()
        return self._context

    def get(self, url: str) -> tuple[int | None, bytes]:
        """(status, body) of GET `url`; (None, b"") when it cannot be reached in time."""
        parts = urlsplit(url)
        host, port = parts.hostname or "127.0.0.1", parts.port
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        connection = (http.client.HTTPSConnection(host, port, timeout=self.timeout, context=self._tls())
                      if parts.scheme == "https" else
                      http.client.HTTPConnection(host, port, timeout=self.timeout))
        try:
            connection.request("GET", path, headers={"Accept": "application/json"})
            response = connection.getresponse()
            return response.status, response.read()
        except (OSError, http.client.HTTPException):
            return None, b""
        finally:
            connection.close()

    def health(self, mesh: Mesh, service: str) -> tuple[int | None, float, dict[str, Any]]:
        """(HTTP status of the service's GET /health or None when unreachable, seconds the
        request took, the JSON body or {})."""
        started = time.monotonic()
        code, body = self.get(service_url(mesh, service) + "/health")
        took = time.monotonic() - started
        if code is None:
            return None, took, {}
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError:
            return code, took, {}
        return code, took, data if isinstance(data, dict) else {}

"""What a service's HTTP answers mean to its client (services/client.py): httpx errors and
error answers turned into the ServiceError tree, results and health bodies checked, SSE
event data parsed, tool and resource paths quoted.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import quote

import httpx
import orjson
from httpx_sse import SSEError

from agentmesh_cli.errors import (
    ServiceAuthError,
    ServiceBadRequestError,
    ServiceError,
    ServiceHTTPError,
    ServiceNotFoundError,
    ServiceProtocolError,
    ServiceTimeoutError,
    ServiceUnavailableError,
)

END_EVENT = "end"

_HTTP_ERRORS: dict[int, type[ServiceHTTPError]] = {
    400: ServiceBadRequestError,
    401: ServiceAuthError,
    403: ServiceAuthError,
    404: ServiceNotFoundError,
}


@contextmanager
def translated(service: str, what: str) -> Iterator[None]:
    """httpx errors of one request or stream -> the ServiceError tree."""
    try:
        yield
    except httpx.TimeoutException as exc:
        raise ServiceTimeoutError(f"{service}: {what}: timed out ({type(exc).__name__})",
                                  service) from exc
    except SSEError as exc:  # before TransportError, which httpx-sse derives it from
        raise ServiceProtocolError(f"{service}: {what}: {exc}", service) from exc
    except (httpx.UnsupportedProtocol, httpx.LocalProtocolError) as exc:
        # our request cannot be sent as it is: retrying or blaming the service would not help
        raise ServiceError(f"{service}: {what}: {exc}", service) from exc
    except httpx.TransportError as exc:
        raise ServiceUnavailableError(f"{service}: {what}: {exc or type(exc).__name__}",
                                      service) from exc
    except httpx.InvalidURL as exc:
        raise ServiceError(f"{service}: {what}: {exc}", service) from exc


def _error_fields(response: httpx.Response) -> tuple[str, str, Any]:
    """(code, message, details) of an error answer's `{"error": {...}}` body."""
    try:
        error = orjson.loads(response.content)["error"]
        return (str(error.get("code") or f"http_{response.status_code}"),
                str(error.get("message") or response.reason_phrase),
                error.get("details", {}))
    except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
        # not the services' error body (a proxy, a crash page): describe it by its status
        return f"http_{response.status_code}", response.reason_phrase or response.text[:200], {}


def answer_error(response: httpx.Response, service: str, what: str) -> ServiceError:
    return error_answer(service, what, response.status_code, *_error_fields(response))


def error_answer(service: str, what: str, status: int, code: str, message: str,
                 details: Any) -> ServiceError:
    """The ServiceError for a service's error answer (over HTTP, or in process: local.py)."""
    text = f"{service}: {what} -> {status} {code}: {message}"
    if status == 503:
        return ServiceUnavailableError(text, service, status=status, code=code, message=message,
                                       details=details)
    cls = _HTTP_ERRORS.get(status, ServiceHTTPError)
    return cls(text, service, status=status, code=code, message=message, details=details)


def check_answer(response: httpx.Response, service: str, what: str) -> httpx.Response:
    if not response.is_success:
        raise answer_error(response, service, what)
    return response


def check_stream(response: httpx.Response, service: str, what: str) -> None:
    """An opened stream is usable: 2xx and really an event stream (its body read if not)."""
    check_answer(response, service, what)
    content_type = response.headers.get("content-type", "")
    if "text/event-stream" not in content_type:
        raise ServiceProtocolError(f"{service}: {what}: expected an event stream, got "
                                   f"{content_type or 'no content type'!r}", service)


def result(response: httpx.Response, service: str, what: str) -> Any:
    try:
        return orjson.loads(response.content)["result"]
    except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
        raise ServiceProtocolError(f"{service}: {what}: the answer has no JSON 'result'",
                                   service) from exc


def health_body(response: httpx.Response, service: str, what: str) -> dict[str, Any]:
    """200 and 503 are both health answers (healthy, not healthy); anything else is an error."""
    if response.status_code not in (200, 503):
        raise answer_error(response, service, what)
    try:
        body = orjson.loads(response.content)
    except orjson.JSONDecodeError as exc:
        raise ServiceProtocolError(f"{service}: {what}: the answer is not JSON", service) from exc
    if not isinstance(body, dict):
        raise ServiceProtocolError(f"{service}: {what}: the answer is not a JSON object", service)
    body.setdefault("status", "healthy" if response.status_code == 200 else "unhealthy")
    return body


def event_data(data: str) -> Any:
    """An event's data as JSON, or the text itself when it is not JSON."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return data


def tool_path(name: str) -> str:
    return f"/tool/{quote(name, safe='')}"


def resource_path(path: str) -> str:
    return f"/resource/{quote(path.lstrip('/'), safe='/')}"

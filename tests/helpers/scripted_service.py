"""A scripted service for the client tests: the services' HTTP protocol with behaviours the
tests choose, and a count of every tool request it saw.

Run as `python tests/scripted_service.py PORT` (uvicorn on 127.0.0.1:PORT, one process).

    POST /tool/ok        200, echoes the arguments
    POST /tool/fail500   500 every time
    POST /tool/flaky     503 while failures are left (POST /control/flaky), then 200
    POST /tool/bad       400 with a JSON error body
    POST /tool/slow      sleeps `arguments.seconds` (default 2 s), then 200
    POST /tool/<other>   404
    GET  /resource/...   SSE: `count` items `delay` s apart (query), then `end`; `missing` is 404
    GET  /health         200 healthy, or 503 after POST /control/health {"healthy": false}
    GET  /control/hits   {"hits": {tool: requests}};  POST /control/reset  clears everything
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import uvicorn
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

HITS: Counter[str] = Counter()
STATE: dict[str, Any] = {"flaky_failures": 0, "healthy": True}


def error(status: int, code: str, message: str, details: dict[str, Any] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message, "details": details or {}}},
                        status_code=status)


async def tool(request: Request) -> JSONResponse:
    name = request.path_params["name"]
    HITS[name] += 1  # counted first: every request the server saw, whatever it answers
    arguments = (await request.json()).get("arguments", {})
    if name == "ok":
        return JSONResponse({"result": {"echo": arguments}})
    if name == "fail500":
        return error(500, "internal_error", "scripted failure")
    if name == "flaky":
        if STATE["flaky_failures"] > 0:
            STATE["flaky_failures"] -= 1
            return error(503, "unavailable", "scripted flake", {"left": STATE["flaky_failures"]})
        return JSONResponse({"result": "recovered"})
    if name == "bad":
        return error(400, "invalid_argument", "argument 'x' is required", {"argument": "x"})
    if name == "slow":
        await asyncio.sleep(float(arguments.get("seconds", 2.0)))
        return JSONResponse({"result": "slept"})
    return error(404, "not_found", f"no tool {name!r}", {"tool": name})


async def resource(request: Request) -> Any:
    path = request.path_params["path"]
    if path == "missing":
        return error(404, "not_found", f"no resource {path!r}", {"path": path})
    count = int(request.query_params.get("count", "3"))
    delay = float(request.query_params.get("delay", "0.05"))

    async def events() -> AsyncIterator[ServerSentEvent]:
        for index in range(count):
            if index:
                await asyncio.sleep(delay)
            item = {"i": index, "sent_at": time.time(), "path": path}
            yield ServerSentEvent(event="message", data=json.dumps(item))
        yield ServerSentEvent(event="end", data=json.dumps({"count": count}))

    return EventSourceResponse(events())


async def health(request: Request) -> JSONResponse:
    if STATE["healthy"]:
        return JSONResponse({"status": "healthy"})
    return JSONResponse({"status": "unhealthy", "details": {"redis": "scripted outage"}},
                        status_code=503)


async def hits(request: Request) -> JSONResponse:
    return JSONResponse({"hits": dict(HITS)})


async def reset(request: Request) -> JSONResponse:
    HITS.clear()
    STATE.update(flaky_failures=0, healthy=True)
    return JSONResponse({"ok": True})


async def set_flaky(request: Request) -> JSONResponse:
    STATE["flaky_failures"] = int((await request.json())["failures"])
    return JSONResponse({"ok": True})


async def set_health(request: Request) -> JSONResponse:
    STATE["healthy"] = bool((await request.json())["healthy"])
    return JSONResponse({"ok": True})


app = Starlette(routes=[
    Route("/tool/{name}", tool, methods=["POST"]),
    Route("/resource/{path:path}", resource, methods=["GET"]),
    Route("/health", health, methods=["GET"]),
    Route("/control/hits", hits, methods=["GET"]),
    Route("/control/reset", reset, methods=["POST"]),
    Route("/control/flaky", set_flaky, methods=["POST"]),
    Route("/control/health", set_health, methods=["POST"]),
])


if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning",
                access_log=False, timeout_graceful_shutdown=1)

"""A scripted OpenAI-compatible Chat Completions server: it plays the completions a script
lists (llm/script.py, the format in docs/llm.md), so the llm role's tests and benchmarks run
the real `openai` SDK over a real socket, with no network and no model.

    python -m agentmesh_cli.llm.scripted --script PATH [--host 127.0.0.1] [--port 0] [--api-key KEY]

It prints `listening on http://HOST:PORT/v1` (the port chosen when --port is 0) once it
accepts connections, and exits with 0 on SIGTERM.

    POST   /v1/chat/completions   the scripted answer: JSON, or SSE with "stream": true
    GET    /v1/models             the script's model
    GET    /_requests             every chat request received, oldest first, and its answer
    DELETE /_requests             forget them, and reset the `times` counters
    PUT    /_script               replace the script (JSON; 400 naming the key if it is bad)

It is the benchmarks' floor (an SDK call against it is the baseline), so it does little per
request: no request log, uvloop and httptools, orjson.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import signal
import socket
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from types import FrameType
from typing import Any

import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from agentmesh_cli.errors import AgentMeshError, ConfigError
from agentmesh_cli.llm.script import LISTENING, Script, build_answer, choose, load_script, parse_script
from agentmesh_cli.llm.scripted_wire import (
    ErrorReply,
    StreamPlan,
    completion,
    error_reply,
    models_list,
    no_scenario,
    parse_request,
    requested_model,
    scripted_error,
    stream_plan,
    unauthorized,
    wants_stream,
    wants_usage,
)
from agentmesh_cli.services.http import bind

SHUTDOWN_GRACE_S = 1  # a stalled stream never ends by itself: SIGTERM cuts it after this


class ScriptedLlmServer:
    """The server's state: the script, how many requests reached each step (for an error's
    `times`), and the record of every chat request."""

    def __init__(self, script: Script, api_key: str | None = None) -> None:
        self.script = script
        self.authorization = f"Bearer {api_key}" if api_key else None
        self.reached: Counter[tuple[int, int]] = Counter()
        self.records: list[dict[str, Any]] = []
        self.serial = itertools.count(1)

    def app(self) -> Starlette:
        return Starlette(routes=[
            Route("/v1/chat/completions", self.chat, methods=["POST"]),
            Route("/v1/models", self.models, methods=["GET"]),
            Route("/_requests", self.requests, methods=["GET"]),
            Route("/_requests", self.forget, methods=["DELETE"]),
            Route("/_script", self.replace_script, methods=["PUT"]),
        ])

    async def chat(self, request: Request) -> Response:
        body, problem = parse_request(await request.body())
        authorization = request.headers.get("authorization")
        record: dict[str, Any] = {"body": body, "authorization": authorization is not None,
                                  "scenario": None, "step": None, "status": 200}
        self.records.append(record)
        if self.authorization is not None and authorization != self.authorization:
            return _answer_error(record, unauthorized())
        if problem is not None:
            return _answer_error(record, problem)
        messages = body["messages"]
        choice = choose(self.script, messages)
        if choice is None:
            return _answer_error(record, no_scenario(messages))
        record["scenario"], record["step"] = choice.scenario.name, choice.step_index
        key = (choice.scenario_index, choice.step_index)
        self.reached[key] += 1
        failure = scripted_error(choice.step, self.reached[key])
        if failure is not None:
            record["status"] = failure.status
        if choice.step.delay:
            await asyncio.sleep(choice.step.delay)  # before any byte: a client's timeout runs out
        if failure is not None:
            return _error_response(failure)
        answer = build_answer(choice, messages)
        ids: dict[str, Any] = {"completion_id": f"chatcmpl-scripted-{next(self.serial)}",
                               "created": int(time.time()), "model": requested_model(body, self.script)}
        if not wants_stream(body):
            return _json(completion(answer, **ids))
        plan = stream_plan(answer, choice.step, include_usage=wants_usage(body), **ids)
        if plan.stall or choice.step.chunk_delay:
            return StreamingResponse(_paced(plan, choice.step.chunk_delay), media_type="text/event-stream",
                                     headers={"cache-control": "no-cache"})
        # nothing to wait between chunks: the whole stream in one write (the client parses
        # the same events; the server spends one send, not one per chunk)
        return Response(b"".join(_event(chunk) for chunk in plan.chunks) + DONE,
                        media_type="text/event-stream", headers={"cache-control": "no-cache"})

    async def models(self, request: Request) -> Response:
        return _json(models_list(self.script))

    async def requests(self, request: Request) -> Response:
        return _json(self.records)

    async def forget(self, request: Request) -> Response:
        self.records.clear()
        self.reached.clear()
        return _json({"ok": True})

    async def replace_script(self, request: Request) -> Response:
        try:
            data = orjson.loads(await request.body())
        except orjson.JSONDecodeError:
            return _error_response(error_reply(400, "the script is not JSON"))
        try:
            script = parse_script(data, "PUT /_script")
        except ConfigError as exc:
            return _error_response(error_reply(400, str(exc)))
        self.script = script
        self.reached.clear()
        return _json({"ok": True})


DONE = b"data: [DONE]\n\n"


def _event(chunk: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(chunk) + b"\n\n"


async def _paced(plan: StreamPlan, delay: float) -> AsyncIterator[bytes]:
    for index, chunk in enumerate(plan.chunks):
        if index and delay:
            await asyncio.sleep(delay)
        yield _event(chunk)
    if not plan.stall:
        yield DONE
        return
    # until the client hangs up: Starlette then cancels the stream (or SIGTERM does)
    await asyncio.Event().wait()


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(data), status_code=status, headers=headers, media_type="application/json")


def _error_response(reply: ErrorReply) -> Response:
    return _json(reply.body, reply.status, reply.headers)


def _answer_error(record: dict[str, Any], reply: ErrorReply) -> Response:
    record["status"] = reply.status
    return _error_response(reply)


# serving ------------------------------------------------------------------------------
class _AnnouncingServer(uvicorn.Server):
    """uvicorn's server, printing the address clients use once it accepts connections: the
    line a parent process waits for."""

    def __init__(self, config: uvicorn.Config, url: str) -> None:
        super().__init__(config)
        self.url = url

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started:
            print(f"{LISTENING}{self.url}", flush=True)


def serve(server: ScriptedLlmServer, host: str, port: int) -> None:
    """Serve until SIGTERM or SIGINT. `bind` makes a taken port a PortInUseError and sets
    TCP_NODELAY (without it, each streamed chunk can wait for the client's delayed ACK)."""
    sock = bind(host, port)
    shown = f"[{host}]" if ":" in host else host
    url = f"http://{shown}:{sock.getsockname()[1]}/v1"
    # loop and http "auto": uvloop and httptools, both dependencies
    config = uvicorn.Config(server.app(), log_config=None, log_level="warning", access_log=False,
                            lifespan="off", server_header=False,
                            timeout_graceful_shutdown=SHUTDOWN_GRACE_S)
    try:
        _AnnouncingServer(config, url).run(sockets=[sock])
    finally:
        sock.close()


def _exit_cleanly(signum: int, frame: FrameType | None) -> None:
    # uvicorn handles SIGTERM while it serves, then raises it again once stopped: this makes
    # that (and a SIGTERM before it serves) a plain exit with status 0
    raise SystemExit(0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m agentmesh_cli.llm.scripted",
                                     description="A scripted OpenAI-compatible Chat Completions server.")
    parser.add_argument("--script", required=True, type=Path, help="the script (YAML or JSON)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 (default): a free port, printed")
    parser.add_argument("--api-key", default=None, help="require Authorization: Bearer KEY")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _exit_cleanly)
    try:
        try:
            text = args.script.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot read the script {str(args.script)!r}: {exc.strerror or exc}") from exc
        serve(ScriptedLlmServer(load_script(text, str(args.script)), args.api_key), args.host, args.port)
    except AgentMeshError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())

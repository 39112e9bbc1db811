"""The lean load generator of `agentmesh bench services` against a scripted HTTP server:
only 200 answers with the expected body count as calls; everything else is an error."""

from __future__ import annotations

import asyncio
from typing import Any

from agentmesh_cli.bench import services
from agentmesh_cli.waiting import wait_until_async


def _answer(status: int, body: bytes) -> bytes:
    return (f"HTTP/1.1 {status} X\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\n\r\n").encode() + body


async def _serve(answers: list[bytes]) -> tuple[asyncio.Server, int, list[int]]:
    """A keep-alive server answering each request with the next of `answers`, in turn;
    `served` is [answers served, connections open]."""
    served = [0, 0]

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        served[1] += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next((int(line.split(b":")[1]) for line in head.lower().split(b"\r\n")
                               if line.startswith(b"content-length:")), 0)
                await reader.readexactly(length)
                answer = answers[served[0] % len(answers)]
                served[0] += 1
                # split the answer in two writes, so a partial read is parsed too
                writer.write(answer[:20])
                await writer.drain()
                writer.write(answer[20:])
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()
            served[1] -= 1

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1], served


def _load(answers: list[bytes], paced: bool, connections: int = 4,
          rate: int = 400) -> tuple[dict[str, Any], int, list[str]]:
    async def main() -> tuple[dict[str, Any], int, list[str]]:
        server, port, served = await _serve(answers)
        async with server:
            request = services.http_request(f"127.0.0.1:{port}", "POST", "/tool/x", {"arguments": {}})
            load = services.LeanLoad("127.0.0.1", port, [request], connections, "result")
            await load.open()
            try:
                result = await (load.run_paced(rate, 0.5) if paced else load.run_closed(0.3))
            finally:
                load.close()
                await wait_until_async(lambda: load.live == 0 and served[1] == 0, 5,
                                       "the connections closed on both sides", interval=0.005)
            return result, served[0], load.error_samples

    return asyncio.run(main())


def test_only_200_answers_with_a_result_count() -> None:
    ok, failed = _answer(200, b'{"result": 1}'), _answer(500, b'{"detail": "boom"}')
    for paced in (False, True):
        result, served, samples = _load([ok, ok, failed], paced)
        assert served > 10
        assert result["errors"] == served // 3  # every third answer was a 500
        assert any(sample.startswith("500") for sample in samples)
    result, served, _ = _load([ok], paced=True)
    assert (result["errors"], served) == (0, 200)


def test_calls_waiting_for_a_connection_are_counted_once() -> None:
    # one connection for 5000 calls/s: most calls wait in the backlog for the connection
    # (a call taken from it used to be counted twice, and the phase then waited for an
    # answer that never came until its 30 s deadline)
    ok = _answer(200, b'{"result": 1}')
    result, served, _ = _load([ok], paced=True, connections=1, rate=5000)
    assert (result["errors"], served) == (0, 2500)


def test_a_sampled_200_without_a_result_is_an_error() -> None:
    result, served, samples = _load([_answer(200, b'{"nothing": 1}')], paced=False)
    assert served >= services.SAMPLE_EVERY
    assert result["errors"] == served // services.SAMPLE_EVERY
    assert samples and "without 'result'" in samples[0]

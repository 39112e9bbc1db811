"""The scripted Chat Completions server (agentmesh_cli.llm.scripted) as tests run it: a real
process on a free loopback port, playing a script written from a dict.

    with ScriptedLlm({"scenarios": [{"steps": [{"text": "hi"}]}]}) as llm:
        client = OpenAI(base_url=llm.base_url, api_key="test")
        ...
        assert llm.requests()[0]["status"] == 200
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

from agentmesh_cli.llm.process import ScriptedServer, start_scripted


class ScriptedLlm:
    """Starts the server on enter (port 0, waiting for its `listening on` line), stops it by
    pid on exit. `.base_url` is what an OpenAI client takes; `.returncode` is set once it
    stopped (0 after a clean SIGTERM)."""

    def __init__(self, script: dict[str, Any], *, api_key: str | None = None,
                 start_timeout: float = 20.0) -> None:
        self.script = script
        self.api_key = api_key
        self.start_timeout = start_timeout
        self.base_url = ""
        self.returncode: int | None = None
        self._folder: tempfile.TemporaryDirectory[str] | None = None
        self._server: ScriptedServer | None = None
        self._http: httpx.Client | None = None

    @property
    def url(self) -> str:
        """The server's root (where /_requests and /_script are)."""
        return self.base_url.removesuffix("/v1")

    def __enter__(self) -> ScriptedLlm:
        self._folder = tempfile.TemporaryDirectory(prefix="scripted-llm-")
        try:
            self._server = start_scripted(self.script, Path(self._folder.name), self.start_timeout,
                                          api_key=self.api_key)
        except BaseException:
            self.close()
            raise
        self.base_url = self._server.base_url
        self._http = httpx.Client(base_url=self.url, timeout=10.0)
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()

    def stderr(self) -> str:
        if self._server is None:
            return ""
        return self._server.log.read_text(encoding="utf-8", errors="replace")

    def close(self) -> None:
        """Stop the server (TERM, then KILL if it does not go, by pid) and remove its files."""
        if self._http is not None:
            self._http.close()
            self._http = None
        if self._server is not None:
            self._server.stop()
            self.returncode = self._server.proc.returncode
            self._server = None
        if self._folder is not None:
            self._folder.cleanup()
            self._folder = None

    # the server's test endpoints --------------------------------------------------------
    @property
    def http(self) -> httpx.Client:
        """A plain HTTP client on the server's root, for what the SDK cannot send."""
        assert self._http is not None, "use ScriptedLlm as a context manager"
        return self._http

    def requests(self) -> list[dict[str, Any]]:
        """Every chat request the server received, oldest first (GET /_requests)."""
        response = self.http.get("/_requests")
        assert response.status_code == 200, response.text
        records: list[dict[str, Any]] = response.json()
        return records

    def reset(self) -> None:
        """Forget the requests and the `times` counters (DELETE /_requests)."""
        response = self.http.delete("/_requests")
        assert response.status_code == 200, response.text

    def set_script(self, script: dict[str, Any]) -> None:
        """Replace the script (PUT /_script); AssertionError with the server's reason if bad."""
        response = self.http.put("/_script", json=script)
        assert response.status_code == 200, response.text
        self.script = script

"""Fuzzing the mesh's HTTP services as real processes over real HTTP, from their own OpenAPI.

schemathesis (4.x) generates requests for every operation of the spec a service serves at
/openapi.json, valid (positive) and invalid (negative), and checks every answer: never a
5xx, a documented status, the documented content type, a body that fits the schema. The
tool names come from the service itself (an unknown tool's 404 lists them).

The spec's free-form `arguments` object and `{path}` cannot say what a tool or resource
accepts, so the generated arguments rarely get past the first check. A second pass
therefore mutates one valid call per tool and one valid path per resource (each part kept,
replaced by a generated value, or dropped; a key added) and sends them through the same
schemathesis cases and checks, to reach the handlers and Redis.

Resources are requested without `Accept: text/event-stream` unless said otherwise and
never with `?follow=true` and SSE together, so every answer ends; `?follow=true` without
SSE must answer JSON at once (checked explicitly).

Services are a table (FUZZED): adding one is one entry saying what it needs running first
and what a valid call looks like. schemathesis' own pytest integration
(`schemathesis.pytest.from_fixture`) is not used: 4.32.5 sets `request.node._nodeid`,
which pytest 9 no longer has.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from agentmesh_cli.embedded import free_port, stop
from agentmesh_cli.waiting import wait_until
from tests.helpers.services import AUTH, TOKEN

EXAMPLES = 100  # per operation and generation mode
MUTATIONS = 100  # per tool, and per resource answer type
REQUEST_TIMEOUT_S = 10.0  # a hung answer fails its case instead of hanging the run
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance]
FUZZ_SETTINGS = settings(deadline=None, database=None, suppress_health_check=list(HealthCheck))
OWNER, CONVERSATION = "fz-owner", "fz-conv"  # the seeded messages' user and conversation
MESSAGE = "<message>"  # in a call below: the id of one of the seeded messages


@dataclass(frozen=True)
class Fuzzed:
    """A service to fuzz: what must run before it, one valid call per tool, valid
    resource paths, extra words for its arguments and paths, and a resource that
    streams with ?follow=true."""

    needs: tuple[str, ...] = ()
    calls: Mapping[str, dict[str, Any]] = field(default_factory=dict)
    paths: tuple[str, ...] = ()
    words: tuple[str, ...] = ()
    follow: str = ""


MEMORY = Fuzzed(
    calls={
        "store_input": {"user_id": OWNER, "input_data": {
            "content": "hello", "conversation_id": CONVERSATION, "timestamp": "2024-01-02T03:04:05Z",
            "metadata": {"lang": "en", "tags": ["a", 1]}}},
        "get_message": {"user_id": OWNER, "message_id": MESSAGE},
        "update_message": {"user_id": OWNER, "message_id": MESSAGE,
                           "updates": {"content": "edited", "metadata": {"v": 2}}},
        "delete_message": {"user_id": OWNER, "message_id": MESSAGE},
    },
    paths=(f"history/{OWNER}", f"history/{OWNER}/limit/5", f"conversation/{CONVERSATION}",
           f"conversation/{CONVERSATION}/user/{OWNER}"),
    words=("user_id", "message_id", "input_data", "content", "conversation_id", "timestamp",
           "metadata", "updates", "history", "limit", "conversation", "user"),
    follow=f"history/{OWNER}",
)
COGNITION = Fuzzed(
    needs=("memory",),
    calls={
        "get_context": {"user_id": OWNER, "query": "seed", "limit": 5, "recency_weight": 0.5},
        "search_history": {"user_id": OWNER, "query": "seed message", "limit": 5,
                           "include_conversations": True},
        "analyze_conversation": {"user_id": OWNER, "conversation_id": CONVERSATION,
                                 "analysis_type": "sentiment"},
    },
    paths=(f"context/{OWNER}", f"conversation_analysis/{CONVERSATION}/summary"),
    words=("user_id", "query", "limit", "recency_weight", "include_conversations", "conversation_id",
           "analysis_type", "summary", "topics", "sentiment", "context", "conversation_analysis"),
)
FUZZED: dict[str, Fuzzed] = {"memory": MEMORY, "cognition": COGNITION}
ALL_SERVICES = ("memory", "cognition")  # every one gets a port in mesh.yaml


@dataclass
class Api:
    name: str
    url: str
    spec: Fuzzed
    schema: Any  # schemathesis' OpenApiSchema
    tools: list[str]
    message_ids: list[str]
    logs: list[Path]

    def log_tail(self) -> str:
        return "\n".join(f"--- {log.name}\n{log.read_text(errors='replace')[-4000:]}" for log in self.logs)


def _answers(url: str, proc: subprocess.Popen[bytes], log: Path) -> bool:
    if proc.poll() is not None:
        raise AssertionError(f"{log.stem} exited {proc.returncode}:\n{log.read_text(errors='replace')}")
    try:
        httpx.get(url + "/health", timeout=1.0)  # 200 or 503: it answers (no token needed)
    except httpx.TransportError:
        return False
    return True


def _tools(url: str) -> list[str]:
    """The service's tool names, as its 404 for an unknown tool lists them."""
    answer = httpx.post(f"{url}/tool/no-such-tool-{uuid.uuid4().hex[:6]}", json={"arguments": {}},
                        headers=AUTH)
    assert answer.status_code == 404, answer.text
    tools = answer.json()["error"]["details"].get("tools", [])
    assert isinstance(tools, list) and tools, answer.text
    return [str(tool) for tool in tools]


def _seed(memory_url: str) -> list[str]:
    """Messages of a known user and conversation, for generated calls to find, change and
    delete (every service reads them: memory holds them, cognition reads memory)."""
    ids = []
    with httpx.Client(base_url=memory_url, timeout=10.0, headers=AUTH) as http:
        for n in range(12):
            answer = http.post("/tool/store_input", json={"arguments": {"user_id": OWNER, "input_data": {
                "content": f"seed message {n}", "conversation_id": CONVERSATION, "metadata": {"n": n}}}})
            assert answer.status_code == 200, answer.text
            ids.append(answer.json()["result"]["message_id"])
    return ids


@pytest.fixture(scope="module", params=list(FUZZED))
def api(request: pytest.FixtureRequest, valkey: str,
        tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    """The service under test and what it needs, as `agentmesh <service>` processes."""
    name: str = request.param
    spec = FUZZED[name]
    folder = tmp_path_factory.mktemp(f"fuzz-{name}")
    urls = {service: f"http://127.0.0.1:{free_port()}" for service in ALL_SERVICES}
    config = folder / "mesh.yaml"
    config.write_text(yaml.safe_dump({
        "mesh": f"fz{uuid.uuid4().hex[:8]}", "redis": {"url": valkey}, "agents": [],
        "services": {service: {"port": int(url.rsplit(":", 1)[1])} for service, url in urls.items()},
    }), encoding="utf-8")
    env = {key: value for key, value in os.environ.items()
           if not key.endswith(("_SERVICE_PORT", "_SERVICE_URL"))}
    env["AGENTMESH_SERVICE_TOKEN"] = TOKEN
    procs: list[subprocess.Popen[bytes]] = []
    logs: list[Path] = []
    try:
        for service in (*spec.needs, name):
            logs.append(folder / f"{service}.log")
            with logs[-1].open("wb") as out:
                procs.append(subprocess.Popen(
                    [sys.executable, "-m", "agentmesh_cli", service, "--config", str(config)],
                    stdout=out, stderr=subprocess.STDOUT, env=env))
            wait_until(lambda: _answers(urls[service], procs[-1], logs[-1]), 30,  # noqa: B023
                     f"the {service} service")
        message_ids = _seed(urls["memory"])
        schema = schemathesis.openapi.from_url(urls[name] + "/openapi.json", timeout=10, headers=AUTH)
        yield Api(name, urls[name], spec, schema, _tools(urls[name]), message_ids, logs)
    finally:
        for proc in reversed(procs):
            stop(proc)


# -- running generated cases -----------------------------------------------------------------------

def _send(case: Any, api: Api, seen: Counter[int], checks: list[Any] = CHECKS) -> None:
    """One request and all CHECKS; a failed check becomes an AssertionError that
    Hypothesis shrinks and reports (schemathesis' message has a curl line to replay it).
    No shared session: a fresh connection per request, so that what one generated case
    does to a connection cannot change the next case's answer."""
    try:
        response = case.call_and_validate(base_url=api.url, headers=AUTH, checks=checks,
                                          timeout=REQUEST_TIMEOUT_S)
    except FailureGroup as exc:
        raise AssertionError(str(exc)) from None
    seen[response.status_code] += 1


def _fuzz(label: str, cases: st.SearchStrategy[Any], examples: int, api: Api,
          seen: Counter[int], failures: list[str], checks: list[Any] = CHECKS,
          explicit: tuple[Any, ...] = ()) -> None:
    """Send the `explicit` cases and `examples` generated ones; a failure (shrunk by
    Hypothesis) joins `failures`, so that one finding does not hide the others."""

    @settings(FUZZ_SETTINGS, max_examples=examples)
    @given(case=cases)
    def each(case: Any) -> None:
        _send(case, api, seen, checks)

    for case in explicit:
        each = example(case=case)(each)

    try:
        each()
    except AssertionError as exc:
        failures.append(f"{label}:\n{exc}")


def _report(api: Api, failures: list[str]) -> str:
    return "\n\n".join(failures) + "\n\nservice logs (tail):\n" + api.log_tail()


def _operations(api: Api) -> list[Any]:
    operations = [result.ok() for result in api.schema.get_all_operations()]  # unreadable: raises
    assert operations, "the spec has no operations"
    return operations


def _operation(api: Api, path: str) -> Any:
    return next(operation for operation in _operations(api) if operation.path == path)


def _has_inputs(operation: Any) -> bool:
    return bool(list(operation.iter_parameters())) or bool(operation.body)


# -- from the spec ---------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=str)
def test_no_request_generated_from_the_spec_gets_a_5xx(api: Api, mode: GenerationMode) -> None:
    failures: list[str] = []
    statuses: dict[str, Counter[int]] = {}
    for operation in _operations(api):
        if mode is GenerationMode.NEGATIVE and not _has_inputs(operation):
            continue  # nothing to make invalid (GET /health)
        cases = operation.as_strategy(generation_mode=mode)
        if operation.path == "/tool/{name}":  # any name (the spec allows it) and the real ones
            cases = st.one_of(cases, *(operation.as_strategy(generation_mode=mode,
                                                             path_parameters={"name": tool})
                                       for tool in api.tools))
        _fuzz(f"{operation.label} ({mode})", cases, EXAMPLES, api,
              statuses.setdefault(operation.label, Counter()), failures)
    assert not failures, _report(api, failures)
    tool_statuses = statuses.get("POST /tool/{name}", Counter())
    assert tool_statuses[400] > 0 and tool_statuses[404] > 0, statuses  # it reached the tools


# -- mutations of valid calls ----------------------------------------------------------------------

def _ids(api: Api) -> st.SearchStrategy[str]:
    known = [OWNER, CONVERSATION, *api.message_ids[:3], "u", "x" * 128, "x" * 129, "a/b", "a b", "",
             "..", "%2F", "ü", "-", "0", "1001"]
    return st.one_of(st.sampled_from(known), st.text(max_size=12))


def _values(api: Api) -> st.SearchStrategy[Any]:
    """JSON values, biased to ids, words and date-times, nested a few levels (far below
    the depth of test_deeply_nested_metadata_is_not_a_500)."""
    scalars = st.one_of(
        _ids(api), st.sampled_from(api.spec.words), st.none(), st.booleans(), st.integers(),
        st.integers(min_value=-(2**70), max_value=2**70),
        st.floats(allow_nan=False, allow_infinity=False),  # NaN is not JSON: the client refuses it
        st.datetimes().map(lambda moment: moment.isoformat()),
        st.sampled_from(["2024-01-02T03:04:05+14:00", "0001-01-01T00:00:00-23:59",
                         "9999-12-31T23:59:59.999999+23:59", "yesterday", "1e309", "-0"]),
    )
    keys = st.one_of(st.sampled_from(api.spec.words), st.text(max_size=6))
    return st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                        | st.dictionaries(keys, inner, max_size=4), max_leaves=12)


Place = tuple[str | int, ...]  # where in a JSON value: keys and indexes from the top
DROP = object()  # a part that a mutation removes


def _places(value: Any, at: Place = ()) -> list[Place]:
    """Every place in `value`, the whole first."""
    children: list[tuple[str | int, Any]] = []
    if isinstance(value, dict):
        children = list(value.items())
    elif isinstance(value, list):
        children = list(enumerate(value))
    return [at, *(place for key, child in children for place in _places(child, (*at, key)))]


def _changed(value: Any, at: Place, change: str, new: Any, key: str) -> Any:
    """A copy of `value` with one change at `at`: replace it by `new`, drop it, or (an
    object) add `key`: `new` to it."""
    if at:
        head, rest = at[0], at[1:]
        copy: Any = dict(value) if isinstance(value, dict) else list(value)
        child = _changed(value[head], rest, change, new, key)
        if child is DROP:
            del copy[head]
        else:
            copy[head] = child
        return copy
    if change == "drop":
        return DROP
    if change == "add" and isinstance(value, dict):
        return {**value, key: new}
    return new


def _resolved(value: Any, message_id: str) -> Any:
    """`value` with MESSAGE replaced by `message_id`."""
    if isinstance(value, dict):
        return {key: _resolved(child, message_id) for key, child in value.items()}
    if isinstance(value, list):
        return [_resolved(child, message_id) for child in value]
    return message_id if value == MESSAGE else value


def _mutated(valid: Any, api: Api) -> st.SearchStrategy[Any]:
    """`valid` as it is, or with one change at one place: replaced by any JSON value,
    dropped, or a key added. One change at a time gets past the other checks to the one
    that the change is about."""
    def apply(draw: tuple[str, Place | None, str, Any, str]) -> Any:
        message_id, at, change, new, key = draw
        call = _resolved(valid, message_id)
        if at is None:
            return call
        changed = _changed(call, at, change, new, key)
        return {} if changed is DROP else changed

    keys = st.one_of(st.sampled_from(api.spec.words), st.text(max_size=6))
    return st.tuples(st.sampled_from(api.message_ids), st.sampled_from([None, *_places(valid)]),
                     st.sampled_from(["replace", "drop", "add"]), _values(api), keys).map(apply)


def _paths(api: Api, path: str) -> st.SearchStrategy[str]:
    """`path` as it is, or with one segment replaced or dropped, or one appended."""
    segments = path.split("/")
    ids = _ids(api)  # mostly: an invalid id is the likeliest way to a 400 here
    other = st.one_of(ids, ids, ids, st.sampled_from(api.spec.words),
                      st.integers(min_value=-5, max_value=5000).map(str))

    def apply(draw: tuple[int | None, str, str]) -> str:
        at, change, new = draw
        parts = list(segments)
        if at is not None:
            if change == "drop":
                del parts[at]
            else:
                parts[at] = new
        return "/".join(parts + ([new] if change == "append" else []))

    return st.tuples(st.sampled_from([None, *range(len(segments))]),
                     st.sampled_from(["replace", "replace", "replace", "drop", "append"]), other).map(apply)


def _with_arguments(case: Any, arguments: Any) -> Any:
    case.body = {"arguments": arguments}
    return case


def _with_path(case: Any, path: str, accept: str, follows: bool) -> Any:
    case.path_parameters = {**case.path_parameters, "path": path}
    # an event stream must end (see the follow test); a service that cannot follow
    # refuses the parameter, so it gets none
    case.query = {"follow": "false"} if follows else {}
    case.headers = {**(case.headers or {}), "Accept": accept}
    return case


def test_mutated_tool_calls_never_get_a_5xx(api: Api) -> None:
    failures: list[str] = []
    statuses: dict[str, Counter[int]] = {}
    tool_op = _operation(api, "/tool/{name}")
    for tool in api.tools:
        valid = api.spec.calls.get(tool, {})
        cases = st.tuples(tool_op.as_strategy(path_parameters={"name": tool}, body={"arguments": {}}),
                          _mutated(valid, api))
        # the valid call as it is, and with its first argument made nonsense (a 400)
        known = [_resolved(valid, api.message_ids[-1])]
        if valid:
            known.append({**known[0], next(iter(valid)): [[]]})
        explicit = tuple(tool_op.Case(path_parameters={"name": tool}, body={"arguments": arguments})
                         for arguments in known)
        _fuzz(f"tool {tool}", cases.map(lambda pair: _with_arguments(*pair)), MUTATIONS, api,
              statuses.setdefault(tool, Counter()), failures, explicit=explicit)
    assert not failures, _report(api, failures)
    for tool in api.spec.calls:  # every tool with a valid call was reached both ways
        assert statuses[tool][200] > 0 and statuses[tool][400] > 0, statuses


@pytest.mark.parametrize("accept", ["application/json", "text/event-stream"])
def test_mutated_resource_paths_never_get_a_5xx(api: Api, accept: str) -> None:
    failures: list[str] = []
    seen: Counter[int] = Counter()
    paths = st.one_of(*(_paths(api, path) for path in api.spec.paths))
    resource_op = _operation(api, "/resource/{path}")
    cases = st.tuples(resource_op.as_strategy(), paths)
    # each valid path as it is, and with its last segment an invalid id (a 400)
    known = [*api.spec.paths, *(path.rsplit("/", 1)[0] + "/a b" for path in api.spec.paths)]
    follows = bool(api.spec.follow)
    explicit = tuple(_with_path(resource_op.Case(path_parameters={"path": path}), path, accept, follows)
                     for path in known)
    # schemathesis checks each event of a stream against the media type's schema (OpenAPI
    # 3.2's reading), while the spec (3.1) describes the whole stream as one string; the
    # events' shape is checked by the services' own tests instead
    checks = CHECKS if accept != "text/event-stream" else [
        check for check in CHECKS if check is not response_schema_conformance]
    mutated = cases.map(lambda pair: _with_path(*pair, accept=accept, follows=follows))
    _fuzz(f"GET /resource/{{path}} ({accept})", mutated, MUTATIONS, api, seen, failures, checks, explicit)
    assert not failures, _report(api, failures)
    assert seen[200] > 0 and seen[400] > 0 and seen[404] > 0, seen


# -- what a fuzzer must not trip over ----------------------------------------------------------------

@pytest.mark.parametrize("accept", [None, "*/*", "application/json"])
def test_follow_without_an_event_stream_answers_json_at_once(api: Api, accept: str | None) -> None:
    headers = {"Accept": accept} if accept else {}
    if not api.spec.follow:  # no resource to follow: the parameter is refused at once
        answer = httpx.get(f"{api.url}/resource/{api.spec.paths[0]}", params={"follow": "true"},
                           headers={**AUTH, **headers}, timeout=5.0)
        assert answer.status_code == 400 and answer.json()["error"]["details"]["argument"] == "follow"
        return
    started = time.monotonic()
    answer = httpx.get(f"{api.url}/resource/{api.spec.follow}", params={"follow": "true"},
                       headers={**AUTH, **headers}, timeout=5.0)
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("application/json")
    assert isinstance(answer.json()["items"], list)
    assert time.monotonic() - started < 5.0


def test_deeply_nested_json_arguments_are_a_400_not_a_500(api: Api) -> None:
    """A body may nest 1,024 levels (the JSON parser's limit) where the services' own
    encoder stops at 254: nested arguments are refused, naming the argument."""
    nested = '{"a":' * 300 + "1" + "}" * 300
    if api.name == "memory":
        body = '{"arguments":{"user_id":"u","input_data":{"content":"x","metadata":' + nested + "}}}"
        tool, argument = "store_input", "input_data.metadata"
    else:
        body = '{"arguments":{"user_id":"u","query":' + nested + "}}"
        tool, argument = "get_context", "query"
    answer = httpx.post(f"{api.url}/tool/{tool}", content=body,
                        headers={**AUTH, "Content-Type": "application/json"}, timeout=10.0)
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"]["details"]["argument"] == argument

"""Fuzzing the gateway from its own /openapi.json (schemathesis 4.x, as test_fuzz_services.py
fuzzes memory and cognition): a real `agentmesh gateway` and a real Inventory agent on the
session broker and Valkey. Valid (positive) and invalid (negative) requests for every
operation, each checked: a documented status, the documented content type, a body that
fits the schema, and no 5xx but the documented ones in their documented cases (504
`ask_timeout` and 502 `error_reply`, from an ask only; nothing here makes Redis or the
broker fail, and nothing sets the drain mark, so a 503 is a finding).

Asks stay fast by the mesh's settings, not by bending the generator: gateway.ask_timeout
is 0.2 s and max_ask_timeout 0.5 s, so a generated ask waits at most half a second (a
longer timeout is a 400). The agent names are generated (almost always unknown: a 404 at
once) and also `Inventory`, so that generated asks and messages reach a real agent;
Inventory answers only `check_stock`, so most of those asks are 504s. Three explicit asks
reach the 200, the 502 (Helper, tests/helpers/waiting_roles.py:Answerer, raises on
`fail`; it is never a generated name: its notes go to a file its payload names) and the
504.

The event stream never ends for a follower that may read it (a user token may also open
a conversation that does not exist yet), so GET /conversations/{id}/events is fuzzed on
one conversation of another user, with a user token: its answers end (404, or 400 for
what is invalid). The streams themselves are tested in test_gateway_events.py.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.core.failures import FailureGroup
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.helpers.gateway import WAITING_ROLES, RunningGateway, running_gateway, write_gateway_mesh

EXAMPLES = 40  # per operation and generation mode
REQUEST_TIMEOUT_S = 10.0  # a hung answer fails its case instead of hanging the run
FUZZ_SETTINGS = settings(deadline=None, database=None, suppress_health_check=list(HealthCheck))
ASK = "POST /agents/{name}/ask"
EVENTS = "GET /conversations/{conversation}/events"
DOCUMENTED_5XX = {(ASK, 504): "ask_timeout", (ASK, 502): "error_reply"}


def only_documented_5xx(ctx: Any, response: Any, case: Any) -> None:
    """A 5xx only where the spec says why: an ask's 504 and 502 (the agent's doing)."""
    if response.status_code < 500:
        return
    code = DOCUMENTED_5XX.get((case.operation.label, response.status_code))
    try:
        got = response.json()["error"]["code"]
    except (ValueError, KeyError, TypeError):
        got = None
    if code is None or got != code:
        raise AssertionError(f"{case.operation.label} answered {response.status_code} {got}: "
                             f"{response.text[:500]}")


CHECKS = [only_documented_5xx, status_code_conformance, content_type_conformance,
          response_schema_conformance]


@dataclass
class Api:
    gateway: RunningGateway
    schema: Any  # schemathesis' OpenApiSchema
    follower: str  # the events operation runs as this user ...
    theirs: str  # ... on this conversation of another user

    def headers(self, operation: Any) -> dict[str, str]:
        return self.gateway.headers(self.follower if operation.label == EVENTS else None)


@pytest.fixture(scope="module")
def api(broker: str, valkey: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    folder = tmp_path_factory.mktemp("gateway-fuzz")
    agents = [{"name": "Inventory", "role": "inventory"},
              {"name": "Helper", "role": f"{WAITING_ROLES}:Answerer"}]
    mesh = write_gateway_mesh(folder, broker, valkey, agents, ask_timeout=0.2, max_ask_timeout=0.5)
    with running_gateway(mesh, folder) as gateway:
        schema = schemathesis.openapi.from_url(gateway.url + "/openapi.json", timeout=10)
        owner = f"owner-{uuid.uuid4().hex}"
        theirs = httpx.post(gateway.url + "/conversations", headers=gateway.headers(owner), timeout=10)
        assert theirs.status_code == 201, theirs.text
        yield Api(gateway, schema, f"fuzz-{uuid.uuid4().hex}", theirs.json()["conversation"])


def _operations(api: Api) -> list[Any]:
    operations = [result.ok() for result in api.schema.get_all_operations()]  # unreadable: raises
    assert operations, "the spec has no operations"
    return operations


def _has_inputs(operation: Any) -> bool:
    return bool(list(operation.iter_parameters())) or bool(operation.body)


def _send(case: Any, api: Api, seen: Counter[int]) -> None:
    """One request on a fresh connection, and every check; a failed check becomes an
    AssertionError that Hypothesis shrinks (schemathesis' message has a curl line)."""
    try:
        response = case.call_and_validate(base_url=api.gateway.url, headers=api.headers(case.operation),
                                          checks=CHECKS, timeout=REQUEST_TIMEOUT_S)
    except FailureGroup as exc:
        raise AssertionError(str(exc)) from None
    seen[response.status_code] += 1


def _fuzz(label: str, cases: st.SearchStrategy[Any], api: Api, seen: Counter[int], failures: list[str],
          explicit: tuple[Any, ...] = ()) -> None:
    @settings(FUZZ_SETTINGS, max_examples=EXAMPLES)
    @given(case=cases)
    def each(case: Any) -> None:
        _send(case, api, seen)

    for case in explicit:
        each = example(case=case)(each)
    try:
        each()
    except AssertionError as exc:
        failures.append(f"{label}:\n{exc}")


def _explicit(operation: Any, mode: GenerationMode) -> tuple[Any, ...]:
    """For an ask, valid calls that reach each documented outcome of a real agent."""
    if operation.label != ASK or mode is not GenerationMode.POSITIVE:
        return ()
    inventory = {"name": "Inventory"}
    return (operation.Case(path_parameters=inventory, body={"type": "check_stock", "payload": {}}),  # 200
            operation.Case(path_parameters={"name": "Helper"}, body={"type": "fail"}),  # 502
            operation.Case(path_parameters=inventory, body={"type": "never_answered"}))  # 504


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=str)
def test_no_request_generated_from_the_spec_gets_an_undocumented_answer(api: Api,
                                                                        mode: GenerationMode) -> None:
    failures: list[str] = []
    statuses: dict[str, Counter[int]] = {}
    for operation in _operations(api):
        if mode is GenerationMode.NEGATIVE and not _has_inputs(operation):
            continue  # nothing to make invalid (GET /health, GET /agents)
        cases = operation.as_strategy(generation_mode=mode)
        if "{name}" in operation.path:  # any agent name (almost always unknown) and a real one
            cases = st.one_of(cases, operation.as_strategy(generation_mode=mode,
                                                           path_parameters={"name": "Inventory"}))
        if operation.label == EVENTS:  # answers that end (see the module's docstring)
            cases = operation.as_strategy(generation_mode=mode, path_parameters={"conversation": api.theirs})
        _fuzz(f"{operation.label} ({mode})", cases, api, statuses.setdefault(operation.label, Counter()),
              failures, _explicit(operation, mode))
    assert not failures, "\n\n".join(failures) + "\n\ngateway log (tail):\n" + api.gateway.log_text()[-4000:]
    if mode is GenerationMode.POSITIVE:  # the generated requests got past the checks to agents
        assert {200, 502, 504} <= set(statuses[ASK]) and 404 in statuses[ASK], statuses
        assert 202 in statuses["POST /agents/{name}/messages"], statuses
        assert 201 in statuses["POST /conversations"], statuses
    else:
        assert all(400 in statuses[label] for label in statuses if label != "GET /agents"), statuses


def test_every_operation_that_reads_a_body_documents_413(api: Api) -> None:
    """The body limit is checked for every request, before the endpoint: each operation that
    takes a body must say it may answer 413."""
    limit = api.gateway.mesh.config.gateway.max_body_bytes
    body = b'{"user":"' + b"x" * limit + b'"}'
    spec = httpx.get(api.gateway.url + "/openapi.json", timeout=10).json()
    for operation in _operations(api):
        if not operation.body:
            continue
        path = operation.path.replace("{name}", "Inventory")
        answer = httpx.request(operation.method.upper(), api.gateway.url + path, content=body, timeout=10,
                               headers={**api.gateway.headers(), "Content-Type": "application/json"})
        assert answer.status_code == 413, (operation.label, answer.text)
        documented = spec["paths"][operation.path][operation.method.lower()]["responses"]
        assert "413" in documented, operation.label

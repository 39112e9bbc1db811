"""supervisord's XML-RPC answers decoded with ElementTree (supervisor/answers.py): a table of
values, each as xmlrpc.client decodes it too, faults, and what is left to xmlrpc.client."""

from __future__ import annotations

import xmlrpc.client
from typing import Any

import pytest

from agentmesh_cli.supervisor.answers import decode_answer, tree_parser

INFO = {"name": "agent-Sales", "group": "agent-Sales", "start": 1765000000, "stop": 0,
        "now": 1765000042, "state": 20, "statename": "RUNNING", "spawnerr": "", "exitstatus": 0,
        "logfile": "/m/logs/agent-Sales.log", "stdout_logfile": "/m/logs/agent-Sales.log",
        "stderr_logfile": "", "pid": 4242, "description": "pid 4242, uptime 0:00:42"}


def answer(*params: Any) -> bytes:
    return xmlrpc.client.dumps(params, methodresponse=True, allow_none=True).encode()


@pytest.mark.parametrize("value", [
    0, -7, 2**31 - 1, True, False, "", "plain", "a < b & 'c' > \"d\"", "Grüße ✓", 1.5, None,
    [], [1, "two", [3.0]], {}, {"a": {"b": [1, {"c": ""}]}},
    [INFO, {**INFO, "name": "kafka", "pid": 0, "statename": "STOPPED", "description": "Not started"}],
    {"statecode": 1, "statename": "RUNNING"},
])
def test_values_decode_as_xmlrpc_client_decodes_them(value: Any) -> None:
    data = answer(value)
    assert decode_answer(data) == xmlrpc.client.loads(data, use_builtin_types=False)[0] == (value,)


@pytest.mark.parametrize(("xml", "expected"), [
    (b"<methodResponse><params><param><value>untyped</value></param></params></methodResponse>",
     ("untyped",)),
    (b"<methodResponse><params><param><value></value></param></params></methodResponse>", ("",)),
    (b"<methodResponse><params><param><value><i4> 12 </i4></value></param></params></methodResponse>",
     (12,)),
    (b"<methodResponse><params><param><value><array><data/></array></value></param></params>"
     b"</methodResponse>", ([],)),
    (b"<methodResponse><params/></methodResponse>", ()),
    # supervisord's multicall: each result in its place, a fault as a struct
    (answer([{"statecode": 1, "statename": "RUNNING"}, 4242, [INFO], "log\n",
             {"faultCode": 10, "faultString": "BAD_NAME: x"}]),
     ([{"statecode": 1, "statename": "RUNNING"}, 4242, [INFO], "log\n",
       {"faultCode": 10, "faultString": "BAD_NAME: x"}],)),
])
def test_answers(xml: bytes, expected: tuple[Any, ...]) -> None:
    assert decode_answer(xml) == expected


def test_a_fault_is_raised_as_xmlrpc_client_raises_it() -> None:
    data = xmlrpc.client.dumps(xmlrpc.client.Fault(10, "BAD_NAME: agent-Nobody"), methodresponse=True)
    with pytest.raises(xmlrpc.client.Fault) as caught:
        decode_answer(data)
    assert (caught.value.faultCode, caught.value.faultString) == (10, "BAD_NAME: agent-Nobody")


def test_types_supervisord_never_sends_are_left_to_xmlrpc_client() -> None:
    when = xmlrpc.client.DateTime("20261207T06:00:00")
    data = answer([when, xmlrpc.client.Binary(b"\x00\xff")])
    assert decode_answer(data) == xmlrpc.client.loads(data)[0]
    with pytest.raises(TypeError, match="bad boolean"):  # xmlrpc.client's own error
        decode_answer(b"<methodResponse><params><param><value><boolean>2</boolean></value></param>"
                      b"</params></methodResponse>")
    odd = b"<methodResponse><params><param><nothing/></param></params></methodResponse>"
    assert decode_answer(odd) == xmlrpc.client.loads(odd)[0]  # no <value>: as lenient as it is


def test_the_transport_pair_decodes_what_it_was_fed() -> None:
    parser, unmarshaller = tree_parser()
    data = answer([INFO])
    parser.feed(data[:100])
    parser.feed(data[100:])
    parser.close()
    assert unmarshaller.close() == ([INFO],)

"""supervisord's XML-RPC answers decoded with ElementTree's C parser.

xmlrpc.client calls a Python function for every tag: supervisord's answer for 136
programs (getAllProcessInfo, ~165 KB) cost ~8 ms of CPU to decode, a quarter of a `status`
frame's own; built as a tree in C and walked, ~4 ms. An answer this cannot decode (a type
supervisord never sends: dateTime, base64; or one that is malformed) is decoded by
xmlrpc.client after all, so it gives what xmlrpc.client gives, or raises what it raises.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
import xmlrpc.client
from typing import Any


def decode_answer(data: bytes | str) -> tuple[Any, ...]:
    """A methodResponse's params, as xmlrpc.client.loads gives them; its fault raised as
    xmlrpc.client.Fault."""
    try:
        root = ET.fromstring(data)
        fault = root.find("fault")
        if fault is not None:
            detail = decode_value(_child(fault, "value"))
            raise xmlrpc.client.Fault(detail["faultCode"], detail["faultString"])
        params = root.find("params")
        return () if params is None else tuple(decode_value(_child(p, "value")) for p in params)
    except (xmlrpc.client.ResponseError, ET.ParseError, KeyError, ValueError):
        return xmlrpc.client.loads(data)[0]


def decode_value(value: ET.Element) -> Any:
    """An XML-RPC <value> element as Python: int, bool, str, float, None, list or dict."""
    if len(value) == 0:
        return value.text or ""  # no type element: a string
    typed = value[0]
    tag, text = typed.tag, typed.text or ""
    if tag == "string":
        return text
    if tag in ("int", "i4", "i8"):
        return int(text)
    if tag == "boolean":
        return {"0": False, "1": True}[text.strip()]  # else KeyError: xmlrpc.client's TypeError
    if tag == "double":
        return float(text)
    if tag == "nil":
        return None
    if tag == "array":
        data = typed.find("data")
        return [] if data is None else [decode_value(v) for v in data]
    if tag == "struct":
        struct = {}
        for member in typed:
            name, item = member  # <member><name>..</name><value>..</value></member>, else ValueError
            if name.tag != "name":
                raise xmlrpc.client.ResponseError("a struct member unlike supervisord's")
            struct[name.text or ""] = decode_value(item)
        return struct
    raise xmlrpc.client.ResponseError(f"unknown tag {tag!r}")  # for xmlrpc.client (decode_answer)


def _child(element: ET.Element, tag: str) -> ET.Element:
    found = element.find(tag)
    if found is None:
        raise xmlrpc.client.ResponseError(f"{element.tag} without {tag}")  # xmlrpc.client says how
    return found


class _Feed:
    """The parser half of the pair xmlrpc's Transport.getparser returns: it gathers the
    answer; the unmarshaller half decodes it."""

    def __init__(self) -> None:
        self.chunks: list[bytes | str] = []

    def feed(self, data: bytes | str) -> None:
        self.chunks.append(data)

    def close(self) -> None:
        pass


class _Answer:
    def __init__(self, feed: _Feed) -> None:
        self._feed = feed

    def close(self) -> tuple[Any, ...]:
        chunks = self._feed.chunks
        data = chunks[0] if len(chunks) == 1 else b"".join(c if isinstance(c, bytes) else c.encode()
                                                             for c in chunks)
        return decode_answer(data)


def tree_parser() -> tuple[_Feed, _Answer]:
    """(parser, unmarshaller) for an xmlrpc Transport's getparser."""
    feed = _Feed()
    return feed, _Answer(feed)

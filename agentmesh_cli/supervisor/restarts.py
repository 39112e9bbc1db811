"""Restart counts from supervisord's main log (pure: text in, counts out).

supervisord logs `spawned: '<program>' with pid N` every time it starts a program, and
`supervisord started with pid N` when it starts itself (the log is appended to across
incarnations). So the starts of a program since supervisord started are the spawn lines
after the last such line, and its restarts are those starts less the first: crashes
restarted by `autorestart`, BACKOFF retries, `supervisorctl restart`, and programs
replaced by `agentmesh up` after a mesh.yaml change.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable
from typing import Any

SPAWNED = re.compile(r" spawned: '([^']+)' with pid \d+")
SUPERVISORD_STARTED = " supervisord started with pid "
ANCHOR_CHARS = 64  # how much of the text already read proves the log was not rotated


class SpawnLog:
    """Reads the main log incrementally; `read(offset)` is supervisord's readLog. A one-shot
    `status` goes on from where the previous one stopped (`saved`, `resume`) rather than
    reading the whole log again (up to 10 MB, all of it in one XML-RPC answer)."""

    def __init__(self) -> None:
        self.spawns: Counter[str] = Counter()
        self.offset = 0  # bytes of the log consumed
        self._anchor = ""  # the last ANCHOR_CHARS characters consumed
        self._partial = ""  # a line not yet complete

    def restarts(self, program: str) -> int:
        return max(0, self.spawns[program] - 1)

    @property
    def read_from(self) -> int:
        """Where `update` reads first: from our offset less the anchor, to see that the text
        before it is still what we read (from 0 before the first read)."""
        return self.offset - len(self._anchor.encode("utf-8")) if self.offset else 0

    def update(self, read: Callable[[int], str]) -> None:
        """Read what the log gained since the last call. When the text before our offset
        is no longer what we read (supervisord rotated the log at 10 MB), the new file is
        read from its start and counted on top of what was counted before."""
        text = str(read(self.read_from))
        if self.offset:
            if not text.startswith(self._anchor):
                self.offset, self._anchor, self._partial = 0, "", ""
                text = str(read(0))
            else:
                text = text[len(self._anchor):]
        self.feed(text)

    def saved(self) -> dict[str, Any]:
        """What another SpawnLog needs to go on from here (JSON-able)."""
        return {"offset": self.offset, "anchor": self._anchor, "partial": self._partial,
                "spawns": dict(self.spawns)}

    def resume(self, saved: Any) -> bool:
        """Go on from another SpawnLog's `saved` state; False (nothing changed) when it is
        not one. A log rotated since is seen by `update` as for a kept SpawnLog."""
        if not isinstance(saved, dict):
            return False
        offset, anchor, partial, spawns = (saved.get(k) for k in ("offset", "anchor", "partial", "spawns"))
        if not (isinstance(offset, int) and offset >= 0 and isinstance(anchor, str)
                and isinstance(partial, str) and isinstance(spawns, dict)
                and all(isinstance(k, str) and isinstance(n, int) for k, n in spawns.items())):
            return False
        if len(anchor.encode("utf-8")) > offset:
            return False
        self.offset, self._anchor, self._partial = offset, anchor, partial
        self.spawns = Counter(spawns)
        return True

    def feed(self, text: str) -> None:
        """Count the spawn lines of `text`, the log's continuation."""
        if not text:
            return
        self.offset += len(text.encode("utf-8"))
        self._anchor = (self._anchor + text)[-ANCHOR_CHARS:]
        lines = (self._partial + text).split("\n")
        self._partial = lines.pop()
        for line in lines:
            if SUPERVISORD_STARTED in line:
                self.spawns.clear()
            elif match := SPAWNED.search(line):
                self.spawns[match.group(1)] += 1

"""The circuit breaker of a service client (services/client.py): `guard()` around each
request; the sync and async clients share it and behave exactly alike.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from purgatory import ContextChanged
from purgatory.domain.model import HALF_OPENED, OPENED, Context, HalfOpenedState

from agentmesh_cli.errors import CircuitOpenError, ServiceHTTPError, ServiceUnavailableError

log = logging.getLogger("agentmesh_cli.services.client")  # the clients' log, as before

_BREAKER_STATES = {"closed": "closed", "opened": "open", "half-opened": "half_open"}


def transient(exc: BaseException) -> bool:
    """Worth a retry, and a breaker failure once the retries are spent: the service (or the
    way to it) is in trouble, not the request."""
    if isinstance(exc, ServiceUnavailableError):
        return True
    return isinstance(exc, ServiceHTTPError) and (exc.status in (408, 429) or exc.status >= 500)


# The state machine is purgatory's documented domain model, `purgatory.domain.model.Context`
# (closed -> opened after `threshold` failures -> half-opened once `ttl` passed -> closed on
# a success, opened again on a failure), driven directly. Why this and not another way in:
# - pybreaker is sync only (its call_async needs Tornado, not asyncio);
# - both pybreaker's `exclude` and purgatory's count an excluded error as a success, so a
#   4xx would reset the failure count; reporting nothing at all for a 4xx, as the policy
#   wants, takes the Context's own entry points;
# - purgatory's factories add a message bus and a repository that one process does not
#   need; the Context does no I/O, so the sync and async clients share this class and
#   behave exactly alike.
# Two things are added here. The single probe (`_probing`): purgatory's half-open state
# admits every call, which matters for concurrent async calls and for a sync caller that
# holds a stream open while calling. And the clock: purgatory times the open state on
# `time.time()`, read inside its OpenedState, which takes no clock (3.0.1). So the
# breaker notes when purgatory opened it on its own `clock` (a ContextChanged event) and
# makes the one timed move itself, open -> half open, with the Context's `set_state` and
# `HalfOpenedState`, exactly as purgatory's OpenedState would; purgatory never sees an
# open-state request. A test drives the reset timeout with a fake clock.
class Breaker:
    """The circuit breaker of one client: `guard()` around each request."""

    def __init__(self, service: str, threshold: int, reset_timeout: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.service = service
        self.clock = clock
        self._context = Context(service, threshold, reset_timeout)
        self._opened_at = 0.0  # on `clock`: when purgatory last opened it
        self._probing = False
        # a sync client may be shared by threads; the lock is never held across I/O
        self._lock = threading.Lock()

    @property
    def state(self) -> str:
        return _BREAKER_STATES[self._context.state]

    @contextmanager
    def guard(self) -> Iterator[None]:
        """One call under the breaker: fail fast when open, report the outcome after."""
        probe = self._admit()
        try:
            yield
        except BaseException as exc:
            self._settle(probe, exc)
            raise
        self._settle(probe, None)

    def report_failure(self, exc: BaseException) -> None:
        """A failure after the call was admitted and settled (a stream that broke)."""
        if transient(exc):
            with self._lock:
                self._context.handle_exception(exc)
                self._drain()

    def _admit(self) -> bool:
        """Let a call through (True: it is the half-open probe) or raise CircuitOpenError."""
        with self._lock:
            state = self._context.state
            if state == HALF_OPENED and self._probing:
                raise CircuitOpenError(f"{self.service}: circuit breaker half open, its probe "
                                       "call is in flight", self.service)
            if state == OPENED:
                if self.clock() - self._opened_at <= self._context.ttl:
                    raise CircuitOpenError(f"{self.service}: circuit breaker open, next probe in "
                                           f"{self._retry_in():.1f}s", self.service)
                self._context.set_state(HalfOpenedState())  # the reset timeout passed
            self._context.handle_new_request()
            self._drain()
            self._probing = self._context.state == HALF_OPENED
            return self._probing

    def _settle(self, probe: bool, exc: BaseException | None) -> None:
        with self._lock:
            if probe:
                self._probing = False
            if exc is None:
                self._context.handle_end_request()
            elif transient(exc):
                self._context.handle_exception(exc)
            # anything else (a 4xx, a protocol error, a cancelled call) reports nothing: the
            # count stays, and a neutral probe leaves the breaker half open for the next call
            self._drain()

    def _retry_in(self) -> float:
        return max(0.0, self._opened_at + self._context.ttl - self.clock())

    def _drain(self) -> None:
        # the Context queues events for purgatory's message bus, which does not run here:
        # note when it opened, log the state changes, drop the rest so that the list does
        # not grow
        for event in self._context.messages:
            if isinstance(event, ContextChanged):
                if event.state == OPENED:
                    self._opened_at = self.clock()
                level = logging.WARNING if event.state == OPENED else logging.INFO
                log.log(level, "%s: circuit breaker %s", self.service, _BREAKER_STATES[event.state])
        self._context.messages.clear()

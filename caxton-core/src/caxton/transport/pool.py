"""One pooled outbound connection per peer, dialled with retries and backoff.

:class:`PeerPool` hands out the live connection to a peer, or dials one: concurrent
callers share the same dial; failed attempts are retried with exponential backoff until
the caller's deadline; after a dial gives up, the peer is left alone for a growing
interval (callers fail fast instead of piling up on a dead address). :meth:`PeerPool.
abandon` ends a dial under way at once (membership says the peer is gone).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from caxton.drivers.transport import Address
from caxton.errors import PeerRejected, TransportError
from caxton.transport.connection import Connection
from caxton.units import format_address

log = logging.getLogger("caxton.transport")

T = TypeVar("T")

#: Dial one attempt: returns a connection whose handshake has completed.
Dialer = Callable[[Address, float], Awaitable[Connection]]


@dataclass
class Backoff:
    """Exponential backoff with jitter, shared by retries within and across dials."""

    initial: float
    maximum: float
    failures: int = 0
    retry_at: float = 0.0
    last_error: str = ""

    def delay(self) -> float:
        base = min(self.maximum, self.initial * 2.0 ** min(self.failures, 30))
        return base * random.uniform(0.5, 1.0)

    def failed(self, now: float, error: str) -> float:
        delay = self.delay()
        self.failures += 1
        self.retry_at = now + delay
        self.last_error = error
        return delay

    def reset(self) -> None:
        self.failures = 0
        self.retry_at = 0.0
        self.last_error = ""


class PeerPool:
    def __init__(self, dial: Dialer, *, backoff_initial: float, backoff_max: float) -> None:
        self._dial = dial
        self._backoff_initial = backoff_initial
        self._backoff_max = backoff_max
        self.connections: dict[Address, Connection] = {}
        self._dialing: dict[Address, asyncio.Future[Connection]] = {}
        #: Set to end the dial under way to a peer (see abandon()).
        self._give_up: dict[Address, asyncio.Event] = {}
        self._backoff: dict[Address, Backoff] = {}

    def live(self, peer: Address) -> Connection | None:
        connection = self.connections.get(peer)
        return connection if connection is not None and connection.usable else None

    def forget(self, connection: Connection) -> None:
        if connection.peer is not None and self.connections.get(connection.peer) is connection:
            del self.connections[connection.peer]

    async def get(self, peer: Address, timeout: float) -> Connection:
        """The pooled connection to ``peer``, dialling within ``timeout`` if needed."""
        connection = self.connections.get(peer)
        if connection is not None and connection.usable:
            return connection
        pending = self._dialing.get(peer)
        if pending is not None:
            return await asyncio.wait_for(asyncio.shield(pending), timeout)
        loop = asyncio.get_running_loop()
        backoff = self._backoff.setdefault(peer, Backoff(self._backoff_initial, self._backoff_max))
        now = loop.time()
        if now < backoff.retry_at:
            raise TransportError(
                f"peer {format_address(peer)} is unreachable ({backoff.last_error}); "
                f"next attempt in {(backoff.retry_at - now) * 1000:.0f}ms"
            )
        future: asyncio.Future[Connection] = loop.create_future()
        self._dialing[peer] = future
        self._give_up[peer] = asyncio.Event()
        try:
            connection = await self._dial_with_retries(peer, timeout, backoff)
        except BaseException as exc:
            error = exc if isinstance(exc, TransportError) else TransportError(str(exc))
            future.set_exception(error)
            future.exception()
            raise
        else:
            future.set_result(connection)
            self.connections[peer] = connection
            return connection
        finally:
            del self._dialing[peer]
            del self._give_up[peer]

    def abandon(self, peer: Address, reason: str) -> None:
        """End the dial under way to ``peer``: its callers get TransportError now, and
        new callers fail fast for the backoff interval."""
        give_up = self._give_up.get(peer)
        if give_up is None:
            return
        backoff = self._backoff.get(peer)
        if backoff is not None:
            backoff.last_error = reason
        give_up.set()

    async def _dial_with_retries(
        self, peer: Address, timeout: float, backoff: Backoff
    ) -> Connection:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        give_up = self._give_up[peer]
        while True:
            remaining = deadline - loop.time()
            try:
                connection = await _unless(give_up, self._dial(peer, remaining), remaining)
            except (PeerRejected, ssl.SSLError) as exc:
                backoff.failed(loop.time(), str(exc))
                raise PeerRejected(f"{format_address(peer)} refused us: {exc}") from None
            except (OSError, asyncio.TimeoutError, TransportError) as exc:
                if give_up.is_set():
                    raise TransportError(
                        f"cannot reach {format_address(peer)}: {backoff.last_error}"
                    ) from None
                error = str(exc) or type(exc).__name__
                delay = backoff.failed(loop.time(), error)
                if loop.time() + delay >= deadline:
                    raise TransportError(f"cannot reach {format_address(peer)}: {error}") from None
                log.debug("dial %s failed (%s); retrying in %.0fms", peer, error, delay * 1000)
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(give_up.wait(), delay)
                if give_up.is_set():
                    raise TransportError(
                        f"cannot reach {format_address(peer)}: {backoff.last_error}"
                    ) from None
            else:
                backoff.reset()
                return connection


async def _unless(give_up: asyncio.Event, work: Awaitable[T], timeout: float) -> T:
    """``work`` within ``timeout`` (TimeoutError), unless ``give_up`` is set first
    (TransportError, and ``work`` is cancelled)."""
    task = asyncio.ensure_future(work)
    stop = asyncio.ensure_future(give_up.wait())
    try:
        done, _ = await asyncio.wait(
            {task, stop}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
        )
    finally:
        stop.cancel()
    if task in done:
        return task.result()
    task.cancel()
    with contextlib.suppress(BaseException):
        await task
    if stop in done:
        raise TransportError("dial abandoned")
    raise asyncio.TimeoutError()

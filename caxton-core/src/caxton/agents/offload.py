"""Heavy agents run off the event loop: a bounded pool of worker threads takes their calls.

A wasm call cannot be preempted: inline on the event loop, an agent that burns its fuel
or blocks until its wall-time limit holds every other agent, the REST API and gossip for
that long. Most agents answer in microseconds and run inline, which is the fastest path
(no thread hop). An agent whose call proved *heavy* (more than :data:`HEAVY_FUEL` fuel,
or stopped by its fuel or wall-time limit), or :data:`SLOW_STREAK` of whose calls in a
row took more than :data:`SLOW_CALL`, makes its next calls on one of
``messaging.worker_threads`` threads instead; after :data:`LIGHT_CALLS_TO_RETURN` light
calls in a row it runs inline again.

Why this is fair (docs/design/0009-fair-share-scheduling.md):

* wasmtime releases the GIL while the guest runs (ctypes), so the loop keeps serving
  light agents, HTTP and gossip on the other core while a heavy call runs;
* a heavy agent has at most one call in flight (its mailbox is busy meanwhile) and the
  pool serves calls in the order they were made: heavy agents take turns round-robin,
  one call (bounded by the agent's own limits) per turn, whatever their backlog; a
  flood only lengthens its own queue, until ``messaging.queue_size`` refuses its senders;
* what a heavy call asks of the node (send, reply, log, key/value, timers) is carried
  out on the event loop, in order, while the call waits (:meth:`OffLoop.on_loop`): the
  router, the store and output commit are only ever touched from the loop's thread, and
  a flooding agent waits for the loop once per message it sends.

Fuel is deterministic; wall time is not: on a loaded machine a light agent's call can be
descheduled past :data:`SLOW_CALL`, hence the streak (and inline, measuring the thread's
CPU time instead would cost two system calls per message). On a worker the measure is
the thread's CPU time, which leaves out the waits for the loop and for a core. A light
agent judged heavy runs on a worker for a while: a thread hop per message, and its turn
in the pool behind the heavy agents' calls.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import os
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from caxton.drivers.sandbox import HostCall, HostFunction
from caxton.errors import CaxtonError

__all__ = [
    "HEAVY_FUEL",
    "LIGHT_CALLS_TO_RETURN",
    "SLOW_CALL",
    "SLOW_STREAK",
    "HostCallTimeout",
    "OffLoop",
    "loop_bound",
]

#: A call that used more fuel than this (about a millisecond of wasm) is heavy.
HEAVY_FUEL = 1_000_000
#: A call that took longer than this (seconds) is slow; SLOW_STREAK in a row are heavy.
SLOW_CALL = 0.002
SLOW_STREAK = 3
#: A heavy agent runs inline again after this many light calls in a row.
LIGHT_CALLS_TO_RETURN = 64
#: Failure reasons that make the agent heavy: it ran to one of its limits.
HEAVY_FAILURES = frozenset({"fuel", "timeout"})
#: The workers' nice value (Linux: per thread): a core the loop and a heavy agent both
#: want goes to the loop first, so heavy calls slow down before their neighbours do.
WORKER_NICE = 10
#: How long a host call from a worker waits for the event loop past the agent's own
#: wall-time limit (seconds) before it fails the call (a loop that stopped).
HOST_CALL_GRACE = 5.0

T = TypeVar("T")


class HostCallTimeout(CaxtonError):
    """A host call of an off-loop agent was not served by the event loop in time."""


def _lower_priority() -> None:
    """Give this worker thread the nice value :data:`WORKER_NICE` (where the OS can)."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), WORKER_NICE)
    except (AttributeError, OSError):  # not Linux, or not allowed: the default priority
        pass


def loop_bound(function: HostFunction) -> HostFunction:
    """A plugin's host function as a heavy agent calls it: carried out on the loop
    (unless it is ``thread_safe``); inline calls go straight through."""
    if function.thread_safe:
        return function
    inner = function.func

    def func(call: HostCall, *args: Any) -> Any:
        on_loop = getattr(call.host, "on_loop", None)
        if on_loop is None:
            return inner(call, *args)
        return on_loop(inner, call, *args)

    return dataclasses.replace(function, func=func)


class OffLoop:
    """The worker threads of one node's heavy agents, and the way back to the loop."""

    def __init__(self, workers: int) -> None:
        if workers < 1:
            raise ValueError(f"workers must be at least 1, got {workers}")
        self.workers = workers
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None  # on first use
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        #: Calls made on the workers so far (for tests and stats).
        self.calls = 0

    def run(self, call: Callable[[], T]) -> asyncio.Future[T]:
        """Run ``call`` on a worker; the future is done on the event loop."""
        loop = self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self.calls += 1
        pool = self._pool
        if pool is None:
            pool = self._pool = concurrent.futures.ThreadPoolExecutor(
                max_workers=self.workers,
                thread_name_prefix="caxton-agent",
                initializer=_lower_priority,
            )
        return loop.run_in_executor(pool, call)

    def on_loop(self, timeout: float, func: Callable[..., T], *args: Any) -> T:
        """Run ``func(*args)`` on the event loop and wait for it (from a worker).

        Raises :class:`HostCallTimeout` when the loop did not run it within ``timeout``
        seconds (plus :data:`HOST_CALL_GRACE`), or is closed.
        """
        loop = self._loop
        if loop is None or threading.get_ident() == self._loop_thread:
            return func(*args)
        done: concurrent.futures.Future[T] = concurrent.futures.Future()

        def serve() -> None:
            if not done.set_running_or_notify_cancel():
                return
            try:
                done.set_result(func(*args))
            except BaseException as exc:
                done.set_exception(exc)

        try:
            loop.call_soon_threadsafe(serve)
            return done.result(timeout + HOST_CALL_GRACE)
        except (RuntimeError, concurrent.futures.TimeoutError) as exc:  # loop closed / stuck
            done.cancel()
            raise HostCallTimeout(
                "host call not served: the node's event loop did not answer in time"
            ) from exc

    def close(self) -> None:
        """Let the threads go; running calls end within their agents' wall-time limits.
        A later :meth:`run` starts new ones (a node's manager may start again)."""
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)

"""One live agent: its delivery callback and the host API its wasm calls back into.

:class:`AgentRuntime` is what the router calls for every message to the agent
(:meth:`AgentRuntime.deliver`: encode, call the instance, count) and what the sandbox
calls for every host import (it implements :class:`caxton.drivers.sandbox.AgentHostAPI`).
A light agent's calls run inline, synchronously; a heavy agent's run on a worker thread
(:mod:`caxton.agents.offload`) and ``deliver`` returns a future the router waits for.
Lifecycle decisions (restart, fail, swap) belong to
:class:`caxton.agents.manager.AgentManager`; this module only runs.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections import deque
from collections.abc import Callable
from time import perf_counter, thread_time
from typing import TYPE_CHECKING, Any, TypeVar

from caxton.agents.agent_logs import AgentLog
from caxton.agents.model import Agent, AgentState
from caxton.agents.offload import (
    HEAVY_FAILURES,
    HEAVY_FUEL,
    LIGHT_CALLS_TO_RETURN,
    SLOW_CALL,
    SLOW_STREAK,
)
from caxton.drivers.sandbox import AgentInstance, CompiledModule
from caxton.errors import (
    AgentNotFound,
    CaxtonError,
    ExecutionFailed,
    MessageTooLarge,
    QueueFull,
)
from caxton.log_budget import LogBudget
from caxton.messaging.message import loads
from caxton.samples import Samples
from caxton.sandbox.abi import MAX_KEY_BYTES, LogLevel, Status

if TYPE_CHECKING:
    from caxton.agents.manager import AgentManager
    from caxton.messaging import Message
    from caxton.tracing import Tracing

agent_log = logging.getLogger("caxton.agent")

T = TypeVar("T")

#: ABI log levels -> logging levels.
LOG_LEVELS: dict[int, int] = {
    LogLevel.TRACE: 5,
    LogLevel.DEBUG: logging.DEBUG,
    LogLevel.INFO: logging.INFO,
    LogLevel.WARN: logging.WARNING,
    LogLevel.ERROR: logging.ERROR,
}
#: Performatives after which a conversation has nothing in flight for this agent.
CLOSING_PERFORMATIVES = frozenset(
    {"inform", "inform-if", "inform-ref", "failure", "refuse", "not-understood",
     "reject-proposal", "cancel", "confirm", "disconfirm"}
)  # fmt: skip
#: Replies never answered with another failure (no failure ping-pong between agents).
NO_REPLY_PERFORMATIVES = frozenset({"failure", "not-understood"})
#: A reply carrying only these fields takes the fast path (no full validation).
SIMPLE_REPLY_FIELDS = frozenset({"performative", "content"})
#: Open conversations remembered per agent before the oldest are forgotten.
MAX_OPEN_CONVERSATIONS = 10_000
#: Shortest period of a repeating timer.
MIN_REPEAT_MS = 1
#: An agent's log lines: this many at once, then this many per second (the rest are
#: counted and dropped), each cut to MAX_AGENT_LOG_LINE characters.
AGENT_LOG_BURST = 50
AGENT_LOG_PER_SECOND = 10.0
MAX_AGENT_LOG_LINE = 1000


class AgentRuntime:
    """The live side of one agent. Created by the manager; one per deployed agent."""

    def __init__(
        self,
        manager: AgentManager,
        agent: Agent,
        module: CompiledModule,
        kv: dict[bytes, bytes] | None = None,
    ) -> None:
        self.manager = manager
        self.agent = agent
        self.name = agent.name
        self.module = module
        self.instance: AgentInstance | None = None
        #: True only while running normally: deliver takes the inline fast path.
        self.accepting = False
        self.busy = False
        #: The message being handled (the target of ``reply``).
        self.current: Message | None = None
        #: Messages that arrived while busy, draining, suspended or restarting.
        self.backlog: deque[Message] = deque()
        self.kv: dict[bytes, bytes] = kv if kv is not None else {}
        self.kv_bytes = sum(len(k) + len(v) for k, v in self.kv.items())
        self.timers: dict[int, asyncio.TimerHandle] = {}
        self.deferred_timers: dict[int, None] = {}
        #: timer id -> (period ms, repeat, set by agent_init): what a move hands over.
        self.timer_plans: dict[int, tuple[int, bool, bool]] = {}
        #: True while ``agent_init`` runs (its timers are set again by the next init).
        self.initializing = False
        self._next_timer = 1
        #: conversation id -> monotonic time of its last message (for draining).
        self.open_conversations: dict[str, float] = {}
        self.drained = asyncio.Event()
        self.drained.set()
        #: Consecutive failed deliveries (reset by a successful one).
        self.streak = 0
        self.restart_handle: asyncio.TimerHandle | None = None
        #: Seconds each message took in the agent (caxton_agent_message_latency_p99).
        self.processing = Samples(pending=512, window=256, parent=manager.processing_times)
        #: While a traced message is handled: its span's traceparent, for what it sends.
        self.trace_parent: str | None = None
        #: Counters changed since the record was last queued for the store.
        self.dirty = False
        self.lock = asyncio.Lock()
        self.log_budget = LogBudget(AGENT_LOG_PER_SECOND, AGENT_LOG_BURST)
        #: The agent's own log lines, for ``caxton logs AGENT``.
        self.logbook = AgentLog()
        #: Output commit (caxton.agents.commit): ``version`` counts this runtime's
        #: key/value changes, ``committed`` the ones known durable; what the agent emits
        #: while they differ waits in ``held`` (version, message), in order.
        self.durability = manager.durability
        self.version = 0
        self.committed = 0
        self.changed_keys: set[bytes] = set()
        self.held: deque[tuple[int, Message]] = deque()
        #: Why this copy lost its ownership (caxton.cluster.ownership): it emits nothing.
        self.fenced: str | None = None
        #: Being moved to another node (caxton.cluster.moves): timers that come due
        #: wait (deferred), messages wait in the router.
        self.moving = False
        #: Its calls proved heavy: they run on the node's worker threads
        #: (caxton.agents.offload) until ``light_calls`` light ones in a row.
        self.heavy = False
        self.light_calls = 0
        self.slow_calls = 0
        #: The instance whose call runs on a worker now, or None: while set, its host
        #: calls are carried out on the loop (and refused once it is no longer current).
        self.off_loop: AgentInstance | None = None

    # -- delivery (the hot path) ----------------------------------------------------

    def deliver(self, message: Message) -> asyncio.Future[None] | None:
        """Router callback: run the message through the agent now, inline; for a heavy
        agent, start it on a worker and return the future of its end."""
        if not self.accepting or self.busy:
            self._deliver_later(message)
            return None
        pending = self._handle(message)
        if pending is None and self.backlog:
            self.run_backlog()
        return pending

    def _deliver_later(self, message: Message) -> None:
        if not self.busy and self._in_flight(message):
            self._handle(message)  # in-flight conversations finish on the old instance
            if self.backlog:
                self.run_backlog()
            return
        if len(self.backlog) >= self.manager.backlog_limit:
            self.reply_failure(message, f"Queue full: agent {self.name} is not accepting")
            return
        self.backlog.append(message)

    def _in_flight(self, message: Message) -> bool:
        """While draining: does ``message`` belong to a conversation still in flight?"""
        return (
            self.agent.state is AgentState.DRAINING
            and self.instance is not None
            and message.conversation_id in self.open_conversations
        )

    def run_backlog(self) -> None:
        """Handle what waited: everything when accepting, in-flight messages when draining."""
        backlog = self.backlog
        while backlog and self.accepting and not self.busy:
            self._handle(backlog.popleft())
        if not backlog or self.accepting or self.agent.state is not AgentState.DRAINING:
            return
        waiting, self.backlog = backlog, deque()
        kept: deque[Message] = deque()
        for message in waiting:
            if not self.busy and self._in_flight(message):
                self._handle(message)
            else:
                kept.append(message)
        kept.extend(self.backlog)  # arrived during those calls: after the older ones
        self.backlog = kept

    def _handle(self, message: Message) -> asyncio.Future[None] | None:
        instance = self.instance
        if instance is None:
            self.backlog.append(message)
            return None
        if not self.module.handles_messages:
            self.answer(message, "not-understood", f"agent {self.name} does not handle messages")
            return None
        try:
            data = message.to_json()
        except CaxtonError as exc:
            self.answer(message, "not-understood", str(exc))
            return None
        if message.conversation_id:
            # Before the call: the agent's reply, made during it, may close it again.
            self._track(message)
        if self.heavy and self.manager.off_loop is not None:
            return self._call_off_loop(instance, message, lambda: instance.handle_message(data))
        tracing = self.manager.tracing
        if tracing is not None and tracing.sampled(message):
            self._handle_traced(tracing, instance, message, data)
            return None
        if message.traceparent is not None:  # an unsampled trace: what it sends continues it
            self.trace_parent = message.traceparent
            try:
                self._call(instance, message, data)
            finally:
                self.trace_parent = None
            return None
        self._call(instance, message, data)
        return None

    def _handle_traced(
        self, tracing: Tracing, instance: AgentInstance, message: Message, data: bytes
    ) -> None:
        """The agent's handling as a span; what it sends meanwhile continues the trace."""
        with tracing.message_span(
            "caxton.agent.handle", message, **{"caxton.agent": self.name}
        ) as span:
            self.trace_parent = message.traceparent
            try:
                self._call(instance, message, data)
            finally:
                self.trace_parent = None
                if span.is_recording():
                    span.set_attribute("caxton.fuel_used", instance.last_fuel_used)

    def _call(self, instance: AgentInstance, message: Message, data: bytes) -> None:
        self.busy = True
        self.current = message
        started = perf_counter()
        try:
            instance.handle_message(data)
        except Exception as exc:
            self._call_failed(instance, message, exc)
            return
        self._call_done(instance, perf_counter() - started)

    def _call_done(self, instance: AgentInstance, seconds: float) -> None:
        self.busy = False
        self.current = None
        self.processing.pending.append(seconds)
        fuel = instance.last_fuel_used
        counters = self.agent.counters
        counters.messages_handled += 1
        counters.fuel_used += fuel
        self.streak = 0
        self.dirty = True
        if seconds > SLOW_CALL:
            self.slow_calls += 1
            if self.slow_calls >= SLOW_STREAK:
                self.heavy = True
                self.light_calls = 0
        elif self.slow_calls:
            self.slow_calls = 0
        if fuel > HEAVY_FUEL:
            self.heavy = True
            self.light_calls = 0
        elif self.heavy and not self.slow_calls:
            self.light_calls += 1
            if self.light_calls >= LIGHT_CALLS_TO_RETURN:
                self.heavy = False

    def _call_failed(self, instance: AgentInstance, message: Message, exc: Exception) -> None:
        self.busy = False
        self.current = None
        if isinstance(exc, ExecutionFailed):
            self._account(instance)
            if exc.reason in HEAVY_FAILURES:
                self.heavy = True
                self.light_calls = 0
            self.manager.crashed(self, exc, message)
        elif isinstance(exc, CaxtonError):  # refused before running: over max_message_bytes
            self.answer(message, "failure", str(exc))
        else:  # a sandbox bug must not take the node down
            agent_log.error("agent %s: unexpected sandbox error", self.name, exc_info=exc)
            self._account(instance)
            self.manager.crashed(self, ExecutionFailed(str(exc), reason="abi"), message)

    def _call_off_loop(
        self, instance: AgentInstance, message: Message | None, run: Callable[[], object]
    ) -> asyncio.Future[None]:
        """Run a heavy agent's call (``message``'s, or a timer's when None) on a worker;
        the loop goes on meanwhile. The router keeps the agent's mailbox busy until the
        returned future is done."""
        off_loop = self.manager.off_loop
        assert off_loop is not None
        self.busy = True
        self.current = message
        self.off_loop = instance
        trace_parent = message.traceparent if message is not None else None
        cpu = [0.0]

        def call() -> Exception | None:
            self.trace_parent = trace_parent
            # the thread's CPU time: not the waits for the loop in its host calls, nor
            # the time the machine gave the thread to others (the inline measure is wall
            # time, where the loop waited all along)
            started = thread_time()
            try:
                run()
            except Exception as exc:
                return exc
            finally:
                cpu[0] = thread_time() - started
                # no more host calls from this thread: the loop may run this agent again
                self.off_loop = None
                self.trace_parent = None
            return None

        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def finished(outcome: asyncio.Future[Exception | None]) -> None:
            try:
                if outcome.cancelled():  # the node is closing
                    self.busy = False
                    self.current = None
                    return
                self._off_loop_done(instance, message, outcome.result(), cpu[0])
            finally:
                if not done.done():
                    done.set_result(None)

        off_loop.run(call).add_done_callback(finished)
        return done

    def _off_loop_done(
        self,
        instance: AgentInstance,
        message: Message | None,
        error: Exception | None,
        seconds: float,
    ) -> None:
        if instance is not self.instance:  # removed, stopped or swapped meanwhile
            self.busy = False
            self.current = None
            self._account(instance)
            return
        if message is None:
            self._timer_done(instance, error)
        elif error is not None:
            self._call_failed(instance, message, error)
        else:
            self._call_done(instance, seconds)
        if (
            self.deferred_timers
            and not self.moving
            and self.agent.state is not AgentState.SUSPENDED
        ):
            self.run_deferred_timers()
        if self.backlog:
            self.run_backlog()

    def _account(self, instance: AgentInstance) -> None:
        self.agent.counters.fuel_used += instance.last_fuel_used
        self.dirty = True

    def _track(self, message: Message) -> None:
        """Remember the conversations in flight (callers check conversation_id is set)."""
        conversations = self.open_conversations
        cid = message.conversation_id
        if cid is None:
            return
        if message.performative in CLOSING_PERFORMATIVES:
            if conversations.pop(cid, None) is not None and not conversations:
                self.drained.set()
            return
        if not conversations:
            self.drained.clear()
        conversations[cid] = time.monotonic()
        if len(conversations) > MAX_OPEN_CONVERSATIONS:
            for old in list(conversations)[: MAX_OPEN_CONVERSATIONS // 2]:
                del conversations[old]

    def forget_conversations(self) -> None:
        self.open_conversations.clear()
        self.drained.set()

    # -- replies made by the node on the agent's behalf ---------------------------------

    def answer(self, message: Message, performative: str, content: Any) -> None:
        """Answer ``message`` as this agent (not-understood, failure); never raises."""
        if message.performative in NO_REPLY_PERFORMATIVES or message.sender == self.name:
            return
        try:
            answer = message.create_reply(performative, content, sender=self.name)
            self.manager.outputs.emit(self, answer)
        except CaxtonError as exc:
            agent_log.debug("agent %s: could not answer %s: %s", self.name, message.sender, exc)

    def reply_failure(self, message: Message, text: str) -> None:
        self.answer(message, "failure", text)

    def fail_backlog(self, text: str) -> None:
        while self.backlog:
            self.reply_failure(self.backlog.popleft(), text)

    # -- timers -----------------------------------------------------------------------

    def _fire_timer(self, timer_id: int, delay_ms: int, repeat: bool) -> None:
        if repeat:
            self.timers[timer_id] = asyncio.get_running_loop().call_later(
                max(delay_ms, MIN_REPEAT_MS) / 1000, self._fire_timer, timer_id, delay_ms, repeat
            )
        else:
            self.timers.pop(timer_id, None)
            self.timer_plans.pop(timer_id, None)
        if self.moving or self.agent.state is AgentState.SUSPENDED:
            self.deferred_timers[timer_id] = None
            return
        self.run_timer(timer_id)

    def run_timer(self, timer_id: int) -> None:
        instance = self.instance
        if instance is None:
            return
        if self.busy:  # a call runs on a worker: the timer fires once it ends
            self.deferred_timers[timer_id] = None
            return
        if self.heavy and self.manager.off_loop is not None:
            self._call_off_loop(instance, None, lambda: instance.handle_timer(timer_id))
            return
        self.busy = True
        try:
            instance.handle_timer(timer_id)
        except ExecutionFailed as exc:
            self._timer_done(instance, exc)
            return
        self._timer_done(instance, None)
        if self.backlog:
            self.run_backlog()

    def _timer_done(self, instance: AgentInstance, error: Exception | None) -> None:
        self.busy = False
        self.current = None
        self._account(instance)
        if error is None:
            self.agent.counters.timers_fired += 1
            return
        if not isinstance(error, ExecutionFailed):
            agent_log.error("agent %s: unexpected sandbox error", self.name, exc_info=error)
            error = ExecutionFailed(str(error), reason="abi")
        elif error.reason in HEAVY_FAILURES:
            self.heavy = True
            self.light_calls = 0
        self.manager.crashed(self, error, None)

    def run_deferred_timers(self) -> None:
        deferred, self.deferred_timers = self.deferred_timers, {}
        for timer_id in deferred:
            self.run_timer(timer_id)

    def cancel_timers(self) -> None:
        for handle in self.timers.values():
            handle.cancel()
        self.timers.clear()
        self.deferred_timers.clear()
        self.timer_plans.clear()

    def timers_to_hand_over(self) -> list[list[int]]:
        """The pending timers a move takes along, as ``[id, ms left, period ms, repeat]``:
        those set while handling messages or timers. Those ``agent_init`` set are left
        out: the new instance's ``agent_init`` sets them again."""
        now = asyncio.get_running_loop().time()
        timers = []
        for timer_id, handle in self.timers.items():
            period, repeat, from_init = self.timer_plans.get(timer_id, (0, False, True))
            if not from_init:
                left = max(0, round((handle.when() - now) * 1000))
                timers.append([timer_id, left, period, int(repeat)])
        timers += [[timer_id, 0, 0, 0] for timer_id in self.deferred_timers]
        return timers

    def reserve_timer_ids(self, timers: list[list[int]]) -> None:
        """Timers set from now on get ids above those of ``timers`` (handed over)."""
        for timer in timers:
            self._next_timer = max(self._next_timer, int(timer[0]) + 1)

    def adopt_timers(self, timers: list[list[int]]) -> None:
        """Set again the timers a move handed over (:meth:`timers_to_hand_over`),
        under their ids, due when they were due on the old node."""
        loop = asyncio.get_running_loop()
        for timer_id, left, period, repeat in timers:
            self.reserve_timer_ids([[timer_id]])
            self.timer_plans[timer_id] = (period, bool(repeat), False)
            self.timers[timer_id] = loop.call_later(
                left / 1000, self._fire_timer, timer_id, period, bool(repeat)
            )

    # -- AgentHostAPI: what the wasm calls ------------------------------------------------

    def send(self, message: bytes) -> int:
        if self.off_loop is not None:
            return self._on_loop(self._send, message)
        return self._send(message)

    def _send(self, message: bytes) -> int:
        payload = self._parse(message)
        if isinstance(payload, int):
            return payload
        payload["sender"] = self.name
        return self._route(payload)

    def reply(self, message: bytes) -> int:
        if self.off_loop is not None:
            return self._on_loop(self._reply, message)
        return self._reply(message)

    def _reply(self, message: bytes) -> int:
        current = self.current
        if current is None:
            return Status.NOT_FOUND  # reply outside handle_message: nothing to answer
        payload = self._parse(message)
        if isinstance(payload, int):
            return payload
        if payload.keys() <= SIMPLE_REPLY_FIELDS:
            # Fast path: everything but the performative and the content comes from the
            # (already validated) message being answered.
            try:
                answer = current.create_reply(
                    payload["performative"], payload.get("content"), sender=self.name
                )
            except (KeyError, CaxtonError):
                return Status.INVALID
            return self._submit(answer)
        payload["sender"] = self.name
        payload["receiver"] = current.sender
        payload.pop("receivers", None)
        payload["conversation_id"] = current.conversation_id
        payload["in_reply_to"] = current.reply_with or current.message_id
        if current.protocol and not payload.get("protocol"):
            payload["protocol"] = current.protocol
        return self._route(payload)

    def legacy_send(self, recipient: str, content: bytes) -> int:
        if self.off_loop is not None:
            return self._on_loop(self._legacy_send, recipient, content)
        return self._legacy_send(recipient, content)

    def _legacy_send(self, recipient: str, content: bytes) -> int:
        text = content.decode("utf-8", errors="replace")
        try:
            body: Any = json.loads(text)
        except ValueError:
            body = text
        return self._route(
            {"performative": "inform", "sender": self.name, "receiver": recipient,
             "content": body}
        )  # fmt: skip

    def log(self, level: int, text: str) -> None:
        self._log_limited(LOG_LEVELS.get(level, logging.INFO), text)

    def _log_limited(self, level: int, text: str) -> None:
        """One line of this agent's, within its log budget (:data:`AGENT_LOG_BURST` at
        once, :data:`AGENT_LOG_PER_SECOND` after that, :data:`MAX_AGENT_LOG_LINE`
        characters each); the first line after some were left out says how many."""
        dropped = self.log_budget.take()
        if dropped is None:
            return
        if self.off_loop is not None:  # the ring wakes followers on the loop
            self._on_loop(self._write_log, level, text, dropped)
            return
        self._write_log(level, text, dropped)

    def _write_log(self, level: int, text: str, dropped: int) -> int:
        current = self.current
        extra = {
            "agent": self.name,
            "conversation_id": current.conversation_id if current else None,
            "traceparent": self.trace_parent,
        }
        if dropped:
            agent_log.warning(
                "[%s] %d log lines dropped (an agent may log %d lines at once, then %g/s)",
                self.name,
                dropped,
                AGENT_LOG_BURST,
                AGENT_LOG_PER_SECOND,
                extra=extra,
            )
            self.logbook.append("warning", f"{dropped} log lines dropped (over the log rate)")
        if len(text) > MAX_AGENT_LOG_LINE:
            text = f"{text[:MAX_AGENT_LOG_LINE]}... ({len(text)} characters)"
        self.logbook.append(logging.getLevelName(level).lower(), text)
        if agent_log.isEnabledFor(level):  # the ring keeps the line in any case
            agent_log.log(level, "[%s] %s", self.name, text, extra=extra)
        return Status.OK

    def now_us(self) -> int:
        return time.time_ns() // 1000

    def random_bytes(self, n: int) -> bytes:
        return os.urandom(n)

    def kv_store(self, key: bytes, value: bytes) -> int:
        if self.off_loop is not None:
            return self._on_loop(self._kv_store, key, value)
        return self._kv_store(key, value)

    def _kv_store(self, key: bytes, value: bytes) -> int:
        manager = self.manager
        if len(key) > MAX_KEY_BYTES or len(value) > manager.kv_max_value_bytes:
            return Status.TOO_LARGE
        old = self.kv.get(key)
        grown = len(value) - (len(old) if old is not None else -len(key))
        if self.kv_bytes + grown > manager.kv_quota_bytes:
            return Status.DENIED
        manager.store.kv_put(self.agent.id, key, value)
        self.kv[key] = value
        self.kv_bytes += grown
        manager.outputs.changed(self, key)
        if manager.kv_listener is not None:
            manager.kv_listener(self.agent.id)
        return Status.OK

    def kv_load(self, key: bytes) -> bytes | None:
        return self.kv.get(key)

    def kv_delete(self, key: bytes) -> int:
        if self.off_loop is not None:
            return self._on_loop(self._kv_delete, key)
        return self._kv_delete(key)

    def _kv_delete(self, key: bytes) -> int:
        old = self.kv.get(key)
        if old is None:
            return Status.NOT_FOUND
        manager = self.manager
        manager.store.kv_delete(self.agent.id, key)
        del self.kv[key]
        self.kv_bytes -= len(key) + len(old)
        manager.outputs.changed(self, key)
        if manager.kv_listener is not None:
            manager.kv_listener(self.agent.id)
        return Status.OK

    def set_timer(self, delay_ms: int, repeat: bool) -> int:
        if self.off_loop is not None:
            return self._on_loop(self._set_timer, delay_ms, repeat)
        return self._set_timer(delay_ms, repeat)

    def _set_timer(self, delay_ms: int, repeat: bool) -> int:
        if delay_ms < 0:
            return Status.INVALID
        if len(self.timers) >= self.manager.max_timers:
            return Status.DENIED
        timer_id = self._next_timer
        self._next_timer += 1
        self.timers[timer_id] = asyncio.get_running_loop().call_later(
            delay_ms / 1000, self._fire_timer, timer_id, delay_ms, repeat
        )
        self.timer_plans[timer_id] = (delay_ms, repeat, self.initializing)
        return timer_id

    def cancel_timer(self, timer_id: int) -> int:
        if self.off_loop is not None:
            return self._on_loop(self._cancel_timer, timer_id)
        return self._cancel_timer(timer_id)

    def _cancel_timer(self, timer_id: int) -> int:
        handle = self.timers.pop(timer_id, None)
        self.deferred_timers.pop(timer_id, None)
        self.timer_plans.pop(timer_id, None)
        if handle is None:
            return Status.NOT_FOUND
        handle.cancel()
        return Status.OK

    # -- helpers of the host API ------------------------------------------------------

    def on_loop(self, func: Callable[..., T], *args: Any) -> T | int:
        """``func(*args)`` on the event loop: now when this agent's call runs inline,
        else from its worker, waiting (plugin host functions; caxton.agents.offload)."""
        if self.off_loop is None:
            return func(*args)
        return self._on_loop(func, *args)

    def _on_loop(self, func: Callable[..., T], *args: Any) -> T | int:
        """From a worker (a heavy agent's call): run ``func`` on the event loop and wait,
        at most the agent's wall-time limit (the guest cannot be interrupted meanwhile)."""
        off_loop = self.manager.off_loop
        running = self.off_loop
        assert off_loop is not None
        assert running is not None
        timeout = self.agent.limits.max_execution_time_ms / 1000
        return off_loop.on_loop(timeout, self._while_current, running, func, *args)

    def _while_current(self, running: AgentInstance, func: Callable[..., T], *args: Any) -> T | int:
        """On the loop: ``func(*args)``, unless the agent was stopped, removed or
        swapped while its call ran (what the old instance asks for then is refused)."""
        if self.instance is not running:
            return Status.DENIED
        return func(*args)

    def _parse(self, data: bytes) -> dict[str, Any] | int:
        try:
            payload = loads(data)  # the ABI says UTF-8: no sniffing
        except (ValueError, UnicodeDecodeError):
            agent_log.debug("agent %s sent a message that is not JSON", self.name)
            return Status.INVALID
        if not isinstance(payload, dict):
            return Status.INVALID
        return payload

    def _route(self, payload: dict[str, Any]) -> int:
        from caxton.messaging import Message

        try:
            message = Message.from_dict(payload)
        except CaxtonError as exc:
            agent_log.info("agent %s: invalid message: %s", self.name, exc)
            return Status.INVALID
        return self._submit(message)

    def _submit(self, message: Message) -> int:
        current = self.current
        hops = self.manager.loop_guard.next_hop(current.message_id if current else None)
        if not self.manager.loop_guard.allow(message.message_id, hops):
            self._log_limited(
                logging.WARNING,
                f"message to {message.receiver} refused: {hops} agent-to-agent hops without "
                f"outside input (a loop between agents?); see docs/security.md",
            )
            return Status.DENIED
        if self.trace_parent is not None and message.traceparent is None:
            message.traceparent = self.trace_parent
        try:
            self.manager.outputs.emit(self, message)
        except AgentNotFound:
            return Status.NOT_FOUND
        except QueueFull:
            return Status.BUSY
        except MessageTooLarge:
            return Status.TOO_LARGE
        except CaxtonError as exc:
            agent_log.info("agent %s: message refused: %s", self.name, exc)
            return Status.INVALID
        if message.conversation_id:
            self._track(message)
        return Status.OK

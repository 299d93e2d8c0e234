"""The agents of one node: deploy, lifecycle, restart policy, hot swap, persistence.

The manager owns every :class:`~caxton.agents.runtime.AgentRuntime`, registers running
agents with the router, and keeps their records, modules and KV in the
:class:`~caxton.store.Store` (write-behind; deploy, update and remove wait for their
commit). docs/agents.md describes the states and the policies.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import dataclasses
import hashlib
import logging
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from caxton.agents.commit import OutputCommit, check_mode
from caxton.agents.lifecycle import check_operation, check_transition
from caxton.agents.loop_guard import LoopGuard
from caxton.agents.model import (
    PRIORITIES,
    Agent,
    AgentState,
    RestartPolicy,
    capabilities_from_mapping,
    validate_limits,
    validate_name,
)
from caxton.agents.offload import OffLoop, loop_bound
from caxton.agents.runtime import AgentRuntime
from caxton.drivers.sandbox import (
    AgentInstance,
    CompiledModule,
    HostFunction,
    ResourceLimits,
    Sandbox,
    WasiCapabilities,
)
from caxton.errors import (
    AgentNotFound,
    CaxtonError,
    Conflict,
    ExecutionFailed,
    ValidationError,
)
from caxton.samples import Samples

if TYPE_CHECKING:
    import pluggy

    from caxton.messaging import Message, Router
    from caxton.store import Store
    from caxton.tracing import Tracing

log = logging.getLogger("caxton.agents")

MiB = 1024 * 1024
S = AgentState
#: States in which an agent has a live instance (or is about to get one back).
LIVE_STATES = frozenset({S.READY, S.RUNNING, S.DRAINING, S.SUSPENDED})
#: Failure reason -> counter it bumps besides ``crashes``.
REASON_COUNTERS = {
    "trap": "traps",
    "abi": "traps",
    "fuel": "fuel_exhausted",
    "timeout": "timeouts",
    "memory": "memory_exceeded",
}


class AgentManager:
    """Deploys and runs the agents of one node."""

    def __init__(
        self,
        *,
        node_id: str,
        sandbox: Sandbox,
        router: Router,
        store: Store,
        hook: pluggy.HookRelay,
        node: object,
        max_agents: int = 1000,
        default_limits: ResourceLimits | None = None,
        limit_ceiling: ResourceLimits | None = None,
        restart_policy: str = "on-failure",
        restart_max: int = 5,
        restart_backoff: float = 0.1,
        extra_functions: Sequence[HostFunction] = (),
        drain_timeout: float = 5.0,
        kv_max_value_bytes: int = 1 * MiB,
        kv_quota_bytes: int = 64 * MiB,
        max_timers: int = 1000,
        backlog_limit: int = 10_000,
        counters_interval: float = 1.0,
        durability: str = "quorum",
        worker_threads: int = 1,
    ) -> None:
        self.node_id = node_id
        self.sandbox = sandbox
        self.router = router
        self.store = store
        self.hook = hook
        self.node = node
        self.max_agents = max_agents
        self.limit_ceiling = limit_ceiling or ResourceLimits()
        default_limits = default_limits or ResourceLimits()
        self.default_limits = validate_limits(
            default_limits, default=default_limits, ceiling=self.limit_ceiling
        )
        self.restart_policy = RestartPolicy(
            policy=restart_policy, max_restarts=restart_max, backoff=restart_backoff
        )
        self.extra_functions = tuple(loop_bound(function) for function in extra_functions)
        self.drain_timeout = drain_timeout
        self.kv_max_value_bytes = kv_max_value_bytes
        self.kv_quota_bytes = kv_quota_bytes
        #: Called with an agent's id after each change to its key/value state (the
        #: cluster's failover replicates it); None: nobody listens.
        self.kv_listener: Callable[[str], None] | None = None
        #: What an agent emits after a key/value change waits until the change is
        #: durable (caxton.agents.commit); ``durability`` is the default mode of agents.
        self.durability = check_mode(durability)
        self.outputs = OutputCommit(router, store)
        #: Called with a description just before a deploy, update or start takes effect
        #: (after the module compiled); raises to refuse it. The cluster refuses them on
        #: a node without the quorum lease; None: everything is allowed.
        self.write_guard: Callable[[str], None] | None = None
        self.max_timers = max_timers
        self.backlog_limit = backlog_limit
        self.loop_guard = LoopGuard()
        #: Worker threads for heavy agents' calls (caxton.agents.offload); None when
        #: ``worker_threads`` is 0 or the sandbox's calls cannot leave the loop.
        self.off_loop = (
            OffLoop(worker_threads) if worker_threads and sandbox.calls_off_loop else None
        )
        self.counters_interval = counters_interval
        self._by_id: dict[str, AgentRuntime] = {}
        self._by_name: dict[str, AgentRuntime] = {}
        self._reserved: set[str] = set()
        self._modules: dict[str, CompiledModule] = {}
        self._compiling: dict[str, asyncio.Future[CompiledModule]] = {}
        self._persister: asyncio.Task[None] | None = None
        self._started = False
        #: Seconds from instantiation to running, per start (caxton_agent_startup_time).
        self.startup_times = Samples()
        #: Seconds each agent spent handling a message (its runtimes feed this one).
        self.processing_times = Samples()
        #: The node's tracing (caxton.tracing), or None: agents' handling is not traced.
        self.tracing: Tracing | None = None

    # -- node lifecycle --------------------------------------------------------------

    async def start(self) -> None:
        """Restore the agents stored on this node; restart those that were running."""
        if self._started:
            return
        self._started = True
        rows = await self.store.load_agents()
        namespaces = await self.store.load_all_kv()
        for row in rows:
            agent = Agent.from_row(row, node_id=self.node_id, default_policy=self.restart_policy)
            wanted = agent.state
            module = await self._restore_module(agent)
            runtime = AgentRuntime(self, agent, module or _missing(agent), namespaces.get(agent.id))
            self._by_id[agent.id] = runtime
            self._by_name[agent.name] = runtime
            if module is None:
                agent.state = S.FAILED
                agent.last_error = (
                    f"the module {agent.module_sha256} is missing from the state store; "
                    f"update the agent with its wasm"
                )
                self.store.save_agent(agent)
                continue
            if wanted in LIVE_STATES:
                agent.state = S.LOADED
                try:
                    await self._start_runtime(runtime)
                except CaxtonError as exc:  # one agent must not keep the node down
                    log.error("agent %s could not be restarted: %s", agent.name, exc)
                    agent.last_error = str(exc)
                    self._force_state(runtime, S.FAILED)
                    continue
                if wanted is S.SUSPENDED and agent.state is S.RUNNING:
                    self._suspend_runtime(runtime)
        self._persister = asyncio.create_task(
            self._persist_counters(), name="caxton-agent-counters"
        )
        log.info("node %s: restored %d agents", self.node_id, len(rows))

    async def close(self) -> None:
        """Shut every live agent down (``agent_shutdown``) and flush the store.

        Stored states are left as they are, so :meth:`start` brings the same agents
        back running.
        """
        if self._persister is not None:
            self._persister.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._persister
            self._persister = None
        for runtime in list(self._by_id.values()):
            # Hold, not unregister: unregistering dead-letters (and so acknowledges) the
            # queued messages, while held ones stay in the durable outbox for next start.
            if self.router.is_registered(runtime.name):
                self.router.hold(runtime.name)
            self._teardown(runtime, graceful=True, unregister=False)
            self.store.save_agent(runtime.agent)
        if self.off_loop is not None:
            self.off_loop.close()
        self._started = False
        await self.store.flush()

    async def _persist_counters(self) -> None:
        while True:
            await asyncio.sleep(self.counters_interval)
            self.save_dirty()

    def save_dirty(self) -> None:
        """Queue the records whose counters changed since the last call."""
        for runtime in self._by_id.values():
            if runtime.dirty:
                runtime.dirty = False
                self.store.save_agent(runtime.agent)

    # -- lookups -----------------------------------------------------------------------

    def get(self, name_or_id: str) -> Agent:
        return self._runtime(name_or_id).agent

    def list(self) -> list[Agent]:
        return [runtime.agent for runtime in self._by_id.values()]

    def runtimes(self) -> builtins.list[AgentRuntime]:
        """Every agent's live side (for metrics and diagnostics)."""
        return list(self._by_id.values())

    def runtime(self, name_or_id: str) -> AgentRuntime:
        """The live side of an agent (instance, KV, timers); for tests and tools."""
        return self._runtime(name_or_id)

    def memory_bytes(self, name_or_id: str) -> int:
        """Linear memory of the agent's live instance (0 when it has none)."""
        instance = self._runtime(name_or_id).instance
        return instance.memory_size() if instance is not None else 0

    def __len__(self) -> int:
        return len(self._by_id)

    def __contains__(self, name_or_id: object) -> bool:
        return name_or_id in self._by_name or name_or_id in self._by_id

    def _runtime(self, name_or_id: str) -> AgentRuntime:
        runtime = self._by_name.get(name_or_id) or self._by_id.get(name_or_id)
        if runtime is None:
            raise AgentNotFound(name_or_id)
        return runtime

    # -- deploy and remove --------------------------------------------------------------

    async def deploy(
        self,
        name: str,
        wasm: bytes,
        *,
        limits: ResourceLimits | Mapping[str, Any] | None = None,
        capabilities: WasiCapabilities | Mapping[str, Any] | None = None,
        start: bool = True,
        agent_id: str | None = None,
        restart_policy: RestartPolicy | Mapping[str, Any] | None = None,
        kv: Mapping[bytes, bytes] | None = None,
        priority: str = "normal",
    ) -> Agent:
        """Compile and record a new agent, then start it unless ``start=False``.

        ``kv`` is the key/value state it starts with (a failover carries the replica of
        a failed node's agent over with it); by default it starts empty.

        Raises ValidationError (name, limits, capabilities), Conflict (name or id taken,
        node full), ModuleInvalid/AbiMismatch (the wasm). A failing ``agent_init`` does
        not raise: the agent is returned in state ``failed`` with ``last_error`` set.
        """
        name = validate_name(name)
        limits = validate_limits(limits, default=self.default_limits, ceiling=self.limit_ceiling)
        caps = capabilities_from_mapping(capabilities)
        policy = self._policy(restart_policy)
        agent_id = self._new_id(agent_id)
        if priority not in PRIORITIES:
            raise ValidationError(
                f"priority must be one of {', '.join(PRIORITIES)}, not {priority!r}"
            )
        if not isinstance(wasm, bytes | bytearray | memoryview):
            raise ValidationError(f"wasm must be bytes, not {type(wasm).__name__}")
        wasm = bytes(wasm)
        if name in self._by_name or name in self._reserved:
            raise Conflict(
                f"an agent named '{name}' already exists on node {self.node_id}; "
                f"remove it first or choose another name"
            )
        if len(self._by_id) + len(self._reserved) >= self.max_agents:
            raise Conflict(
                f"node {self.node_id} already hosts {self.max_agents} agents "
                f"(runtime.max_agents); remove one or raise the limit"
            )
        self._reserved.add(name)
        try:
            module = await self._compile(wasm)
        finally:
            self._reserved.discard(name)
        if name in self._by_name:  # lost a race with a concurrent deploy of the same name
            raise Conflict(f"an agent named '{name}' already exists on node {self.node_id}")
        self._check_write(f"deploying agent '{name}'")
        agent = Agent(
            id=agent_id,
            name=name,
            module_sha256=module.sha256,
            limits=limits,
            capabilities=caps,
            restart_policy=policy,
            node_id=self.node_id,
            priority=priority,
        )
        runtime = AgentRuntime(self, agent, module, dict(kv) if kv else None)
        self._by_id[agent.id] = runtime
        self._by_name[name] = runtime
        self.store.put_module(module.sha256, wasm)
        self.store.save_agent(agent)
        for key, value in (kv or {}).items():
            self.store.kv_put(agent.id, key, value)
        if start:
            try:
                await self._start_runtime(runtime)
            except CaxtonError:
                self._forget(runtime)
                raise
        await self.store.flush()
        self._call_hook("caxton_agent_deployed", agent=agent)
        log.info("deployed agent %s (%s, module %s)", name, agent.id, module.sha256[:12])
        return agent

    def _check_write(self, operation: str) -> None:
        if self.write_guard is not None:
            self.write_guard(operation)

    async def remove(
        self, name_or_id: str, *, graceful: bool = True, keep_state: bool = False
    ) -> Agent:
        """Stop the agent if it runs, delete its record, KV and (if unused) module.

        ``graceful=False`` skips ``agent_shutdown``; ``keep_state=True`` keeps its KV
        rows and module (a moved agent's old copy: its state went over as it was, the
        new copy ran ``agent_init``, and this node may hold the new owner's replica)."""
        runtime = self._runtime(name_or_id)
        async with runtime.lock:
            agent = runtime.agent
            self._teardown(runtime, graceful=graceful)
            runtime.fail_backlog(f"Agent not found: {agent.name} (removed)")
            self._forget(runtime, keep_state=keep_state)
            await self.store.flush()
        self._call_hook("caxton_agent_removed", agent=agent)
        log.info("removed agent %s (%s)", agent.name, agent.id)
        return agent

    def _forget(self, runtime: AgentRuntime, *, keep_state: bool = False) -> None:
        agent = runtime.agent
        self._by_id.pop(agent.id, None)
        self._by_name.pop(agent.name, None)
        if keep_state:
            self.store.delete_agent_record(agent.id)
            return
        self.store.delete_agent(agent.id)
        self._release_module(agent.module_sha256)

    def _release_module(self, sha256: str) -> None:
        if not any(r.agent.module_sha256 == sha256 for r in self._by_id.values()):
            self._modules.pop(sha256, None)
            self.store.delete_module(sha256)

    def _new_id(self, agent_id: str | None) -> str:
        if agent_id is None:
            return str(uuid.uuid4())
        try:
            agent_id = str(uuid.UUID(str(agent_id)))
        except ValueError:
            raise ValidationError(f"agent id {agent_id!r} is not a UUID") from None
        if agent_id in self._by_id:
            raise Conflict(f"an agent with id {agent_id} already exists on node {self.node_id}")
        return agent_id

    def _policy(self, policy: RestartPolicy | Mapping[str, Any] | None) -> RestartPolicy:
        if policy is None:
            return dataclasses.replace(self.restart_policy)
        if isinstance(policy, RestartPolicy):
            return policy
        try:
            return RestartPolicy.from_dict(policy, self.restart_policy)
        except TypeError as exc:
            raise ValidationError(f"invalid restart policy: {exc}") from exc

    async def _compile(self, wasm: bytes) -> CompiledModule:
        sha256 = hashlib.sha256(wasm).hexdigest()
        module = self._modules.get(sha256)
        if module is not None:
            return module
        compiling = self._compiling.get(sha256)
        if compiling is None:
            # Compiling can take long: keep the event loop (and message delivery) free,
            # and let concurrent deploys of the same new module share one compile.
            compiling = asyncio.ensure_future(asyncio.to_thread(self.sandbox.compile, wasm))
            self._compiling[sha256] = compiling
            compiling.add_done_callback(lambda _: self._compiling.pop(sha256, None))
        module = await asyncio.shield(compiling)
        self._modules[sha256] = module
        return module

    async def _restore_module(self, agent: Agent) -> CompiledModule | None:
        module = self._modules.get(agent.module_sha256)
        if module is not None:
            return module
        wasm = await self.store.load_module(agent.module_sha256)
        if wasm is None:
            return None
        try:
            return await self._compile(wasm)
        except CaxtonError as exc:
            log.error("agent %s: stored module no longer compiles: %s", agent.name, exc)
            return None

    # -- lifecycle operations -------------------------------------------------------

    async def start_agent(self, name_or_id: str) -> Agent:
        runtime = self._runtime(name_or_id)
        async with runtime.lock:
            check_operation(runtime.agent, "start")
            self._check_write(f"starting agent '{runtime.name}'")
            if isinstance(runtime.module, MissingModule):
                raise Conflict(
                    f"cannot start agent '{runtime.name}': its module "
                    f"{runtime.module.sha256[:12]} is missing from the state store; "
                    f"update the agent with its wasm first"
                )
            runtime.streak = 0
            await self._start_runtime(runtime)
        return runtime.agent

    async def stop_agent(self, name_or_id: str, *, drain_timeout: float = 0.0) -> Agent:
        """Stop the agent: ``agent_shutdown`` runs, its instance is freed, KV is kept.

        With ``drain_timeout`` > 0 the agent first drains (finishes its in-flight
        conversations, new ones wait) for up to that many seconds.
        """
        runtime = self._runtime(name_or_id)
        async with runtime.lock:
            agent = runtime.agent
            check_operation(agent, "stop")
            if agent.state is S.RUNNING and drain_timeout > 0:
                await self._drain(runtime, drain_timeout)
            self._teardown(runtime, graceful=True)
            runtime.fail_backlog(f"agent {agent.name} was stopped")
            if agent.state is not S.STOPPED:
                self._set_state(runtime, S.STOPPED)
        return agent

    async def suspend(self, name_or_id: str) -> Agent:
        """Pause delivery; messages wait in the router; the instance keeps its memory."""
        runtime = self._runtime(name_or_id)
        async with runtime.lock:
            check_operation(runtime.agent, "suspend")
            self._suspend_runtime(runtime)
        return runtime.agent

    async def resume(self, name_or_id: str) -> Agent:
        runtime = self._runtime(name_or_id)
        async with runtime.lock:
            check_operation(runtime.agent, "resume")
            self._set_state(runtime, S.RUNNING)
            runtime.accepting = runtime.instance is not None
            self.router.release(runtime.name)
            runtime.run_deferred_timers()
            runtime.run_backlog()
        return runtime.agent

    async def update(
        self,
        name_or_id: str,
        *,
        wasm: bytes | None = None,
        limits: ResourceLimits | Mapping[str, Any] | None = None,
        drain_timeout: float | None = None,
    ) -> Agent:
        """Hot swap: new module and/or limits, the same agent id, name and KV.

        A running agent drains first: messages of its in-flight conversations still go
        to the old instance, new conversations wait, for up to ``drain_timeout``
        seconds (default: the manager's). Then ``agent_shutdown`` runs on the old
        instance, the new one is created and ``agent_init`` runs on it, and the waiting
        messages go to the new instance. If the new instance cannot be created, the old
        one keeps running and the error is raised.
        """
        runtime = self._runtime(name_or_id)
        async with runtime.lock:
            agent = runtime.agent
            check_operation(agent, "update")
            module = await self._compile(bytes(wasm)) if wasm is not None else runtime.module
            self._check_write(f"updating agent '{agent.name}'")
            new_limits = validate_limits(
                limits if limits is not None else agent.limits,
                default=agent.limits,
                ceiling=self.limit_ceiling,
            )
            old_sha = agent.module_sha256
            if agent.state in (S.RUNNING, S.SUSPENDED):
                await self._swap(runtime, module, new_limits, drain_timeout)
            runtime.module = module
            agent.module_sha256 = module.sha256
            agent.limits = new_limits
            agent.updated_at = time.time()
            if wasm is not None:
                self.store.put_module(module.sha256, bytes(wasm))
            self.store.save_agent(agent)
            if old_sha != module.sha256:
                self._release_module(old_sha)
            await self.store.flush()
        log.info("updated agent %s (module %s)", agent.name, agent.module_sha256[:12])
        return agent

    async def _swap(
        self,
        runtime: AgentRuntime,
        module: CompiledModule,
        limits: ResourceLimits,
        drain_timeout: float | None,
    ) -> None:
        agent = runtime.agent
        was = agent.state
        if was is S.RUNNING:
            await self._drain(
                runtime, self.drain_timeout if drain_timeout is None else drain_timeout
            )
            if agent.state is not S.DRAINING:  # it failed while draining
                return
        try:
            instance = self._instantiate(runtime, module, limits)
        except CaxtonError:
            if was is S.RUNNING:
                self._set_state(runtime, S.RUNNING)
                runtime.accepting = runtime.instance is not None
                runtime.run_backlog()
            raise
        old = runtime.instance
        if old is not None:
            self._shutdown_instance(runtime, old)
        runtime.cancel_timers()
        if runtime.restart_handle is not None:
            runtime.restart_handle.cancel()
            runtime.restart_handle = None
        runtime.instance = instance
        runtime.module = module
        runtime.forget_conversations()
        if was is S.RUNNING:
            self._set_state(runtime, S.RUNNING)
        if not self._init(runtime, instance):
            return
        if was is S.RUNNING:
            runtime.accepting = True
            self.router.release(agent.name)
            runtime.run_backlog()

    async def _drain(self, runtime: AgentRuntime, timeout: float) -> None:
        self._set_state(runtime, S.DRAINING)
        runtime.accepting = False
        if runtime.open_conversations and timeout > 0:
            try:
                await asyncio.wait_for(runtime.drained.wait(), timeout)
            except asyncio.TimeoutError:
                log.warning(
                    "agent %s: %d conversations still open after draining %.1fs; going on",
                    runtime.name,
                    len(runtime.open_conversations),
                    timeout,
                )

    async def emergency_stop_all(self) -> int:
        """Stop every live agent at once, without ``agent_shutdown``; return how many."""
        stopped = 0
        for runtime in list(self._by_id.values()):
            if runtime.agent.state in LIVE_STATES or runtime.restart_handle is not None:
                self._teardown(runtime, graceful=False)
                runtime.fail_backlog(f"agent {runtime.name} was stopped (emergency stop)")
                if runtime.agent.state is not S.STOPPED:
                    self._force_state(runtime, S.STOPPED)
                stopped += 1
        await self.store.flush()
        log.warning("emergency stop: %d agents stopped on node %s", stopped, self.node_id)
        return stopped

    # -- the machinery behind the operations ----------------------------------------------

    async def _start_runtime(self, runtime: AgentRuntime) -> None:
        """loaded/stopped/failed -> ready (instantiated, initialised) -> running."""
        agent = runtime.agent
        started = time.perf_counter()
        instance = self._instantiate(runtime, runtime.module, agent.limits)
        runtime.instance = instance
        self._set_state(runtime, S.READY)
        if not self._init(runtime, instance):
            return
        self._register(runtime)
        self._set_state(runtime, S.RUNNING)
        runtime.accepting = True
        self.startup_times.pending.append(time.perf_counter() - started)

    def _instantiate(
        self, runtime: AgentRuntime, module: CompiledModule, limits: ResourceLimits
    ) -> AgentInstance:
        return self.sandbox.instantiate(
            module,
            agent_name=runtime.agent.name,
            limits=limits,
            host=runtime,
            capabilities=runtime.agent.capabilities,
            extra_functions=self.extra_functions,
        )

    def _init(self, runtime: AgentRuntime, instance: AgentInstance) -> bool:
        """Run ``agent_init``; on failure the agent fails (no restart loop at init)."""
        runtime.initializing = True
        try:
            instance.init()
        except ExecutionFailed as exc:
            self._count_failure(runtime, exc)
            self._call_hook(
                "caxton_agent_crashed", agent=runtime.agent, reason=exc.reason, error=str(exc)
            )
            self._teardown(runtime, graceful=False)
            self._force_state(runtime, S.FAILED)
            log.error("agent %s failed in agent_init: %s", runtime.name, exc)
            return False
        finally:
            runtime.initializing = False
        return True

    def _register(self, runtime: AgentRuntime) -> None:
        name = runtime.name
        if self.router.is_registered(name):
            # Still registered (and held) from before close(): keep its queue.
            self.router.register(name, runtime.deliver, replace=True)
            self.router.release(name)
        else:
            self.router.register(name, runtime.deliver)

    def _suspend_runtime(self, runtime: AgentRuntime) -> None:
        self.router.hold(runtime.name)
        runtime.accepting = False
        self._set_state(runtime, S.SUSPENDED)

    def _teardown(self, runtime: AgentRuntime, *, graceful: bool, unregister: bool = True) -> None:
        """Unregister, cancel timers and restarts, shut down and free the instance."""
        runtime.accepting = False
        if unregister and self.router.is_registered(runtime.name):
            self.router.unregister(runtime.name)
        if runtime.restart_handle is not None:
            runtime.restart_handle.cancel()
            runtime.restart_handle = None
        runtime.cancel_timers()
        instance, runtime.instance = runtime.instance, None
        if instance is not None:
            if graceful and not runtime.busy:  # busy: its call runs on a worker
                self._shutdown_instance(runtime, instance)
            else:
                instance.close()
        runtime.forget_conversations()

    def _shutdown_instance(self, runtime: AgentRuntime, instance: AgentInstance) -> None:
        try:
            instance.shutdown()
        except ExecutionFailed as exc:
            log.warning("agent %s: agent_shutdown failed: %s", runtime.name, exc)
            runtime.agent.last_error = str(exc)
        finally:
            instance.close()

    def _set_state(self, runtime: AgentRuntime, new: AgentState) -> None:
        check_transition(runtime.agent, new)
        self._force_state(runtime, new)

    def _force_state(self, runtime: AgentRuntime, new: AgentState) -> None:
        agent = runtime.agent
        old = agent.state
        if old is new:
            return
        agent.state = new
        agent.updated_at = time.time()
        runtime.dirty = False
        self.store.save_agent(agent)
        self._call_hook("caxton_agent_state_changed", agent=agent, old=old.value, new=new.value)

    def _call_hook(self, name: str, **kwargs: Any) -> None:
        # A broken plugin must not break delivery or the lifecycle.
        try:
            getattr(self.hook, name)(node=self.node, **kwargs)
        except Exception:
            log.exception("hook %s raised; ignoring it", name)

    # -- failures and the restart policy ----------------------------------------------

    def _count_failure(self, runtime: AgentRuntime, error: ExecutionFailed) -> None:
        counters = runtime.agent.counters
        counters.crashes += 1
        field = REASON_COUNTERS.get(error.reason)
        if field is not None:
            setattr(counters, field, getattr(counters, field) + 1)
        runtime.agent.last_error = str(error)
        runtime.dirty = True

    def crashed(
        self, runtime: AgentRuntime, error: ExecutionFailed, message: Message | None
    ) -> None:
        """A delivery failed: answer ``failure``, count, tell hooks, apply the policy."""
        agent = runtime.agent
        self._count_failure(runtime, error)
        log.warning("agent %s failed (%s): %s", agent.name, error.reason, error)
        if message is not None:
            runtime.answer(message, "failure", str(error))
        self._call_hook("caxton_agent_crashed", agent=agent, reason=error.reason, error=str(error))
        if runtime.instance is not None:
            runtime.instance.close()
            runtime.instance = None
        runtime.cancel_timers()
        runtime.forget_conversations()  # nothing is in flight in a dead instance
        runtime.accepting = False
        runtime.streak += 1
        policy = agent.restart_policy
        if policy.policy == "never" or runtime.streak > policy.max_restarts:
            self._give_up(runtime)
            return
        self.router.hold(agent.name)
        delay = policy.delay(runtime.streak)
        runtime.restart_handle = asyncio.get_running_loop().call_later(
            delay, self._restart, runtime
        )

    def _give_up(self, runtime: AgentRuntime) -> None:
        agent = runtime.agent
        self._teardown(runtime, graceful=False)
        runtime.fail_backlog(f"agent {agent.name} failed: {agent.last_error}")
        self._force_state(runtime, S.FAILED)
        self.store.save_agent(agent)
        log.error(
            "agent %s is failed after %d consecutive failures (restart policy %s)",
            agent.name,
            runtime.streak,
            agent.restart_policy.policy,
        )

    def _restart(self, runtime: AgentRuntime) -> None:
        runtime.restart_handle = None
        agent = runtime.agent
        if agent.state not in (S.RUNNING, S.DRAINING, S.SUSPENDED) or runtime.instance is not None:
            return
        try:
            instance = self._instantiate(runtime, runtime.module, agent.limits)
        except CaxtonError as exc:
            log.error("agent %s: restart failed: %s", agent.name, exc)
            agent.last_error = str(exc)
            self._give_up(runtime)
            return
        runtime.instance = instance
        agent.counters.restarts += 1
        runtime.dirty = True
        runtime.initializing = True
        try:
            instance.init()
        except ExecutionFailed as exc:
            self.crashed(runtime, exc, None)
            return
        finally:
            runtime.initializing = False
        log.info("agent %s restarted (restart %d)", agent.name, agent.counters.restarts)
        if agent.state is S.RUNNING:
            runtime.accepting = True
            self.router.release(agent.name)
            runtime.run_backlog()


class MissingModule(CompiledModule):
    """Stands for a module whose bytes are gone from the store; the agent stays failed."""


def _missing(agent: Agent) -> CompiledModule:
    return MissingModule(agent.module_sha256, None, frozenset())
